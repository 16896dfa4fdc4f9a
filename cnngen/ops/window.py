"""Sliding windows over padded inputs: the shared shape rule and the numpy machinery
behind the convolution and pooling references.

For one spatial dimension with input size ``i``, kernel ``k``, stride ``s``, dilation ``d``
and padding ``(p0, p1)``:

    o = (i + p0 + p1 - d*(k-1) - 1) // s + 1          (floor mode)
    o = ceil((i + p0 + p1 - d*(k-1) - 1) / s) + 1     (ceil mode, last window must start
                                                        inside the input or left padding)
"""
from __future__ import annotations

import math

import numpy as np

from .base import Invalid

AXIS_NAMES = {1: ("length",), 2: ("height", "width")}


def same_padding(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TensorFlow/ONNX SAME_UPPER: ``ceil(size/s)`` outputs, the odd pad at the end."""
    total = max((math.ceil(size / s) - 1) * s + d * (k - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def resolve_padding(padding, spatial, kernel, stride, dilation):
    if padding == "same":
        return tuple(same_padding(i, k, s, d)
                     for i, k, s, d in zip(spatial, kernel, stride, dilation))
    return padding


def out_size(i: int, k: int, s: int, d: int, pad: tuple[int, int], axis: str,
             ceil_mode: bool = False) -> int:
    """The output size of one axis, or Invalid showing the formula with the numbers."""
    k_eff = d * (k - 1) + 1
    span = i + pad[0] + pad[1] - k_eff
    o = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and o > 1 and (o - 1) * s >= i + pad[0]:
        o -= 1
    if span < 0 or o <= 0:
        p = f"2*{pad[0]}" if pad[0] == pad[1] else f"{pad[0]} + {pad[1]}"
        p_sym = "2P" if pad[0] == pad[1] else "P_begin + P_end"
        k_txt = str(k_eff) if d == 1 else f"{k_eff} (kernel {k} dilated by {d})"
        raise Invalid(
            f"output {axis} would be {min(o, 0)}: O = (W - K + {p_sym})/S + 1 = "
            f"({i} - {k_eff} + {p})/{s} + 1. The kernel ({k_txt}) is larger than the "
            f"padded input ({i + pad[0] + pad[1]}). Use a smaller kernel or dilation, "
            f"add padding, or remove a downsampling layer before this one.")
    return o


def pad(x: np.ndarray, pads, value: float = 0.0) -> np.ndarray:
    """Pad the spatial axes (everything after N, C) by ``(begin, end)`` pairs."""
    return np.pad(x, [(0, 0), (0, 0), *pads], constant_values=value)


def windows(xp: np.ndarray, kernel, stride, dilation, out) -> np.ndarray:
    """A strided view ``(N, C, *out, *kernel)`` of the windows of a padded input."""
    nd = len(kernel)
    spans = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    view = np.lib.stride_tricks.sliding_window_view(xp, spans, axis=tuple(range(2, 2 + nd)))
    index = (slice(None), slice(None))
    index += tuple(slice(0, s * (o - 1) + 1, s) for s, o in zip(stride, out))
    index += tuple(slice(None, None, d) for d in dilation)
    return view[index]


def scatter_windows(dwin: np.ndarray, padded_shape, stride, dilation) -> np.ndarray:
    """The adjoint of ``windows``: sum ``(N, C, *out, *kernel)`` back onto the padded input."""
    nd = len(stride)
    out = dwin.shape[2:2 + nd]
    kernel = dwin.shape[2 + nd:]
    acc = np.zeros(padded_shape, dtype=dwin.dtype)
    for offs in np.ndindex(*kernel):
        index = (slice(None), slice(None))
        index += tuple(slice(o * d, o * d + s * (n - 1) + 1, s)
                       for o, d, s, n in zip(offs, dilation, stride, out))
        acc[index] += dwin[(Ellipsis, *offs)]
    return acc


def crop(xp: np.ndarray, pads, spatial) -> np.ndarray:
    """Undo ``pad``: the interior of size ``spatial`` after the begin padding."""
    index = (slice(None), slice(None))
    index += tuple(slice(p[0], p[0] + i) for p, i in zip(pads, spatial))
    return xp[index]
