"""How a kernel runs: small frozen values, one kind per kernel family, and their defaults.

A schedule never changes what a kernel computes, only how: the register tile, the
reduction blocking, the parallel task split, the algorithm (a WinogradSchedule). The
heuristic ranks the tiles of a kernel (``conv_ranked``, ``depthwise_ranked``,
``dense_ranked``; the backward kernels' rankings live beside their lowerings, which know
their workloads): the first is the default, and the next is taken when a kernel's machine
code spills. An explicit schedule or a tuning-database record takes precedence over it.
``str(schedule)`` is the compact form used in kernel names (``oc2_ow14_ic4_rows1``).
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields

from .target import Target


@dataclass(frozen=True)
class Schedule:
    def __str__(self) -> str:
        """``oc2_ow14_ic4_rows1``: every knob, except one left at its default (a knob added
        later has one, so the names of the kernels that do not use it stay as they were)."""
        return "_".join(f"{f.metadata.get('short', f.name)}{getattr(self, f.name)}"
                        for f in fields(self) if getattr(self, f.name) != f.default)


def _knob(short: str, default=MISSING):
    return field(default=default, metadata={"short": short})


@dataclass(frozen=True)
class ConvSchedule(Schedule):
    """Direct convolution on the blocked layout.

    ``oc_vecs`` x ``ow_tile`` accumulators form the register tile (output-channel vectors by
    output pixels of one row). ``ic_block`` input-channel vectors are reduced per pass over
    a row, so that their weights stay in L1 while the row's tiles reuse them. A parallel
    task is ``rows`` output rows of one (image, output-channel group).

    ``order`` is the loop order when ``ic_block`` is less than the input vectors: 0 runs
    the ic blocks outermost (each block's weights reused by every tile of the row; the
    partial sums go through memory between blocks), 1 the tiles outermost (each tile's
    whole reduction in registers; the row's weights streamed once per tile).
    """

    oc_vecs: int = _knob("oc")
    ow_tile: int = _knob("ow")
    ic_block: int = _knob("ic")
    rows: int = _knob("rows")
    order: int = _knob("lo", 0)


@dataclass(frozen=True)
class DepthwiseSchedule(Schedule):
    """Depthwise convolution vectorised over one channel block; ``ow_tile`` pixels per tile."""

    ow_tile: int = _knob("ow")
    rows: int = _knob("rows")


@dataclass(frozen=True)
class DenseSchedule(Schedule):
    """GEMM microkernel: ``unit_vecs`` output vectors by ``batch_tile`` samples."""

    unit_vecs: int = _knob("u")
    batch_tile: int = _knob("n")


@dataclass(frozen=True)
class WinogradSchedule(Schedule):
    """Winograd F(m x m, 3 x 3) for stride-1 3x3 convolutions (``m`` = 2 or 4).

    The input is cut into overlapping (m + 2)^2 tiles, each transformed; per transform
    position the tiles are multiplied with the weights transformed once at pack time (a GEMM
    whose register tile is ``oc_vecs`` output-channel vectors by ``tile_block`` tiles,
    reducing ``ic_block`` input-channel vectors per pass); the products are transformed back
    to m x m output pixels, with the epilogue (bias, activation, residual) on the way out.
    """

    m: int = _knob("m")
    oc_vecs: int = _knob("oc")
    tile_block: int = _knob("t")
    ic_block: int = _knob("ic")


@dataclass(frozen=True)
class WgradSchedule(Schedule):
    """The conv weight-gradient kernel: an ``oc_vecs`` x ``cols`` register tile (output-channel
    vectors by broadcast inputs along ``axis``: 0 the input-channel lanes of a block, with
    the kw taps folded in behind them where all V lanes are channels and dilation is 1;
    1 the kw taps), the batch summed in ``chunks`` that run as separate tasks, the
    kernel rows split over ``kh_tasks`` tasks (1: each task sweeps every kh), and with
    ``pairs`` 1 the even and odd output columns summed in two tiles."""

    oc_vecs: int = _knob("oc")
    cols: int = _knob("c")
    axis: int = _knob("ax")
    chunks: int = _knob("ch")
    kh_tasks: int = _knob("kh")
    pairs: int = _knob("p")


@dataclass(frozen=True)
class DepthwiseWgradSchedule(Schedule):
    """The depthwise weight-gradient kernel: ``cols`` kw taps per tile, the batch in
    ``chunks``, the kernel rows over ``kh_tasks`` tasks."""

    cols: int = _knob("c")
    chunks: int = _knob("ch")
    kh_tasks: int = _knob("kh")


@dataclass(frozen=True)
class DenseWgradSchedule(Schedule):
    """The dense weight-gradient kernel: ``unit_vecs`` unit vectors of dy by ``in_tile``
    broadcast features of x (``in_tile`` divides V), the batch in ``splits`` slices that
    run as separate tasks and are summed by a second kernel."""

    unit_vecs: int = _knob("u")
    in_tile: int = _knob("i")
    splits: int = _knob("sp")


# Ops whose kernels take a schedule (the first op of a fused kernel).
TUNABLE_OPS = ("conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d", "dense")

SCHEDULES = {cls.__name__: cls for cls in (ConvSchedule, DepthwiseSchedule, DenseSchedule,
                                           WinogradSchedule, WgradSchedule,
                                           DepthwiseWgradSchedule, DenseWgradSchedule)}


def to_dict(schedule: Schedule) -> dict:
    """``{"kind": "ConvSchedule", "oc_vecs": 2, ...}``: plain JSON, for records and workers."""
    return {"kind": type(schedule).__name__,
            **{f.name: getattr(schedule, f.name) for f in fields(schedule)}}


def from_dict(data: dict) -> Schedule:
    """The schedule ``to_dict`` gave; ValueError naming what does not fit."""
    kind = SCHEDULES.get(data.get("kind")) if isinstance(data, dict) else None
    if kind is None:
        raise ValueError(f"schedule: expected a dict with 'kind' one of {sorted(SCHEDULES)}; "
                         f"received {data!r}")
    names = {f.name for f in fields(kind)}
    required = {f.name for f in fields(kind) if f.default is MISSING}
    values = {k: v for k, v in data.items() if k != "kind"}
    if not required <= set(values) <= names or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in values.values()):
        raise ValueError(f"schedule {data!r}: a {kind.__name__} takes the integers "
                         f"{sorted(names)}")
    return kind(**values)


@dataclass(frozen=True)
class ConvWorkload:
    """What a conv kernel computes, as far as scheduling cares (channel counts per group)."""

    c_in: int
    c_out: int
    h_out: int
    w_out: int
    k_h: int
    k_w: int
    stride_w: int = 1
    depthwise: bool = False


# Multiply-adds (x2) below which a conv task is mostly its own set-up: LeNet's first conv
# at batch 64 ran 6% slower in one-row tasks (1792 of them) than in 8-row tasks.
MIN_TASK_FLOPS = 256_000


def _tasks_wanted(target: Target) -> int:
    return 8 * target.cores


def accumulator_limit(target: Target, weight_vectors: int) -> int:
    """Accumulators that fit the registers beside ``weight_vectors`` weights, the broadcast
    input they share and one spare. The spare is for LLVM, which unrolls the lane loop and
    hoists the next broadcast: with AVX2's 16 ymm, oc1_ow14 (14 + 1 + 1) spilled inside the
    FMA loop on a Zen 3 and ran at half of oneDNN's speed, while oc2_ow6 compiled clean.
    With AVX-512's 32 zmm the rule allows oc2_ow14 and oc4_ow6; oc4_ow7 (28 + 4 + 1 = 33)
    ran 1.10 ms on resnet_l4_b1's shape against 1.01 ms for oc2_ow7. The spill check
    (codegen/spills.py) has the last word: a heuristic tile that spills is replaced."""
    return target.vector_registers - weight_vectors - 2


def conv_ranked(work: ConvWorkload, target: Target) -> list[ConvSchedule]:
    """Register tiles best first: the most accumulators per average tile of a row (a tail
    tile counts for what it holds), favouring two output vectors and wide pixel tiles; each
    with its ic blocking and rows per task. The first is the default; the others are what
    the default falls back to when the first spills, in order."""
    v = target.vector
    oc_blocks = -(-work.c_out // v)
    scored = set()
    for oc_vecs in (4, 3, 2, 1):
        if oc_vecs > oc_blocks or oc_blocks % oc_vecs:
            continue
        top = min(max(1, accumulator_limit(target, oc_vecs) // oc_vecs), work.w_out)
        for ow_tile in {balanced_tile(work.w_out, limit) for limit in range(1, top + 1)}:
            tiles = -(-work.w_out // ow_tile)
            scored.add(((oc_vecs * work.w_out / tiles, oc_vecs == 2, ow_tile), oc_vecs))
    return [_conv_schedule(work, target, oc_vecs, score[2])
            for score, oc_vecs in sorted(scored, reverse=True)]


def _conv_schedule(work: ConvWorkload, target: Target, oc_vecs: int, ow_tile: int) -> ConvSchedule:
    """The tile ``oc_vecs`` x ``ow_tile`` with the ic blocking and rows per task that suit it,
    tiles outermost when the reduction takes several ic blocks: each tile's sum then stays
    in registers. Measured head to head (5 trials each, Zen 5): AVX-512 resnet_l4_b1
    0.541 -> 0.467 ms, nin_1x1_b1 0.244 -> 0.220, resnet_l3_b1/b16 2-3% faster, vgg_c2 even;
    AVX2 (emulated) within 1% either way on four rows, resnet_l4 3% faster."""
    v = target.vector
    ic_vecs = -(-work.c_in // v)
    # Weights of one ic block: ic_block*V input channels x k_h*k_w x oc_vecs vectors.
    per_vec = v * work.k_h * work.k_w * oc_vecs * v * 4
    ic_block = max(1, min(ic_vecs, target.l1d_bytes // 2 // per_vec))
    while ic_vecs % ic_block:
        ic_block -= 1
    return ConvSchedule(oc_vecs, ow_tile, ic_block, _rows(work, target, oc_vecs),
                        int(ic_block < ic_vecs))


def _rows(work: ConvWorkload, target: Target, oc_vecs: int) -> int:
    """Rows per task: enough tasks for the cores in one image (the kernel serves every
    batch), and enough work per task that launching it stays a small part of its time."""
    v = target.vector
    groups = -(-work.c_out // v) // oc_vecs
    row_flops = 2 * work.w_out * oc_vecs * v * work.c_in * work.k_h * work.k_w
    rows = 1
    while rows < 8 and (groups * (-(-work.h_out // (rows * 2))) >= _tasks_wanted(target)
                        or rows * row_flops < MIN_TASK_FLOPS):
        rows *= 2
    return rows


def balanced_tile(extent: int, limit: int) -> int:
    """The tile width that covers ``extent`` in as few tiles as ``limit`` allows, evenly."""
    limit = max(1, min(limit, extent))
    return -(-extent // -(-extent // limit))


def depthwise_ranked(work: ConvWorkload, target: Target) -> list[DepthwiseSchedule]:
    """Pixel tiles best first, from 14 (stride 1, 3x3, 32 registers) or 8 down: the
    accumulators, the row of inputs they share across kw and the weights then fit the vector
    registers (measured: a 19-pixel tile spills and runs 1.6x slower on effnet_dw_b1 with
    AVX-512; with AVX2's 16 registers a 14-pixel tile ran 0.53-0.56 ms on a 96x112x112 3x3
    layer, 8 pixels 0.47)."""
    wide = work.stride_w == 1 and work.k_w <= 3 and target.vector_registers >= 32
    top = 14 if wide else 8
    tiles = sorted({balanced_tile(work.w_out, limit) for limit in range(1, top + 1)}, reverse=True)
    return [DepthwiseSchedule(ow_tile, 1) for ow_tile in tiles]


def dense_ranked(units: int, target: Target) -> list[DenseSchedule]:
    """GEMM tiles best first: up to 4 unit vectors (the most that divide the output
    vectors) by up to 6 samples, then fewer samples, then fewer unit vectors. The kernel
    serves every batch size (a smaller batch runs one-sample tiles)."""
    unit_blocks = -(-units // target.vector)
    ranked = []
    for unit_vecs in (u for u in (4, 3, 2, 1) if unit_blocks % u == 0):
        top = max(1, min(accumulator_limit(target, unit_vecs) // unit_vecs, 6))
        ranked += [DenseSchedule(unit_vecs, n) for n in range(top, 0, -1)]
    return ranked


# Rows per parallel task the tuner tries.
TASK_ROWS = (1, 2, 4, 8)


def divisors(n: int, most: int | None = None) -> list[int]:
    return [d for d in range(1, (n if most is None else min(n, most)) + 1) if n % d == 0]


def ranked_first(ranked: list[Schedule], points: list[Schedule]) -> list[Schedule]:
    """``points`` with the heuristic's ranking first (search strategies read it that way)."""
    legal = set(points)
    first = list(dict.fromkeys(s for s in ranked if s in legal))
    taken = set(first)
    return first + [s for s in points if s not in taken]


def conv_space(work: ConvWorkload, target: Target) -> list[ConvSchedule]:
    """Every legal direct-conv schedule whose register tile could fit: up to 4 output-channel
    vectors dividing the output vectors, ow tiles while accumulators + weights + the
    broadcast fit the registers (a larger tile always spills), ic blocks dividing the input
    vectors, the task rows of TASK_ROWS, and both loop orders where they differ (an ic block
    smaller than the input); the heuristic's ranking first."""
    v = target.vector
    ic_vecs = -(-work.c_in // v)
    points = [ConvSchedule(oc_vecs, ow_tile, ic_block, rows, order)
              for oc_vecs in divisors(-(-work.c_out // v), 4)
              for ow_tile in range(1, min(work.w_out, (target.vector_registers - oc_vecs - 1)
                                          // oc_vecs) + 1)
              for ic_block in divisors(ic_vecs) for rows in TASK_ROWS
              for order in ((0, 1) if ic_block < ic_vecs else (0,))]
    return ranked_first(conv_ranked(work, target), points)


def depthwise_space(work: ConvWorkload, target: Target) -> list[DepthwiseSchedule]:
    """Pixel tiles up to what the registers could hold, by the task rows of TASK_ROWS."""
    top = min(work.w_out, target.vector_registers - work.k_h * work.k_w // 2)
    points = [DepthwiseSchedule(ow_tile, rows) for ow_tile in range(1, max(1, top) + 1)
              for rows in TASK_ROWS]
    return ranked_first(depthwise_ranked(work, target), points)


def dense_space(units: int, target: Target) -> list[DenseSchedule]:
    """Unit vectors dividing the output vectors (up to 4) by sample tiles that could fit."""
    points = [DenseSchedule(unit_vecs, batch_tile)
              for unit_vecs in divisors(-(-units // target.vector), 4)
              for batch_tile in range(1, min(8, (target.vector_registers - unit_vecs - 1)
                                            // unit_vecs) + 1)]
    return ranked_first(dense_ranked(units, target), points)
