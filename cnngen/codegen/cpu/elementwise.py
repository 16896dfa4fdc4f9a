"""Lowering of the elementwise, merge and shape ops to small bandwidth-bound kernels.

- batchnorm (inference), the standalone activations and dropout (inference):
  ``scale_shift``, out = act(scale[c] * x + shift[c]) with per-channel constants.
- softmax over the channels of each pixel: ``softmax``.
- add and multiply of k inputs: k - 1 calls of ``binary`` (the second and later read the
  output as their first operand); multiply broadcasts size-1 axes.
- concat: one ``concat`` call per input, at its channel offset (any offset).
- flatten and reshape: ``relayout``, the C-order flat index from one blocked layout to the
  other.

Every kernel reads its inputs through their own strides and origins (inputs of one op may
carry different halos) and writes only the interior of its output.
"""
from __future__ import annotations

import numpy as np

from ...ops import activation
from ..kernel import Call, Const, spec
from ..layout import Blocked
from . import LEAKY_ALPHA, Lowering, activation_values

# Added to the lanes past C before softmax's max and exp: finite, so fastmath holds.
MASKED = -1e30


def padded(values, channels: int, vector: int) -> np.ndarray:
    """A per-channel vector as (blocks * V,) float32, zero in the lanes past C."""
    out = np.zeros(-(-channels // vector) * vector, np.float32)
    out[:channels] = values
    return out


def scale_shift(low: Lowering, ops, scale, shift, act="identity",
                alpha=LEAKY_ALPHA) -> list[Call]:
    """One call of out = act(scale * x + shift).

    ``scale`` and ``shift`` map the layer's params to per-channel values (or one for all).
    """
    x, out, v, name = low.ins[0], low.out, low.target.vector, low.node.name
    c = out.channels
    kernel = spec("scale_shift", ops, f"nchw{v}c",
                  flops=2 * low.n_batch * c * out.height * out.width,
                  bytes=4 * (x.size(low.n_batch) + out.size(low.n_batch)),
                  **activation_values(act, alpha), blocks=out.blocks,
                  height=out.height, width=out.width, **x.strides("x"), **out.strides("out"))
    return [Call(name, kernel, (low.inputs[0],
                                Const(name, "scale", lambda p: padded(scale(p), c, v)),
                                Const(name, "shift", lambda p: padded(shift(p), c, v)),
                                low.output))]


def batchnorm_coefficients(p, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Inference batchnorm as y = scale*x + shift, computed in float64:

        scale = gamma / sqrt(running_var + eps),   shift = beta - running_mean * scale
    """
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    scale = p["gamma"] / np.sqrt(p["running_var"] + eps)
    return scale, p["beta"] - p["running_mean"] * scale


def lower_batchnorm(low: Lowering) -> list[Call]:
    eps = low.node.attrs["eps"]
    return scale_shift(low, ("batchnorm",), lambda p: batchnorm_coefficients(p, eps)[0],
                       lambda p: batchnorm_coefficients(p, eps)[1])


def lower_activation(low: Lowering) -> list[Call]:
    name = low.node.op
    return scale_shift(low, (name,), lambda p: 1.0, lambda p: 0.0, name,
                       low.node.attrs.get("alpha", LEAKY_ALPHA))


def lower_dropout(low: Lowering) -> list[Call]:
    """Inference: identity, or a scale of 1 - rate in ``scale_at_test`` mode."""
    a = low.node.attrs
    keep = 1.0 if a["mode"] == "inverted" else 1.0 - a["rate"]
    return scale_shift(low, ("dropout",), lambda p: keep, lambda p: 0.0)


def lower_softmax(low: Lowering) -> list[Call]:
    x, out, v, name = low.ins[0], low.out, low.target.vector, low.node.name
    c = out.channels
    kernel = spec("softmax", ("softmax",), f"nchw{v}c",
                  flops=4 * low.n_batch * c * out.height * out.width,
                  bytes=4 * (x.size(low.n_batch) + 2 * out.size(low.n_batch)),
                  blocks=out.blocks, height=out.height, width=out.width,
                  **x.strides("x"), **out.strides("out"))

    def mask(p):
        m = np.full(out.blocks * v, MASKED, np.float32)
        m[:c] = 0.0
        return m
    return [Call(name, kernel, (low.inputs[0], Const(name, "mask", mask), low.output))]


def operand(prefix: str, x: Blocked, out: Blocked) -> dict:
    """Template values of one operand of ``binary``: its strides, 0 along broadcast axes."""
    channel_bcast = x.channels == 1 < out.channels
    return {f"{prefix}_load": "broadcast" if channel_bcast else "load",
            f"{prefix}_batch": x.batch_stride,
            f"{prefix}_block": 0 if channel_bcast else x.block_stride,
            f"{prefix}_row": 0 if x.height == 1 < out.height else x.row_stride,
            f"{prefix}_col": 0 if x.width == 1 < out.width else x.vector,
            f"{prefix}_origin": x.origin}


def lower_binary(low: Lowering) -> list[Call]:
    """add / multiply of k inputs: out = x0 op x1, then out = out op x_i; act on the last.

    One two-operand template serves every k: a k-operand kernel would need a signature and
    a sum whose length depends on k, which a value-only template hole cannot carry.
    """
    node, out, v = low.node, low.out, low.target.vector
    act = node.attrs.get("activation", "identity")
    combine = {"add": "vadd", "multiply": "vmul"}[node.op]
    calls, first = [], (low.ins[0], low.inputs[0])
    for i in range(1, len(node.inputs)):
        last = i == len(node.inputs) - 1
        a_layout, a_buffer = first if i == 1 else (out, low.output)
        b_layout = low.ins[i]
        ops = (node.op,) + ((act,) if last and act != "identity" else ())
        kernel = spec("binary", ops, f"nchw{v}c",
                      flops=low.n_batch * out.channels * out.height * out.width,
                      bytes=4 * (a_layout.size(low.n_batch) + b_layout.size(low.n_batch)
                                 + out.size(low.n_batch)),
                      **activation_values(act if last else "identity"), combine=combine,
                      blocks=out.blocks, height=out.height, width=out.width,
                      **operand("a", a_layout, out), **operand("b", b_layout, out),
                      **out.strides("out"))
        calls.append(Call(node.name, kernel, (a_buffer, low.inputs[i], low.output)))
    return calls


def lower_concat(low: Lowering) -> list[Call]:
    """One copy per input into its channel range of the output (any channel offset)."""
    out, v, calls, offset = low.out, low.target.vector, [], 0
    for x, buffer in zip(low.ins, low.inputs):
        kernel = spec("concat", ("concat",), f"nchw{v}c",
                      bytes=8 * low.n_batch * x.channels * x.height * x.width,
                      height=out.height, width=out.width,
                      channels=x.channels, offset=offset, **x.strides("x"), **out.strides("out"))
        calls.append(Call(low.node.name, kernel, (buffer, low.output)))
        offset += x.channels
    return calls


def lower_relayout(low: Lowering) -> list[Call]:
    """flatten / reshape: the C-order values moved from the input's layout to the output's."""
    x, out, v = low.ins[0], low.out, low.target.vector
    kernel = spec("relayout", (low.node.op,), f"nchw{v}c",
                  bytes=8 * low.n_batch * out.channels * out.height * out.width,
                  c_in=x.channels, h_in=x.height, w_in=x.width,
                  c_out=out.channels, h_out=out.height, w_out=out.width,
                  **x.strides("x"), **out.strides("out"))
    return [Call(low.node.name, kernel, (low.inputs[0], low.output))]


LOWER = {
    "batchnorm": lower_batchnorm, "dropout": lower_dropout, "softmax": lower_softmax,
    "add": lower_binary, "multiply": lower_binary, "concat": lower_concat,
    "flatten": lower_relayout, "reshape": lower_relayout,
    **{name: lower_activation for name in activation.NAMES},
}
