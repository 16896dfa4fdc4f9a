"""Lowering of conv1d/conv2d and conv_transpose1d/2d to the direct and depthwise kernels.

- groups = 1, and groups whose channels per group are whole vectors: ``conv2d`` template,
  the register-tiled direct convolution.
- depthwise (groups = c_in = c_out): ``depthwise2d``, vectorised over the channel block.
- any other grouping: the weights are expanded to a block-diagonal dense convolution
  (correct for every grouping; costs ``groups`` times the multiply-adds).
- conv_transpose (and the conv data gradient, see conv_grad.py): one stride-1 conv of the
  input per output phase (sub-pixel), with the flipped, transposed taps that land on that
  phase; the phase maps are merged into the output (``conv2d_phase_merge``).

1-D layers are 2-D with height 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ... import schedule as sched
from ...errors import InputError
from ...ir import Node
from ..kernel import Buffer, Call, Const, spec
from ..layout import Blocked
from . import Lowering, activation_values
from .pool import geometry as pool_geometry


def geometry(node: Node):
    """(kernel, stride, dilation, padding) as 2-D tuples; padding ((top, bottom), (left, right))."""
    a = node.attrs
    if len(a["kernel"]) == 2:
        return a["kernel"], a["stride"], a["dilation"], a["padding"]
    return (1, *a["kernel"]), (1, *a["stride"]), (1, *a["dilation"]), ((0, 0), *a["padding"])


def conv_halo(node: Node) -> tuple[int, int, int, int]:
    _, _, _, ((top, bottom), (left, right)) = geometry(node)
    return (top, bottom, left, right)


def is_depthwise(c_in: int, c_out: int, groups: int) -> bool:
    return groups > 1 and groups == c_in == c_out


def is_aligned(c_in: int, c_out: int, groups: int, vector: int) -> bool:
    return groups == 1 or (c_in // groups % vector == 0 and c_out // groups % vector == 0)


def dense_weights(w: np.ndarray, groups: int) -> np.ndarray:
    """Grouped weights (K, C/g, R, S) as the block-diagonal dense (K, C, R, S)."""
    k_out, c_group = w.shape[:2]
    dense = np.zeros((k_out, c_group * groups, *w.shape[2:]), w.dtype)
    k_group = k_out // groups
    for g in range(groups):
        dense[g * k_group:(g + 1) * k_group, g * c_group:(g + 1) * c_group] = w[g * k_group:(g + 1) * k_group]
    return dense


def pack_direct(w: np.ndarray, vector: int) -> np.ndarray:
    """(K, C/g, R, S) -> (K/V blocks, ic vectors per group, R, S, V_in, V_out), zero padded."""
    k_out, c_group, k_h, k_w = w.shape
    oc_blocks, ic_vecs = -(-k_out // vector), -(-c_group // vector)
    padded = np.zeros((oc_blocks * vector, ic_vecs * vector, k_h, k_w), np.float32)
    padded[:k_out, :c_group] = w
    blocked = padded.reshape(oc_blocks, vector, ic_vecs, vector, k_h, k_w)
    return np.ascontiguousarray(blocked.transpose(0, 2, 4, 5, 3, 1)).ravel()


def pack_depthwise(w: np.ndarray, vector: int) -> np.ndarray:
    """(C, 1, R, S) -> (C/V blocks, R, S, V), zero padded."""
    c, _, k_h, k_w = w.shape
    blocks = -(-c // vector)
    padded = np.zeros((blocks * vector, k_h, k_w), np.float32)
    padded[:c] = w[:, 0]
    return np.ascontiguousarray(padded.reshape(blocks, vector, k_h, k_w).transpose(0, 2, 3, 1)).ravel()


def folded(p: dict, node: Node) -> tuple[np.ndarray, np.ndarray | None]:
    """The conv's (w, b) with a fused batch norm folded in (``p["batchnorm"]``), if any.

        scale = gamma / sqrt(running_var + eps),  w' = w * scale,  b' = (b - mean) * scale + beta
    """
    w, b = p["w"], p.get("b")
    bn = next((n for n in node.fused if n.op == "batchnorm"), None)
    if bn is None:
        return w, b
    stats = p["batchnorm"]
    scale = stats["gamma"] / np.sqrt(stats["running_var"] + bn.attrs["eps"])
    b = np.zeros(len(scale)) if b is None else b
    return w * scale.reshape(-1, *([1] * (w.ndim - 1))), (b - stats["running_mean"]) * scale + stats["beta"]


def pack_bias(b: np.ndarray | None, channels: int, vector: int) -> np.ndarray:
    out = np.zeros(-(-channels // vector) * vector, np.float32)
    if b is not None:
        out[:len(b)] = b
    return out


def as_2d(w: np.ndarray) -> np.ndarray:
    return w if w.ndim == 4 else w[:, :, None, :]


# Activations that commute with max (non-decreasing): a 2x2 max pool can take the max of
# the raw tile and apply bias and activation once per pooled pixel.
NON_DECREASING = ("identity", "relu", "leaky_relu", "sigmoid", "tanh")
POOLS = ("maxpool1d", "maxpool2d", "avgpool1d", "avgpool2d")


def fused_pool(node: Node) -> Node | None:
    return next((n for n in node.fused if n.op in POOLS), None)


def pool_values(pool: Node | None, conv: Blocked, mode: int) -> dict:
    """Template values of the epilogue's pool (a 1x1 window that nothing reads when none)."""
    if pool is None:
        return dict(pool=0, pool_max=True, pool_k_h=1, pool_k_w=1, pool_stride_h=1,
                    pool_stride_w=1, pool_pad_top=0, pool_pad_left=0,
                    pool_h_out=conv.height, pool_w_out=conv.width)
    size, stride, ((top, _), (left, _)) = pool_geometry(pool)
    out = Blocked.of(pool.out, conv.vector)
    return dict(pool=mode, pool_max=pool.op.startswith("max"), pool_k_h=size[0], pool_k_w=size[1],
                pool_stride_h=stride[0], pool_stride_w=stride[1], pool_pad_top=top,
                pool_pad_left=left, pool_h_out=out.height, pool_w_out=out.width)


