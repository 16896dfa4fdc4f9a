"""Winograd F(m x m, 3 x 3) lowering of stride-1 3x3 conv2d layers (m = 2 or 4).

Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016). With
T = m + 2, an m x m output tile of one output channel is

    y = A^T [ sum_ic (G g[oc, ic] G^T) * (B^T d[ic] B) ] A

where d[ic] is the T x T input tile (the padded window) and ``*`` is elementwise: T^2
multiply-adds per input channel per m^2 outputs, against 9 m^2 for the direct conv
(2.25x fewer for m = 2, 4x fewer for m = 4). Two kernels:

- ``winograd_input``: B^T d B of every tile of every input-channel block into a scratch
  buffer laid out for the GEMM (tiles of a GEMM block side by side);
- ``winograd_gemm``: per transform position the GEMM of the weights U = G g G^T
  (transformed once, when the weights are packed) with those tiles, register tile
  ``oc_vecs`` output-channel vectors x ``tile_block`` tiles; then A^T (.) A, bias (a batch
  norm folded as the direct conv folds it), the residual and the activation on the way out.

Input and output stay in the plan's blocked layout; the input is read through its zero
halo (the padding), and tiles past the bottom and right edges read zeros there.
"""
from __future__ import annotations

import numpy as np

from ...errors import InputError
from ...ir import Node
from ...schedule import WinogradSchedule, accumulator_limit, balanced_tile
from ...target import Target
from ..kernel import Call, Const, spec
from ..layout import Blocked
# conv imports this module: its names are looked up when called, after both have loaded
from . import Lowering, activation_values, conv

# Interpolation points 0, 1, -1 (m = 2) and 0, 1, -1, 2, -2 (m = 4), plus infinity.
G = {2: np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]),
     4: np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])}
# B^T and A^T as the templates compute them (written out there as straight-line code).
B_T = {2: np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]),
       4: np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                    [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]])}
A_T = {2: np.array([[1, 1, 1, 0], [0, 1, -1, -1]]),
       4: np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                    [0, 1, -1, 8, -8, 1]])}
# Products of one task (oc_vecs x its tiles x T^2 vectors) live on the task's stack.
MT_BYTES = 128 << 10


def layer_name(node: Node) -> str:
    return node.fused[0].name if node.fused else node.name


def applies(node: Node) -> str | None:
    """None when Winograd can compute this (fused) conv node, else the reason it cannot."""
    if node.op != "conv2d":
        return f"it computes 2-D convolutions, not {node.op}"
    kernel, stride, dilation, _ = conv.geometry(node)
    problems = [f"{what}={value}" for what, value, want in
                (("kernel", kernel, (3, 3)), ("stride", stride, (1, 1)),
                 ("dilation", dilation, (1, 1)), ("groups", node.attrs["groups"], 1))
                if value != want]
    if problems:
        return ("it needs a 3x3 kernel, stride 1, dilation 1 and groups 1; received "
                + ", ".join(problems))
    pool = conv.fused_pool(node)
    if pool is not None:
        return f"its output is pooled in the epilogue (fused {pool.op} {pool.name!r})"
    return None


def _shape(node: Node) -> tuple[int, int, int, int]:
    """(c_in, c_out, h_out, w_out) of the conv."""
    h_out, w_out = node.out.shape[-2:]
    return node.in_types[0].channels, node.out.channels, h_out, w_out


