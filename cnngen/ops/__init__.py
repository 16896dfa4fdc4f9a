"""Every op cnngen knows, by spec name. Each family module holds its ops' attributes,
shape rule, parameter shapes, multiply-add count and float64 reference forward/backward."""
from __future__ import annotations

from . import activation, conv, dense, merge, norm, pool
from .base import Op

REGISTRY: dict[str, Op] = {
    op.name: op for family in (conv, pool, norm, activation, dense, merge) for op in family.OPS
}
