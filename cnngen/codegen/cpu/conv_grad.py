"""Backward lowering of conv1d/conv2d: the weight and bias gradients, and the data gradient.

- weight gradient (``conv2d_wgrad``): a reduction over the batch and every output pixel,
  register-tiled as output-channel vectors of dy times broadcast input scalars; parallel
  over (output-channel group, input block, kh), and over batch chunks where those are too
  few, each chunk's partial sum then added up by ``conv2d_wgrad_sum``. Depthwise convs
  have their own kernel (``depthwise2d_wgrad``), vectorised over the channel block.
- data gradient: the transposed conv of dy with the same weights, lowered by conv.py's
  ``lower_conv_transpose`` (sub-pixel phases, the depthwise kernel for depthwise convs).

The weight-gradient kernels take a ``WgradSchedule`` or ``DepthwiseWgradSchedule``
(schedule.py): explicit, else the best of ``wgrad_ranked`` / ``depthwise_wgrad_ranked``
not known to spill; ``GRAD_SPACE`` holds what the tuner searches.

The training graph fuses nothing into a conv, so the gradient of the conv's output is the
gradient of its pre-activation sum.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ...errors import InputError
from ...ir import Node, frozen
from ...schedule import (DepthwiseWgradSchedule, Schedule, WgradSchedule, accumulator_limit,
                         balanced_tile, divisors, ranked_first)
from ...target import Target
from ..kernel import Call, spec
from ..layout import Flat
from . import GradLowering, Lowering, grad_name
from .conv import (conv_transpose_halo, geometry, is_aligned, is_depthwise,
                   lower_conv_transpose)

LANES_AXIS, KW_AXIS = 0, 1
# Tasks wanted per core before the batch is split into chunks with a final sum.
TASKS_PER_CORE = 4
# Multiply-adds per output pixel and kernel row of a task (all its tiles) from which a task
# sweeping one kh reuses its dy and x enough (from L2) that the rows may split over tasks.
KH_REUSE = 32
# Independent FMA chains that keep two FMA units busy at 4 cycles' latency.
FMA_CHAINS = 8
# The partial sums of batch chunks take at most this much memory.
PARTIAL_BYTES = 8 << 20


@dataclass(frozen=True)
class WgradWorkload:
    """What the weight-gradient kernel computes, as far as scheduling cares."""

    c_in: int
    c_out: int
    groups: int
    h_out: int
    w_out: int
    k_h: int
    k_w: int
    dilation_w: int
    stride_w: int
    x_block_floats: int         # one input block of one image, halo included
    n_batch: int

    def lanes(self, v: int) -> int:
        """Input-channel lanes per block that hold channels."""
        return min(self.c_in, v)

    def axis_extent(self, axis: int, v: int) -> int:
        if axis == KW_AXIS:
            return self.k_w
        folded = self.lanes(v) == v and self.dilation_w == 1
        return self.lanes(v) * (self.k_w if folded else 1)

    def ib_span(self, oc_vecs: int, v: int) -> int:
        """Input blocks an output-channel group of ``oc_vecs`` blocks reads, at most."""
        k_group, c_group = self.c_out // self.groups, self.c_in // self.groups
        span = 1
        for ob in range(0, -(-self.c_out // v), oc_vecs):
            g_lo = ob * v // k_group
            g_hi = min(self.c_out - 1, (ob + oc_vecs) * v - 1) // k_group
            span = max(span, ((g_hi + 1) * c_group - 1) // v - g_lo * c_group // v + 1)
        return span


def wgrad_ranked(work: WgradWorkload, target: Target) -> list[WgradSchedule]:
    """Register tiles best first. A tile's score is the multiply-adds per load of its
    inner step (oc*cols / (oc + cols), capped at 2: past that the FMA units bound it) times
    the fraction of the computed products that are real (lanes past the channels, and the
    other groups' channels an output vector's input blocks hold, are computed and dropped);
    ties favour more accumulators, then fewer output vectors (more tasks)."""
    v = target.vector
    oc_blocks = -(-work.c_out // v)
    c_group = work.c_in // work.groups
    per_group = (oc_blocks // work.groups if is_aligned(work.c_in, work.c_out, work.groups, v)
                 else oc_blocks)
    scored = []
    for oc_vecs in (4, 3, 2, 1):
        if oc_vecs > per_group or per_group % oc_vecs:
            continue
        span = work.ib_span(oc_vecs, v)
        real = work.c_out * c_group / (oc_blocks * v * span * work.lanes(v))
        for axis in (LANES_AXIS, KW_AXIS):
            extent = work.axis_extent(axis, v)
            limit = max(1, accumulator_limit(target, oc_vecs) // oc_vecs)
            if axis == KW_AXIS and work.stride_w == work.dilation_w:
                # x[ow + kw] is x[(ow + 1) + (kw - 1)]: LLVM unrolls ow and keeps the
                # broadcasts for the next pixel, one register per column (AVX2's 2x5 tile
                # spilled on MNIST-1D's conv, 2x4 does not)
                limit = max(1, min(limit, accumulator_limit(target, oc_vecs) // (oc_vecs + 1)))
            cols = balanced_tile(extent, limit)
            average = extent / -(-extent // cols)
            intensity = min(2.0, oc_vecs * average / (oc_vecs + average))
            score = (round(real * intensity, 3), oc_vecs * average, -oc_vecs)
            scored.append((score, oc_vecs, cols, axis, span))
    scored.sort(key=lambda s: s[0], reverse=True)
    ranked = []
    for _, oc_vecs, cols, axis, span in scored:
        # a task's tiles of one kh cover every (lane, kw): its FMAs per output pixel
        per_kh = oc_vecs * work.lanes(v) * work.k_w
        image_bytes = 4 * (work.h_out * work.w_out * oc_vecs * v + work.x_block_floats)
        # fewer accumulators than FMA chains the core keeps busy: a second tile doubles them
        pairs = int(oc_vecs * cols < FMA_CHAINS and 2 * oc_vecs * cols
                    <= accumulator_limit(target, oc_vecs))
        ranked.append(WgradSchedule(oc_vecs, cols, axis, *_split(
            work, target, (oc_blocks // oc_vecs) * span, image_bytes, per_kh >= KH_REUSE), pairs))
    return ranked


def _split(work: WgradWorkload, target: Target, tasks: int, image_bytes: int,
           reused: bool) -> tuple[int, int]:
    """(batch chunks, kh tasks) for ``tasks`` (output-channel group, input block) tasks.

    Each task sweeps its chunk's dy and x once per tile; ``image_bytes`` of them an image.
    The kernel rows stay inside a task (its tiles of every kh then read those from L2)
    unless one kh's tiles already reuse them enough (``reused``) or the batch cannot be
    chunked finely enough for a few tasks per core. Chunks: enough for a few tasks per
    core, and few enough images per task that its sweep stays in half of L2; at most one
    per image, and partial sums of at most PARTIAL_BYTES."""
    wanted = TASKS_PER_CORE * target.cores
    most = _most_chunks(work)
    kh_tasks = work.k_h if reused or -(-wanted // tasks) > most else 1
    fit = -(-work.n_batch * image_bytes // (target.l2_bytes // 2))
    return max(1, min(most, max(-(-wanted // (tasks * kh_tasks)), fit))), kh_tasks


def _most_chunks(work: WgradWorkload) -> int:
    """Batch chunks: at most one per image, and partial sums of at most PARTIAL_BYTES."""
    w_bytes = 4 * work.c_out * work.c_in // work.groups * work.k_h * work.k_w
    return max(1, min(work.n_batch, PARTIAL_BYTES // w_bytes))


def depthwise_wgrad_ranked(work: WgradWorkload, target: Target) -> list[DepthwiseWgradSchedule]:
    """All kw taps in one tile where the registers hold them (with the dy vector and the x
    loads), else the widest balanced tile."""
    top = max(1, target.vector_registers - 4)
    tiles = sorted({balanced_tile(work.k_w, limit) for limit in range(1, min(work.k_w, top) + 1)},
                   reverse=True)
    v = target.vector
    blocks = -(-work.c_out // v)
    image_bytes = 4 * (work.h_out * work.w_out * v + work.x_block_floats)
    return [DepthwiseWgradSchedule(cols, *_split(work, target, blocks, image_bytes, False))
            for cols in tiles]


# Batch chunks the tuner tries (at most _most_chunks), besides the heuristic's.
CHUNKS = (1, 2, 4, 8, 16)


def _split_choices(work: WgradWorkload, ranked: list) -> list[tuple[int, int]]:
    """(batch chunks, kh tasks) the tuner tries: CHUNKS and the heuristic's chunks, by one
    kh task, all the kernel rows and the heuristic's."""
    most = _most_chunks(work)
    chunks = sorted({c for c in CHUNKS if c <= most} | {s.chunks for s in ranked})
    kh_tasks = sorted({1, work.k_h} | {s.kh_tasks for s in ranked})
    return [(c, k) for c in chunks for k in kh_tasks]


