"""Training lowerings of the pools: the training forward that keeps switches, and the
backward kernels.

Training forward (``TRAIN``):
- maxpool1d/2d: always ``maxpool2d_switches`` (the inference lowering with
  ``return_switches``), so that the backward reads ``<layer>:switches``.
- global_maxpool: the same kernel with the window the whole input; its switches are the
  argmax (the first maximum in flat order, as numpy's argmax).

Backward (``BACKWARD``), all gathers, vectorised over the channel block:
- max pools, global max: ``pool2d_grad`` with MAX, dx = the sum of dy over the covering
  windows whose switch is the pixel (overlapping windows add; a task owns a row of dx, so
  the scatter is race-free without atomics or zeroing).
- avg pools, global avg: ``pool2d_grad``, dx = the sum of dy / count over the covering
  windows (count_include_pad both ways, padding, ceil_mode as the forward counts them).
- max_unpool: ``max_unpool2d_grad``, dx = dy read at the switches (one gather per lane).

1-D layers are 2-D with height 1.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ...errors import SpecError
from ..kernel import Buffer, Call, Const, spec
from ..layout import Blocked
from . import GradLowering, Lowering
from .pool import MAX_SWITCH, geometry, lower_pool, switches_call, switches_layout

NO_PADS = ((0, 0), (0, 0))


def lower_maxpool_train(low: Lowering) -> list[Call]:
    """The max pool with its switches, whether or not a max_unpool reads them."""
    node = dataclasses.replace(low.node, attrs={**low.node.attrs, "return_switches": True})
    return lower_pool(dataclasses.replace(low, node=node))


def lower_global_maxpool_train(low: Lowering) -> list[Call]:
    """Global max with its argmax: ``maxpool2d_switches`` with the whole input as window."""
    x, out, node = low.ins[0], low.out, low.node
    if x.height * x.width >= MAX_SWITCH:
        raise SpecError(
            f"layer {node.name!r} ({node.op}): training keeps the argmax of every channel as "
            f"a float32 position, exact only below 2**24 = {MAX_SWITCH}. Received an input "
            f"plane of {x.height * x.width} positions (input shape {node.in_types[0]}). Pool "
            f"a smaller input, or downsample before this layer.")
    return [switches_call(low, (node.op, "switches"), (x.height, x.width), (1, 1), NO_PADS)]


def grad_values(g: GradLowering, kernel, stride, pads) -> dict:
    """Template values of ``pool2d_grad``: shapes, window, and the dy and dx layouts."""
    dx, dy = g.d_ins[0], g.d_out
    return dict(blocks=dy.blocks, h_in=dx.height, w_in=dx.width, h_out=dy.height,
                w_out=dy.width, k_h=kernel[0], k_w=kernel[1], stride_h=stride[0],
                stride_w=stride[1], pad_top=pads[0][0], pad_left=pads[1][0],
                **dy.strides("dy"), **dx.strides("dx"))


def inverse_counts(dx: Blocked, dy: Blocked, kernel, stride, pads, count_pads) -> np.ndarray:
    """1/count of every window (H_OUT*W_OUT floats), as the forward average pool counts:
    the window clipped to [-count_begin, size + count_end) per axis (count_pads: the
    padding count_include_pad counts, else 0; never ceil_mode's extra rows)."""
    counts = []
    for size, out, k, s, (pad, _), (begin, end) in zip(
            (dx.height, dx.width), (dy.height, dy.width), kernel, stride, pads, count_pads):
        start = np.arange(out) * s - pad
        counts.append(np.minimum(start + k, size + end) - np.maximum(start, -begin))
    return (1.0 / np.outer(counts[0], counts[1])).astype(np.float32).ravel()


def pool_grad_call(g: GradLowering, kernel, stride, pads, is_max: bool, count_pads) -> Call:
    """A call of ``pool2d_grad``; max reads the forward's ``switches``, avg 1/counts."""
    dx, dy, node = g.d_ins[0], g.d_out, g.node
    sw = switches_layout(g.out)
    covering = -(-kernel[0] // stride[0]) * -(-kernel[1] // stride[1])
    pixels = g.n_batch * dx.blocks * dx.vector * dx.height * dx.width
    kernel_spec = spec(
        "pool2d_grad", (node.op, "grad"), f"nchw{dx.vector}c", flops=2 * pixels * covering,
        bytes=4 * (pixels + (2 if is_max else 1) * g.n_batch * dy.blocks * dy.vector
                   * dy.height * dy.width),
        is_max=is_max, **grad_values(g, kernel, stride, pads), **sw.strides("sw"))
    if is_max:
        by_output = g.saved("switches")
    else:
        table = inverse_counts(dx, dy, kernel, stride, pads, count_pads)
        by_output = Const(node.name, "inverse_counts", lambda p: table)
    return Call(node.name, kernel_spec, (g.grad_output, by_output, g.grad_input(0)))


def pool_backward(g: GradLowering) -> list[Call]:
    if g.d_ins[0] is None:
        return []
    node = g.node
    kernel, stride, pads = geometry(node)
    if node.op.startswith("max"):
        return [pool_grad_call(g, kernel, stride, pads, True, NO_PADS)]
    counted = pads if node.attrs["count_include_pad"] else NO_PADS
    return [pool_grad_call(g, kernel, stride, pads, False, counted)]


def global_pool_backward(g: GradLowering) -> list[Call]:
    if g.d_ins[0] is None:
        return []
    x = g.ins[0]
    return [pool_grad_call(g, (x.height, x.width), (1, 1), NO_PADS,
                           g.node.op == "global_maxpool", NO_PADS)]


def max_unpool_backward(g: GradLowering) -> list[Call]:
    """dx = dy at the switches of the max pool that ``switches`` names."""
    if g.d_ins[0] is None:
        return []
    node, dx, dy = g.node, g.d_ins[0], g.d_out
    sw = switches_layout(g.refs[0] if g.refs else g.ins[0])
    kernel = spec("max_unpool2d_grad", (node.op, "grad"), f"nchw{dx.vector}c",
                  bytes=4 * (2 * dx.size(g.n_batch) + sw.size(g.n_batch)),
                  blocks=dx.blocks, h_in=dx.height, w_in=dx.width, h_out=dy.height,
                  w_out=dy.width, **dy.strides("dy"), **sw.strides("sw"), **dx.strides("dx"))
    pool = node.attrs["switches"]
    return [Call(node.name, kernel, (g.grad_output, Buffer(f"{pool}:switches"),
                                     g.grad_input(0)))]


TRAIN = {"maxpool1d": lower_maxpool_train, "maxpool2d": lower_maxpool_train,
         "global_maxpool": lower_global_maxpool_train}

BACKWARD = {"maxpool1d": pool_backward, "maxpool2d": pool_backward,
            "avgpool1d": pool_backward, "avgpool2d": pool_backward,
            "global_maxpool": global_pool_backward, "global_avgpool": global_pool_backward,
            "max_unpool": max_unpool_backward}