def register_pool(node: Node, pool: Node | None, conv: Blocked, out: Blocked) -> bool:
    """A 2x2 / stride-2 unpadded max pool after a non-decreasing activation, every window
    inside the conv output (not a ceil_mode window past an odd edge): POOL mode 2."""
    if pool is None or not pool.op.startswith("max"):
        return False
    size, stride, pads = pool_geometry(pool)
    return (size == (2, 2) and stride == (2, 2) and pads == ((0, 0), (0, 0))
            and 2 * out.height <= conv.height and 2 * out.width <= conv.width
            and node.attrs["activation"] in NON_DECREASING
            and node.attrs.get("alpha", 0.0) >= 0)


def band_rows(rows: int, pool: Node, pooled_height: int) -> int:
    """Pooled rows per task for the general pool: enough that the conv rows two bands share
    (window - stride per band edge) are at most a quarter of those a band computes."""
    (k_h, _), (s_h, _), _ = pool_geometry(pool)
    overlap = max(0, k_h - s_h)
    return min(pooled_height, max(rows, -(-4 * overlap // s_h)))


def check_schedule(node: Node, s: sched.ConvSchedule, oc_blocks_per_group: int,
                   ic_vecs: int) -> None:
    """An explicit schedule must fit the layer: whole output-channel groups and input
    blocks, at least one pixel and row per tile and task."""
    problems = []
    if oc_blocks_per_group % s.oc_vecs:
        problems.append(f"oc_vecs={s.oc_vecs} must divide the {oc_blocks_per_group} "
                        f"output-channel vectors per group")
    if ic_vecs % s.ic_block:
        problems.append(f"ic_block={s.ic_block} must divide the {ic_vecs} input-channel vectors")
    problems += [f"{name}={value} must be >= 1" for name, value in
                 (("oc_vecs", s.oc_vecs), ("ow_tile", s.ow_tile), ("ic_block", s.ic_block),
                  ("rows", s.rows)) if value < 1]
    if s.order not in (0, 1):
        problems.append(f"order={s.order} must be 0 (ic blocks outermost) or 1 (tiles outermost)")
    if problems:
        raise InputError(f"layer {node.fused[0].name if node.fused else node.name!r} "
                         f"({node.op}): schedule {s} does not fit: {'; '.join(problems)}.")


def direct_conv(low: Lowering, x: Blocked, x_buffer, groups: int, kernel, stride, dilation,
                pads, weights: Const, bias: Const, ops: tuple[str, ...]) -> Call:
    """A call of the register-tiled direct convolution reading ``x`` with ``pads``, with the
    node's fused residual (its second input) or pool in the epilogue (never both)."""
    node, out, v = low.node, low.out, low.target.vector
    pool = fused_pool(node)
    conv = Blocked.of(pool.in_types[0], v) if pool else out
    residual = len(node.inputs) == 2 and low.ins[1]
    if residual and pool:
        raise AssertionError(f"{node.name}: fuse_pool never fuses a pool after a residual")
    c_group = x.channels // groups
    ic_vecs = -(-c_group // v)
    oc_blocks = conv.blocks
    mode = 2 if register_pool(node, pool, conv, out) else int(pool is not None)
    cols = 2 * out.width if mode == 2 else conv.width
    work = sched.ConvWorkload(c_group, conv.channels // groups, out.height,
                              cols, *kernel, stride[1])
    s = low.schedule
    if s is not None:
        check_schedule(node, s, oc_blocks // groups, ic_vecs)
    elif mode == 2:
        ranked = [replace(c, ic_block=ic_vecs, ow_tile=c.ow_tile - c.ow_tile % 2, order=0)
                  for c in sched.conv_ranked(work, low.target) if c.ow_tile >= 2]
        s = low.heuristic(ranked) if ranked else None
    if mode == 2 and (s is None or s.ow_tile % 2 or s.ic_block != ic_vecs):
        mode, cols = 1, conv.width        # a schedule the register pool cannot use
        work = replace(work, w_out=cols)
    if s is None:
        ranked = sched.conv_ranked(work, low.target)
        if mode == 1:
            ranked = [replace(c, rows=band_rows(c.rows, pool, out.height)) for c in ranked]
        s = low.heuristic(ranked)
    res_args = (low.inputs[1],) if residual else ()
    res_strides = residual.strides("res") if residual else dict.fromkeys(
        ("res_batch", "res_block", "res_row", "res_origin"), 0)
    flops = 2 * low.n_batch * conv.channels * conv.height * conv.width * c_group * kernel[0] * kernel[1]
    moved = x.size(low.n_batch) + out.size(low.n_batch) + oc_blocks * ic_vecs * v * v * kernel[0] * kernel[1]
    kernel_spec = spec(
        "conv2d", ops, f"nchw{v}c", s, flops=flops,
        bytes=4 * (moved + (residual.size(low.n_batch) if residual else 0)),
        **activation_values(node.attrs["activation"], node.attrs.get("alpha", 0.01)),
        epilogue=(node.attrs["activation"] != "identity" or bool(node.attrs["bias"])
                  or bool(node.fused)),
        last_lanes=conv.channels - (oc_blocks - 1) * v,
        residual=bool(residual), stats=False, cols=cols, **pool_values(pool, conv, mode),
        h_out=conv.height, w_out=conv.width, k_h=kernel[0], k_w=kernel[1],
        stride_h=stride[0], stride_w=stride[1], dilation_h=dilation[0], dilation_w=dilation[1],
        ic_vecs=ic_vecs, ic_lanes=min(c_group, v), oc_blocks=oc_blocks,
        oc_blocks_per_group=oc_blocks // groups, oc_vecs=s.oc_vecs, ow_tile=s.ow_tile,
        ic_block=s.ic_block, rows=s.rows, tile_outer=s.order == 1 and s.ic_block < ic_vecs,
        tail_tiles=int(cols % s.ow_tile > 0),
        ow_tail=cols % s.ow_tile or s.ow_tile,
        x_batch=x.batch_stride, x_block=x.block_stride, x_row=x.row_stride,
        x_origin=x.window_origin(pads[0], pads[1]), **out.strides("out"), **res_strides)
    return Call(node.name, kernel_spec, (x_buffer, weights, bias, low.output, *res_args))


def depthwise_conv(low: Lowering, kernel, stride, dilation, pads, ops) -> Call:
    x, out, v = low.ins[0], low.out, low.target.vector
    work = sched.ConvWorkload(1, 1, out.height, out.width, *kernel, stride[1],
                              depthwise=True)
    s = low.schedule or low.heuristic(sched.depthwise_ranked(work, low.target))
    node = low.node
    if s.ow_tile < 1 or s.rows < 1:
        raise InputError(f"layer {node.fused[0].name if node.fused else node.name!r} "
                         f"({node.op}): schedule {s} does not fit: ow_tile and rows must be >= 1.")
    kernel_spec = spec(
        "depthwise2d", ops, f"nchw{v}c", s,
        flops=2 * low.n_batch * out.channels * out.height * out.width * kernel[0] * kernel[1],
        bytes=4 * (x.size(low.n_batch) + out.size(low.n_batch)),
        **activation_values(node.attrs["activation"], node.attrs.get("alpha", 0.01)), blocks=out.blocks,
        h_out=out.height, w_out=out.width, k_h=kernel[0], k_w=kernel[1],
        stride_h=stride[0], stride_w=stride[1], dilation_h=dilation[0], dilation_w=dilation[1],
        ow_tile=s.ow_tile, rows=s.rows, tail_tiles=int(out.width % s.ow_tile > 0),
        ow_tail=out.width % s.ow_tile or s.ow_tile,
        x_batch=x.batch_stride, x_block=x.block_stride, x_row=x.row_stride,
        x_origin=x.window_origin(pads[0], pads[1]), **out.strides("out"))
    weights = Const(node.name, "w", lambda p: pack_depthwise(as_2d(folded(p, node)[0]), v))
    bias = Const(node.name, "b", lambda p: pack_bias(folded(p, node)[1], out.channels, v))
    return Call(node.name, kernel_spec, (low.inputs[0], weights, bias, low.output))


def op_chain(node: Node) -> tuple[str, ...]:
    """What the kernel computes, for its name: ``("conv2d", "bn", "relu")``."""
    chain = []
    for n in node.fused or (node,):
        chain.append("bn" if n.op == "batchnorm" else n.op)
        if n.attrs.get("activation", "identity") != "identity":
            chain.append(n.attrs["activation"])
    return tuple(chain)


def lower_conv(low: Lowering) -> list[Call]:
    node, v = low.node, low.target.vector
    kernel, stride, dilation, ((top, _), (left, _)) = geometry(node)
    groups, c_in, c_out = node.attrs["groups"], low.ins[0].channels, low.out.channels
    ops = op_chain(node)
    if isinstance(low.schedule, sched.WinogradSchedule):
        from . import winograd        # it builds on this module's packing and epilogue
        return winograd.lower_winograd(low)
    if is_depthwise(c_in, c_out, groups):
        return [depthwise_conv(low, kernel, stride, dilation, (top, left), ops)]
    if is_aligned(c_in, c_out, groups, v):
        weights = Const(node.name, "w", lambda p: pack_direct(as_2d(folded(p, node)[0]), v))
    else:
        weights = Const(node.name, "w", lambda p, g=groups: pack_direct(
            dense_weights(as_2d(folded(p, node)[0]), g), v))
        groups = 1
    bias = Const(node.name, "b", lambda p: pack_bias(folded(p, node)[1], c_out, v))
    return [direct_conv(low, low.ins[0], low.inputs[0], groups, kernel, stride, dilation,
                        (top, left), weights, bias, ops)]


def transposed_as_conv(w: np.ndarray, groups: int) -> np.ndarray:
    """conv_transpose weights (C, K/g, R, S) as the equivalent conv's (K, C/g, R, S), flipped."""
    c_in, k_group = w.shape[:2]
    c_group = c_in // groups
    wg = w.reshape(groups, c_group, k_group, *w.shape[2:])[..., ::-1, ::-1]
    return np.ascontiguousarray(wg.transpose(0, 2, 1, 3, 4)).reshape(groups * k_group, c_group, *w.shape[2:])


@dataclass(frozen=True)
class Phase:
    """One output phase of a transposed conv along one axis: the outputs
    o = phase + stride*q (q < count) read only the taps r with (o + pad - r*dilation) divisible
    by stride, which make a stride-1 conv of the un-spread input:

        out[phase + stride*q] = sum_t x[q - pad + t*dilation] * wc[taps[t]]

    ``taps`` index the flipped kernel wc (``transposed_as_conv``), in the order the sub-conv
    reads them; ``pad`` may be negative (a crop); ``end`` is how far past the input's last
    pixel the reads reach."""

    phase: int
    count: int
    taps: tuple[int, ...]
    dilation: int
    pad: int
    end: int


def phases(k: int, stride: int, dilation: int, pad: int, size_in: int, size_out: int) -> list[Phase]:
    """The output phases of one axis of a transposed conv (one, with every tap, at stride 1).

    Output o = phase + stride*q takes x[i] * w[r] where o + pad = i*stride + r*dilation, so
    i = q + (phase + pad - r*dilation) / stride; the taps of a phase are every stride/gcd-th,
    and their input offsets step by dilation/gcd."""
    step = dilation // math.gcd(stride, dilation)
    out = []
    for phase in range(min(stride, size_out)):
        count = -(-(size_out - phase) // stride)
        rs = [r for r in range(k) if (phase + pad - r * dilation) % stride == 0]
        if not rs:
            out.append(Phase(phase, count, (), 1, 0, 0))
            continue
        first = (phase + pad - rs[-1] * dilation) // stride      # offset of the last tap
        last = (phase + pad - rs[0] * dilation) // stride
        out.append(Phase(phase, count, tuple(k - 1 - r for r in reversed(rs)), step, -first,
                         count - 1 + last - (size_in - 1)))
    return out


def phase_axes(node: Node) -> list[list[Phase]]:
    """The output phases of a transposed conv node along its height and its width."""
    kernel, stride, dilation, pads = geometry(node)
    size_in = (1, *node.in_types[0].spatial)[-2:]
    size_out = (1, *node.out.spatial)[-2:]
    return [phases(kernel[i], stride[i], dilation[i], pads[i][0], size_in[i], size_out[i])
            for i in range(2)]


def conv_transpose_halo(node: Node) -> tuple[int, int, int, int]:
    """The zero halo (top, bottom, left, right) the phase convs of a transposed conv read
    around its input; an input that has it is read in place, else copied into one."""
    axes = phase_axes(node)
    live = [(ph, pw) for ph in axes[0] for pw in axes[1] if ph.taps and pw.taps]
    return (max([ph.pad for ph, _ in live] + [0]), max([ph.end for ph, _ in live] + [0]),
            max([pw.pad for _, pw in live] + [0]), max([pw.end for _, pw in live] + [0]))


def retarget(call: Call, output: Buffer, args: tuple | None = None, **values) -> Call:
    """``call`` writing ``output`` (its last argument), with other ``args`` or kernel
    ``values`` where given (a phase map's strides inside a shared buffer)."""
    merged = {**dict(call.kernel.values), **values}
    kernel = replace(call.kernel, values=tuple(sorted(merged.items())))
    return replace(call, kernel=kernel, args=(*(args or call.args[:-1]), output))


def lower_conv_transpose(low: Lowering, output: Buffer | None = None, tag: str = "") -> list[Call]:
    """conv_transpose as stride-1 convs of its input, one per output phase (sub-pixel): at
    stride s each output pixel meets only the taps that land on it, so no multiply-add
    touches a spread zero. A strided one writes its phase maps into a temp that a merge
    kernel interleaves into the output (bias alone where no tap lands). The input is copied
    into a temp with a zero halo unless its own halo is wide enough.

    ``output`` (default: the layer's) and ``tag`` serve the conv data gradient, which is this
    transposed conv of the conv's output gradient: ``tag`` keeps its weight Consts and
    temps apart from the forward's (``w:dx``, ``<layer>:pad:dx``)."""
    node, v = low.node, low.target.vector
    x, out, n_batch = low.ins[0], low.out, low.n_batch
    output = output or low.output
    suffix = f":{tag}" if tag else ""
    axes = phase_axes(node)
    live = [(ph, pw) for ph in axes[0] for pw in axes[1] if ph.taps and pw.taps]
    calls = []
    halo = conv_transpose_halo(node)
    x_buffer = low.inputs[0]
    if any(need > have for need, have in zip(halo, x.halo)):
        padded = Blocked(x.channels, x.height, x.width, v, halo)
        copy = low.temp(f"pad{suffix}", padded)
        calls.append(Call(node.name, spec(
            "dilate2d", ("pad",), f"nchw{v}c", bytes=4 * (x.size(n_batch) + padded.size(n_batch)),
            blocks=x.blocks, h_in=x.height, w_in=x.width, stride_h=1, stride_w=1,
            x_batch=x.batch_stride, x_block=x.block_stride, x_row=x.row_stride,
            x_origin=x.origin, **padded.strides("out")), (x_buffer, copy)))
        x, x_buffer = padded, copy
    groups, c_out = node.attrs["groups"], out.channels
    depthwise = (is_depthwise(x.channels, c_out, groups)
                 and not isinstance(low.schedule, sched.ConvSchedule))
    aligned = is_aligned(x.channels, c_out, groups, v)
    bias = Const(node.name, f"b{suffix}", lambda p: pack_bias(
        p.get("b") if node.attrs["bias"] else None, c_out, v))
    ops = op_chain(node)
    single = len(axes[0]) == len(axes[1]) == 1 and live
    phase_maps = None if single else Blocked(
        c_out, len(axes[0]) * len(axes[1]) * axes[0][0].count, axes[1][0].count, v)
    merged = low.temp(f"phases{suffix}", phase_maps) if phase_maps else output
    for ph, pw in live:
        def pack(p, rows=ph.taps, cols=pw.taps):
            w = transposed_as_conv(as_2d(p["w"]), groups)[:, :, list(rows)][:, :, :, list(cols)]
            if depthwise:
                return pack_depthwise(w, v)
            return pack_direct(w if aligned else dense_weights(w, groups), v)

        what = f"w{suffix}" if single else f"w{suffix}@{ph.phase},{pw.phase}"
        weights = Const(node.name, what, pack)
        sub = Lowering(node, (x,), Blocked(c_out, ph.count, pw.count, v), n_batch, low.target,
                       low.schedule, temps=low.temps, avoid=low.avoid)
        size, dil, pad = (len(ph.taps), len(pw.taps)), (ph.dilation, pw.dilation), (ph.pad, pw.pad)
        if depthwise:
            call = depthwise_conv(sub, size, (1, 1), dil, pad, ops)
        else:
            call = direct_conv(sub, x, x_buffer, groups if aligned else 1, size, (1, 1), dil, pad,
                               weights, bias, ops)
        if single:
            calls.append(retarget(call, output, (x_buffer, weights, bias), **out.strides("out")))
            continue
        p = ph.phase * len(axes[1]) + pw.phase
        calls.append(retarget(call, merged, (x_buffer, weights, bias), **{
            **phase_maps.strides("out"),
            "out_origin": phase_maps.origin + p * axes[0][0].count * phase_maps.row_stride}))
    if single:
        return calls
    empty = tuple(int(not (ph.taps and pw.taps)) for ph in axes[0] for pw in axes[1])
    calls.append(Call(node.name, spec(
        "conv2d_phase_merge", ("merge",), f"nchw{v}c", bytes=8 * out.size(n_batch),
        **activation_values(node.attrs["activation"], node.attrs.get("alpha", 0.01)),
        blocks=out.blocks, h_out=out.height, w_out=out.width, stride_h=len(axes[0]),
        stride_w=len(axes[1]), q_h=axes[0][0].count, empty=empty,
        **phase_maps.strides("p"), **out.strides("out")), (merged, bias, output)))
    return calls


def conv_space(low: Lowering) -> list[sched.Schedule]:
    """Every legal schedule of the layer's kernel, the heuristic's ranking first: the direct
    conv's, then Winograd's where it applies (or the depthwise kernel's)."""
    node, target = low.node, low.target
    kernel, stride, _, _ = geometry(node)
    transpose = node.op.startswith("conv_transpose")
    c_in, c_out, groups = low.ins[0].channels, low.out.channels, node.attrs["groups"]
    if not transpose and is_depthwise(c_in, c_out, groups):
        work = sched.ConvWorkload(1, 1, low.out.height, low.out.width, *kernel, stride[1],
                                  depthwise=True)
        return sched.depthwise_space(work, target)
    if not is_aligned(c_in, c_out, groups, target.vector):
        groups = 1
    pool = fused_pool(node)
    conv = Blocked.of(pool.in_types[0], target.vector) if pool else low.out
    work = sched.ConvWorkload(c_in // groups, c_out // groups, conv.height, conv.width,
                              *kernel, 1 if transpose else stride[1])
    points = sched.conv_space(work, target)
    from . import winograd
    if node.op == "conv2d" and winograd.applies(node) is None:
        points += winograd.space(node, target)
    return points


LOWER = {"conv1d": lower_conv, "conv2d": lower_conv,
         "conv_transpose1d": lower_conv_transpose, "conv_transpose2d": lower_conv_transpose}
HALO = {"conv1d": conv_halo, "conv2d": conv_halo,
        "conv_transpose1d": conv_transpose_halo, "conv_transpose2d": conv_transpose_halo}
SPACE = {op: conv_space for op in LOWER}
