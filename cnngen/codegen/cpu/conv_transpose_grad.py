"""Backward of the transposed convolutions (``conv_transpose1d``, ``conv_transpose2d``)."""
from __future__ import annotations

BACKWARD: dict = {}
GRAD_HALO: dict = {}
