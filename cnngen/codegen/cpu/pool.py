"""Lowering of max/avg pools, global pools and max_unpool to vectorised pooling kernels.

- maxpool/avgpool 1-D and 2-D: ``pool2d``, one vector max or sum per window over a channel
  block, windows clipped to the valid input (the input's halo is sized for convolutions,
  and its zeros are not max's -inf padding). Padding may reach size - 1 (ONNX), so a border
  window may hold a single input pixel, but never none (see ``ops.pool``).
- maxpool with ``return_switches``: ``maxpool2d_switches`` also writes each output's
  argmax, the flat index ``h*W_in + w`` into the unpadded input plane, as float32 in the
  temporary buffer ``<layer>:switches`` (same blocked shape as the output, no halo).
  In training, a batch norm (and its activation) fused before the pool
  (``passes.training``) normalises in the same kernel: it pools act(scale*x + shift).
- global_maxpool / global_avgpool: ``pool2d`` with the window the whole input.
- max_unpool: ``max_unpool2d`` scatters into the pool's input shape through the switches.

1-D layers are 2-D with height 1.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...errors import SpecError
from ...ir import Node
from ..kernel import Buffer, Call, spec
from ..layout import Blocked
from . import Lowering, activation_values

# float32 holds every integer below 2**24 exactly; a switch must be one.
MAX_SWITCH = 2 ** 24


def geometry(node: Node):
    """(size, stride, padding) as 2-D tuples; padding ((top, bottom), (left, right))."""
    a = node.attrs
    if len(a["size"]) == 2:
        return a["size"], a["stride"], a["padding"]
    return (1, *a["size"]), (1, *a["stride"]), ((0, 0), *a["padding"])


def whole_columns(w_in: int, w_out: int, k_w: int, stride: int, pad_left: int) -> tuple[int, int]:
    """[lo, hi): the output columns whose window lies inside the input horizontally."""
    lo = min(w_out, -(-pad_left // stride))
    span = w_in + pad_left - k_w
    hi = span // stride + 1 if span >= 0 else 0
    return lo, max(lo, min(w_out, hi))


def switches_layout(pool_out: Blocked) -> Blocked:
    """Layout of a max-pool's switches buffer: the output's blocked shape, no halo."""
    return Blocked(pool_out.channels, pool_out.height, pool_out.width, pool_out.vector)


def window_values(low: Lowering, kernel, stride, pads) -> dict:
    """Template values shared by the pooling kernels: shapes, window and both layouts."""
    x, out = low.ins[0], low.out
    return dict(
        blocks=out.blocks, h_in=x.height, w_in=x.width,
        h_out=out.height, w_out=out.width, k_h=kernel[0], k_w=kernel[1],
        stride_h=stride[0], stride_w=stride[1], pad_top=pads[0][0], pad_left=pads[1][0],
        x_batch=x.batch_stride, x_block=x.block_stride, x_row=x.row_stride, x_origin=x.origin,
        **out.strides("out"))


def traffic(low: Lowering) -> int:
    """Bytes a pool must move: its input's and its output's interiors."""
    x, out = low.ins[0], low.out
    pixels = x.height * x.width + out.height * out.width
    return 4 * low.n_batch * out.blocks * out.vector * pixels


def pool_call(low: Lowering, ops, kernel, stride, pads, is_max: bool, count_pads) -> Call:
    """A call of ``pool2d``; ``count_pads`` ((top, bottom), (left, right)) is what avg counts."""
    x, out = low.ins[0], low.out
    lo, hi = whole_columns(x.width, out.width, kernel[1], stride[1], pads[1][0])
    (count_top, count_bottom), (count_left, count_right) = count_pads
    kernel_spec = spec(
        "pool2d", ops, f"nchw{out.vector}c",
        flops=low.n_batch * out.channels * out.height * out.width * kernel[0] * kernel[1],
        bytes=traffic(low), is_max=is_max, count_top=count_top, count_bottom=count_bottom,
        count_left=count_left, count_right=count_right, ow_lo=lo, ow_hi=hi,
        **window_values(low, kernel, stride, pads))
    return Call(low.node.name, kernel_spec, (low.inputs[0], low.output))


def check_switches(low: Lowering) -> None:
    x = low.ins[0]
    if x.height * x.width >= MAX_SWITCH:
        node = low.node
        raise SpecError(
            f"layer {node.name!r} ({node.op}): switches are stored as float32, which holds "
            f"positions only below 2**24 = {MAX_SWITCH}. Received an input plane of "
            f"{x.height * x.width} positions (input shape {node.in_types[0]}). Pool a smaller "
            f"input or drop 'return_switches'.")


def lower_pool(low: Lowering) -> list[Call]:
    node = low.node
    kernel, stride, pads = geometry(node)
    if node.op.startswith("avg"):
        counted = pads if node.attrs["count_include_pad"] else ((0, 0), (0, 0))
        return [pool_call(low, (node.op,), kernel, stride, pads, False, counted)]
    if not node.attrs["return_switches"]:
        return [pool_call(low, (node.op,), kernel, stride, pads, True, ((0, 0), (0, 0)))]
    return [switches_call(low, (node.op, "switches"), kernel, stride, pads)]


@dataclass(frozen=True)
class Normalise:
    """A batch norm fused before a max pool: the pool reads act(scale*x + shift)."""

    scale: Buffer
    shift: Buffer
    activation: str = "identity"
    alpha: float = 0.0


def switches_call(low: Lowering, ops, kernel, stride, pads,
                  normalise: Normalise | None = None) -> Call:
    """A call of ``maxpool2d_switches`` writing ``<layer>:switches``; with ``normalise``, the
    window's values are act(scale*x + shift) of the input x."""
    check_switches(low)
    x, out = low.ins[0], low.out
    sw = switches_layout(out)
    lo, hi = whole_columns(x.width, out.width, kernel[1], stride[1], pads[1][0])
    act = normalise or Normalise(None, None)
    kernel_spec = spec(
        "maxpool2d_switches", ops, f"nchw{out.vector}c",
        flops=low.n_batch * out.channels * out.height * out.width * kernel[0] * kernel[1],
        bytes=traffic(low) + 4 * sw.size(low.n_batch), ow_lo=lo, ow_hi=hi,
        normalise=normalise is not None, **activation_values(act.activation, act.alpha),
        **window_values(low, kernel, stride, pads), **sw.strides("sw"))
    args = (low.inputs[0], low.output, low.temp("switches", sw))
    if normalise is not None:
        args += (normalise.scale, normalise.shift)
    return Call(low.node.name, kernel_spec, args)