def wgrad_space(work: WgradWorkload, target: Target) -> list[WgradSchedule]:
    """Every weight-gradient tile that could fit, the heuristic's ranking first: output
    vectors dividing the group's (up to 4), both broadcast axes, columns while the
    accumulators, the dy vectors and a broadcast fit the registers (pairs where twice the
    accumulators do), by the batch and kernel-row splits of ``_split_choices``."""
    v, registers = target.vector, target.vector_registers
    ranked = wgrad_ranked(work, target)
    oc_blocks = -(-work.c_out // v)
    per_group = (oc_blocks // work.groups if is_aligned(work.c_in, work.c_out, work.groups, v)
                 else oc_blocks)
    points = [WgradSchedule(oc_vecs, cols, axis, chunks, kh_tasks, pairs)
              for oc_vecs in divisors(per_group, 4) for axis in (LANES_AXIS, KW_AXIS)
              for cols in range(1, min(work.axis_extent(axis, v),
                                       (registers - oc_vecs - 1) // oc_vecs) + 1)
              for pairs in ((0, 1) if 2 * oc_vecs * cols <= registers - oc_vecs - 1 else (0,))
              for chunks, kh_tasks in _split_choices(work, ranked)]
    return ranked_first(ranked, points)


def depthwise_wgrad_space(work: WgradWorkload, target: Target) -> list[DepthwiseWgradSchedule]:
    """kw taps per tile up to what the registers hold, by the splits of ``_split_choices``."""
    ranked = depthwise_wgrad_ranked(work, target)
    top = min(work.k_w, max(1, target.vector_registers - 4))
    points = [DepthwiseWgradSchedule(cols, chunks, kh_tasks) for cols in range(1, top + 1)
              for chunks, kh_tasks in _split_choices(work, ranked)]
    return ranked_first(ranked, points)


def grad_space(g: GradLowering) -> list[Schedule]:
    """The tuner's space of the layer's weight-gradient kernel (its data gradient, a
    transposed conv, keeps the heuristic's schedule)."""
    work = workload(g)
    if is_depthwise(work.c_in, work.c_out, work.groups):
        return depthwise_wgrad_space(work, g.target)
    return wgrad_space(work, g.target)


def workload(g: GradLowering) -> WgradWorkload:
    node, x, dy = g.node, g.ins[0], g.d_out
    kernel, stride, dilation, _ = geometry(node)
    return WgradWorkload(x.channels, dy.channels, node.attrs["groups"], dy.height, dy.width,
                         *kernel, dilation[1], stride[1], x.block_stride, g.n_batch)


def destinations(g: GradLowering, chunks: int, bias: bool) -> tuple[tuple, dict, list[Call]]:
    """Where the kernel stores: (its dw and db arguments, their template values, the sum
    calls). One chunk stores into the parameter gradients; several store partial sums into
    a temp, (chunks, dw floats + db floats), that sum kernels add into them."""
    node, v = g.node, g.target.vector
    w_size = 1
    for d in node.params["w"]:
        w_size *= d
    k = node.params["b"][0] if bias else 0
    dw = g.param_grad("w")
    db = g.param_grad("b") if bias else dw
    if chunks == 1:
        return (dw, db), dict(w_chunk=0, b_base=0, b_chunk=0), []
    part = g.temp("wgrad_partial", Flat(chunks * (w_size + k)))
    sums = []
    for grad, base, size in ((dw, 0, w_size), (db, w_size, k))[:1 + bias]:
        # at least 1024 floats a task (a sum task is tiny), a whole number of vectors
        span = -(-max(1024, -(-size // (TASKS_PER_CORE * g.target.cores))) // v) * v
        sums.append(Call(node.name, spec(
            "conv2d_wgrad_sum", ("wgrad_sum",), "flat", bytes=4 * size * (chunks + 1),
            size=size, chunks=chunks, chunk=w_size + k, base=base, span=span),
            (part, grad)))
    return (part, part), dict(w_chunk=w_size + k, b_base=w_size, b_chunk=w_size + k), sums


def explicit(g: GradLowering, kind: type, op: str | None = None) -> Schedule | None:
    """The lowering's explicit schedule if it is a ``kind``, checked against the layer;
    a misfit names ``op`` (default ``g``'s), the op the user wrote where ``g`` is another's
    (a transposed conv's weight gradient lowered as its adjoint conv's)."""
    s = g.schedule
    if not isinstance(s, kind):
        return None
    work, v = workload(g), g.target.vector
    oc_blocks = -(-work.c_out // v)
    per_group = oc_blocks // work.groups if is_aligned(work.c_in, work.c_out, work.groups,
                                                        v) else oc_blocks
    problems = [f"{name}={getattr(s, name)} must be >= 1" for name in ("cols", "chunks", "kh_tasks")
                if getattr(s, name) < 1]
    if s.kh_tasks > work.k_h:
        problems.append(f"kh_tasks={s.kh_tasks} must be at most the {work.k_h} kernel rows")
    if kind is WgradSchedule:
        if s.oc_vecs < 1 or per_group % s.oc_vecs:
            problems.append(f"oc_vecs={s.oc_vecs} must divide the {per_group} output-channel "
                            f"vectors per group")
        if s.axis not in (LANES_AXIS, KW_AXIS) or s.pairs not in (0, 1):
            problems.append(f"axis={s.axis} and pairs={s.pairs} must be 0 or 1")
    if problems:
        raise InputError(f"layer {g.node.name!r} ({op or g.node.op}) weight gradient: "
                         f"schedule {s} does not fit: {'; '.join(problems)}.")
    return s


def weight_grad(g: GradLowering, op: str | None = None) -> list[Call]:
    """dw and, if the layer has one, db; a misfit explicit schedule names ``op`` (see
    ``explicit``)."""
    node, v = g.node, g.target.vector
    x, dy, n_batch = g.ins[0], g.d_out, g.n_batch
    kernel, stride, dilation, ((top, _), (left, _)) = geometry(node)
    groups, c_in, c_out = node.attrs["groups"], x.channels, dy.channels
    bias = "b" in node.params
    work = workload(g)
    common = dict(h_out=dy.height, w_out=dy.width, k_h=kernel[0], k_w=kernel[1],
                  stride_h=stride[0], stride_w=stride[1], dilation_h=dilation[0],
                  dilation_w=dilation[1], bias=bias, x_batch=x.batch_stride,
                  x_block=x.block_stride, x_row=x.row_stride,
                  x_origin=x.window_origin(top, left), **dy.strides("dy"))
    flops = 2 * n_batch * c_out * dy.height * dy.width * (c_in // groups) * kernel[0] * kernel[1]
    moved = 4 * (x.size(n_batch) + dy.size(n_batch))
    if is_depthwise(c_in, c_out, groups):
        s = (explicit(g, DepthwiseWgradSchedule, op)
             or g.heuristic(depthwise_wgrad_ranked(work, g.target)))
        args, values, sums = destinations(g, s.chunks, bias)
        kernel_spec = spec(
            "depthwise2d_wgrad", ("depthwise2d_wgrad",), f"nchw{v}c", s, flops=flops, bytes=moved,
            channels=c_out, blocks=dy.blocks, cols=s.cols, chunks=s.chunks,
            tail_tiles=int(kernel[1] % s.cols > 0), kw_tail=kernel[1] % s.cols or s.cols,
            kh_tasks=s.kh_tasks, **common, **values)
        return [Call(node.name, kernel_spec, (g.inputs[0], g.grad_output, *args))] + sums
    s = explicit(g, WgradSchedule, op) or g.heuristic(wgrad_ranked(work, g.target))
    lanes = work.lanes(v)
    extent = work.axis_extent(s.axis, v)
    # the template's axis: 0 lanes (kw looped), 1 kw taps (lanes looped), 2 kw*V + lane
    axis = KW_AXIS if s.axis == KW_AXIS else 2 if extent > lanes else LANES_AXIS
    a_stride, b_n, b_stride = {LANES_AXIS: (1, kernel[1], dilation[1] * v),
                               KW_AXIS: (dilation[1] * v, lanes, 1), 2: (1, 1, 0)}[axis]
    args, values, sums = destinations(g, s.chunks, bias)
    kernel_spec = spec(
        "conv2d_wgrad", ("conv2d_wgrad",), f"nchw{v}c", s, flops=flops, bytes=moved,
        c_out=c_out, c_group=c_in // groups, k_group=c_out // groups, oc_blocks=dy.blocks,
        lanes=lanes, oc_vecs=s.oc_vecs, cols=s.cols, axis=axis, chunks=s.chunks,
        kh_tasks=s.kh_tasks, pairs=bool(s.pairs), a_n=extent, a_stride=a_stride, b_n=b_n,
        b_stride=b_stride,
        tail_tiles=int(extent % s.cols > 0), a_tail=extent % s.cols or s.cols,
        ib_span=work.ib_span(s.oc_vecs, v), **common, **values)
    return [Call(node.name, kernel_spec, (g.inputs[0], g.grad_output, *args))] + sums


def transposed_node(node: Node) -> Node:
    """The conv_transpose whose forward is this conv's data gradient: same weights (its
    (c_in, c_out/groups, *kernel) layout is the conv's), input dy, output the conv's input
    size (``output_padding`` makes up the rows the conv's stride dropped), no bias."""
    kernel, stride, dilation = node.attrs["kernel"], node.attrs["stride"], node.attrs["dilation"]
    extra = tuple(i - ((o - 1) * s - p0 - p1 + d * (k - 1) + 1)
                  for i, o, k, s, d, (p0, p1) in zip(node.in_types[0].spatial, node.out.spatial,
                                                     kernel, stride, dilation, node.attrs["padding"]))
    attrs = dict(node.attrs, filters=node.in_types[0].channels, bias=False,
                 activation="identity", output_padding=extra)
    return replace(node, op=f"conv_transpose{len(kernel)}d", inputs=(grad_name(node.name),),
                   attrs=frozen(attrs), in_types=(node.out,), out=node.in_types[0],
                   params=frozen({"w": node.params["w"]}))


def grad_output_halo(node: Node) -> tuple[int, int, int, int]:
    """The zero halo around dy that the data gradient reads in place (without it, dy is
    first copied into a temp that has it)."""
    return conv_transpose_halo(transposed_node(node))


def data_grad(g: GradLowering) -> list[Call]:
    low = Lowering(transposed_node(g.node), (g.d_out,), g.d_ins[0], g.n_batch, g.target,
                   temps=g.temps, avoid=g.avoid)
    if low.inputs[0] != g.grad_output:
        raise AssertionError(f"{g.node.name}: dy is {g.grad_output}, not {low.inputs[0]}")
    return lower_conv_transpose(low, output=g.grad_input(0), tag="dx")


def check_unfused(node: Node) -> None:
    """A conv's backward takes the layer alone: the plan applies a fused activation's
    derivative first (``training.backward_calls``) and never fuses more into a conv."""
    if node.fused or node.attrs["activation"] != "identity":
        raise AssertionError(
            f"layer {node.name!r} ({node.op}): the backward expects an unfused layer with "
            f"activation 'identity' (the training graph applies activations apart); received "
            f"activation {node.attrs['activation']!r}, fused {[n.name for n in node.fused]}")


def lower_conv_backward(g: GradLowering) -> list[Call]:
    """The calls that turn dL/d(conv output) into dL/dx (when asked) and dL/dw, dL/db."""
    node = g.node
    check_unfused(node)
    calls = data_grad(g) if g.d_ins[0] is not None else []
    if g.weight_grads:
        calls += weight_grad(g)
    return calls


BACKWARD = {"conv1d": lower_conv_backward, "conv2d": lower_conv_backward}
GRAD_HALO = {"conv1d": grad_output_halo, "conv2d": grad_output_halo}
GRAD_SPACE = {"conv1d": grad_space, "conv2d": grad_space}