def check(node: Node, s: WinogradSchedule, target: Target) -> None:
    """InputError naming the layer when the conv does not qualify or ``s`` does not fit."""
    reason = applies(node)
    if reason is not None:
        raise InputError(f"layer {layer_name(node)!r} ({node.op}): a WinogradSchedule does "
                         f"not apply: {reason}. Use a ConvSchedule, or no schedule.")
    c_in, c_out, _, _ = _shape(node)
    oc_blocks, ic_vecs = -(-c_out // target.vector), -(-c_in // target.vector)
    problems = [f"{name}={value} must be >= 1" for name, value in
                (("oc_vecs", s.oc_vecs), ("tile_block", s.tile_block), ("ic_block", s.ic_block))
                if value < 1]
    if s.m not in (2, 4):
        problems.append(f"m={s.m} must be 2 or 4")
    if s.oc_vecs >= 1 and oc_blocks % s.oc_vecs:
        problems.append(f"oc_vecs={s.oc_vecs} must divide the {oc_blocks} output-channel vectors")
    if s.ic_block >= 1 and ic_vecs % s.ic_block:
        problems.append(f"ic_block={s.ic_block} must divide the {ic_vecs} input-channel vectors")
    limit = accumulator_limit(target, s.oc_vecs)
    if s.oc_vecs * s.tile_block > limit:
        problems.append(f"oc_vecs*tile_block={s.oc_vecs * s.tile_block} accumulators exceed the "
                        f"{limit} that fit {target.vector_registers} vector registers")
    if problems:
        raise InputError(f"layer {layer_name(node)!r} ({node.op}): schedule {s} does not fit: "
                         f"{'; '.join(problems)}.")


def _divisors(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def _ic_block(ic_vecs: int, oc_vecs: int, target: Target) -> int:
    """The most input-channel vectors whose weights (per position) fill half of L1."""
    per_vec = target.vector * oc_vecs * target.vector * 4
    return next(d for d in _divisors(ic_vecs) if d * per_vec <= target.l1d_bytes // 2 or d == 1)


def space(node: Node, target: Target) -> list[WinogradSchedule]:
    """The legal schedules, best guess first: m, the register tile (output-channel vectors
    by tiles, within the accumulator registers), the input-channel blocking."""
    first = default(node, target)
    c_in, c_out, h_out, w_out = _shape(node)
    oc_blocks, ic_vecs = -(-c_out // target.vector), -(-c_in // target.vector)
    points = [first]
    for m in (4, 2):
        tiles = -(-h_out // m) * -(-w_out // m)
        for oc_vecs in (2, 4, 1, 3):
            if oc_blocks % oc_vecs:
                continue
            limit = min(accumulator_limit(target, oc_vecs) // oc_vecs, tiles)
            widths = sorted({balanced_tile(tiles, limit), limit, max(1, limit // 2),
                             max(1, limit - 2)}, reverse=True)
            for tile_block in widths:
                for ic_block in sorted({ic_vecs, _ic_block(ic_vecs, oc_vecs, target)},
                                       reverse=True):
                    s = WinogradSchedule(m, oc_vecs, tile_block, ic_block)
                    if s not in points:
                        points.append(s)
    return points


def default(node: Node, target: Target) -> WinogradSchedule:
    """F(4x4, 3x3), or F(2x2, 3x3) on maps of fewer than 8 F(4) tiles (7x7: there the
    weights, T^2 C K floats, dominate and F(2)'s are 2.25x smaller). The register tile
    with the most accumulators, up to 12 tiles wide, then the most output-channel vectors:
    on resnet_l1/l2_b1 and vgg_c2_b1 (AVX-512) oc4 x 6 tiles ran 10-25% faster than
    oc2 x 12 (one output-channel group reads each transformed tile once)."""
    c_in, c_out, h_out, w_out = _shape(node)
    oc_blocks, ic_vecs = -(-c_out // target.vector), -(-c_in // target.vector)
    m = 4 if -(-h_out // 4) * -(-w_out // 4) >= 8 else 2
    tiles = -(-h_out // m) * -(-w_out // m)
    best = None
    for oc_vecs in (4, 2, 1):
        if oc_blocks % oc_vecs:
            continue
        limit = min(accumulator_limit(target, oc_vecs) // oc_vecs, 12, tiles)
        if limit >= 1 and (best is None or oc_vecs * limit > best[0] * best[1]):
            best = (oc_vecs, limit)
    oc_vecs, limit = best
    return WinogradSchedule(m, oc_vecs, balanced_tile(tiles, limit),
                            _ic_block(ic_vecs, oc_vecs, target))


def pack_winograd(w: np.ndarray, m: int, oc_vecs: int, vector: int) -> np.ndarray:
    """(K, C, 3, 3) -> U = G w G^T as (K/(oc_vecs*V) groups, T^2, C padded, oc_vecs, V),
    computed in float64, zero padded."""
    k_out, c_in = w.shape[:2]
    g = G[m]
    t = len(g)
    u = np.einsum("ak,ockl,bl->ocab", g, w.astype(np.float64), g).reshape(k_out, c_in, t * t)
    oc_blocks, ic_vecs = -(-k_out // vector), -(-c_in // vector)
    padded = np.zeros((oc_blocks * vector, ic_vecs * vector, t * t))
    padded[:k_out, :c_in] = u
    grouped = padded.reshape(oc_blocks // oc_vecs, oc_vecs, vector, ic_vecs * vector, t * t)
    return np.ascontiguousarray(grouped.transpose(0, 4, 3, 1, 2), np.float32).ravel()


def task_blocks(tile_blocks: int, oc_groups: int, per_block_bytes: int, target: Target) -> int:
    """Tile blocks per GEMM task: as many as the stack budget holds (they share each weight
    load), but enough tasks in one image to keep every core busy."""
    blocks = max(1, min(tile_blocks, MT_BYTES // per_block_bytes))
    while blocks > 1 and oc_groups * -(-tile_blocks // blocks) < 4 * target.cores:
        blocks -= 1
    return blocks


def lower_winograd(low: Lowering) -> list[Call]:
    """The input transform and the GEMM with the output transform and epilogue."""
    node, target, v = low.node, low.target, low.target.vector
    s = low.schedule
    check(node, s, target)
    x, out, n_batch = low.ins[0], low.out, low.n_batch
    _, _, _, ((top, _), (left, _)) = conv.geometry(node)
    c_in, c_out = x.channels, out.channels
    ic_vecs, oc_blocks = x.blocks, out.blocks
    t = s.m + 2
    tiles_h, tiles_w = -(-out.height // s.m), -(-out.width // s.m)
    tiles = tiles_h * tiles_w
    tile_blocks = -(-tiles // s.tile_block)
    vt = Blocked(ic_vecs * v, t * t, tile_blocks * s.tile_block, v)
    vt_buffer = low.temp("winograd_tiles", vt)
    transform = Call(node.name, spec(
        "winograd_input", ("winograd_input",), f"nchw{v}c", s,
        bytes=4 * (x.size(n_batch) + vt.size(n_batch)),
        m=s.m, win_h=out.height + 2, win_w=out.width + 2, tiles_h=tiles_h, tiles_w=tiles_w,
        ic_vecs=ic_vecs, tile_block=s.tile_block, x_batch=x.batch_stride,
        x_block=x.block_stride, x_row=x.row_stride, x_origin=x.window_origin(top, left),
        vt_batch=vt.batch_stride), (low.inputs[0], vt_buffer))

    oc_groups = oc_blocks // s.oc_vecs
    blocks = task_blocks(tile_blocks, oc_groups, 4 * s.oc_vecs * s.tile_block * t * t * v, target)
    # Consecutive tasks share either one group's weights or one band's input tiles: the
    # weights stay in L2 for every band when they fit, else keep whichever the other
    # order would stream more often.
    weight_bytes = 4 * t * t * ic_vecs * v * oc_blocks * v
    tile_tasks = -(-tile_blocks // blocks)
    oc_outer = (weight_bytes > target.l2_bytes // 2
                and oc_groups * vt.batch_stride * 4 < tile_tasks * weight_bytes)
    residual = len(node.inputs) == 2 and low.ins[1]
    res_strides = residual.strides("res") if residual else dict.fromkeys(
        ("res_batch", "res_block", "res_row", "res_origin"), 0)
    flops = 2 * n_batch * c_out * out.height * out.width * c_in * 9
    weights = Const(node.name, f"w_winograd{s.m}_oc{s.oc_vecs}", lambda p: pack_winograd(
        conv.folded(p, node)[0], s.m, s.oc_vecs, v))
    bias = Const(node.name, "b", lambda p: conv.pack_bias(conv.folded(p, node)[1], c_out, v))
    gemm = Call(node.name, spec(
        "winograd_gemm", ("winograd", *conv.op_chain(node)), f"nchw{v}c", s, flops=flops,
        bytes=4 * (vt.size(n_batch) + out.size(n_batch) + weight_bytes // 4
                   + (residual.size(n_batch) if residual else 0)),
        **activation_values(node.attrs["activation"], node.attrs.get("alpha", 0.01)),
        m=s.m, h_out=out.height, w_out=out.width, tiles_w=tiles_w, tiles=tiles,
        ic_vecs=ic_vecs, ic_lanes=min(c_in, v), oc_blocks=oc_blocks,
        last_lanes=c_out - (oc_blocks - 1) * v, residual=bool(residual),
        oc_vecs=s.oc_vecs, tile_block=s.tile_block, ic_block=s.ic_block, blocks=blocks,
        oc_outer=bool(oc_outer), vt_batch=vt.batch_stride, **out.strides("out"), **res_strides),
        (vt_buffer, weights, bias, low.output, *((low.inputs[1],) if residual else ())))
    return [transform, gemm]