def lower_global_pool(low: Lowering) -> list[Call]:
    x = low.ins[0]
    none = ((0, 0), (0, 0))
    return [pool_call(low, (low.node.op,), (x.height, x.width), (1, 1), none,
                      low.node.op == "global_maxpool", none)]


def lower_max_unpool(low: Lowering) -> list[Call]:
    node, x, out = low.node, low.ins[0], low.out
    pool = node.attrs["switches"]
    sw = switches_layout(low.refs[0])
    kernel_spec = spec(
        "max_unpool2d", (node.op,), f"nchw{out.vector}c",
        bytes=4 * (x.size(low.n_batch) + sw.size(low.n_batch) + out.size(low.n_batch)),
        blocks=out.blocks,
        h_in=x.height, w_in=x.width, h_out=out.height, w_out=out.width,
        x_batch=x.batch_stride, x_block=x.block_stride, x_row=x.row_stride, x_origin=x.origin,
        **sw.strides("sw"), **out.strides("out"))
    return [Call(node.name, kernel_spec, (low.inputs[0], Buffer(f"{pool}:switches"), low.output))]


LOWER = {"maxpool1d": lower_pool, "maxpool2d": lower_pool,
         "avgpool1d": lower_pool, "avgpool2d": lower_pool,
         "global_maxpool": lower_global_pool, "global_avgpool": lower_global_pool,
         "max_unpool": lower_max_unpool}
