"""How a kernel runs: small frozen values, one kind per kernel family, and their defaults.

A schedule never changes what a kernel computes, only how: the register tile, the
reduction blocking, the parallel task split. ``default(workload, target)`` is the
heuristic; an explicit schedule or a tuning-database record takes precedence over it.
``str(schedule)`` is the compact form used in kernel names (``oc2_ow14_ic4_rows1``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from .target import Target


@dataclass(frozen=True)
class Schedule:
    def __str__(self) -> str:
        return "_".join(f"{f.metadata.get('short', f.name)}{getattr(self, f.name)}"
                        for f in fields(self))


def _knob(short: str):
    return field(metadata={"short": short})


@dataclass(frozen=True)
class ConvSchedule(Schedule):
    """Direct convolution on the blocked layout.

    ``oc_vecs`` x ``ow_tile`` accumulators form the register tile (output-channel vectors by
    output pixels of one row). ``ic_block`` input-channel vectors are reduced per pass over
    a row, so that their weights stay in L1 while the row's tiles reuse them. A parallel
    task is ``rows`` output rows of one (image, output-channel group).
    """

    oc_vecs: int = _knob("oc")
    ow_tile: int = _knob("ow")
    ic_block: int = _knob("ic")
    rows: int = _knob("rows")


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


SCHEDULES = {cls.__name__: cls for cls in (ConvSchedule, DepthwiseSchedule, DenseSchedule,
                                           WinogradSchedule)}


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
    values = {k: v for k, v in data.items() if k != "kind"}
    if set(values) != names or not all(isinstance(v, int) and not isinstance(v, bool)
                                       for v in values.values()):
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
    """Accumulators that fit the registers beside ``weight_vectors`` weights and the one
    broadcast input they share. A tile one larger spills inside the FMA loop: oc4_ow7
    (28 + 4 + 1 = 33 zmm) ran 1.10 ms on resnet_l4_b1's shape and 1.52 ms with a residual
    epilogue, against 1.01 and 1.04 ms for oc2_ow7."""
    return target.vector_registers - weight_vectors - 1


def conv_default(work: ConvWorkload, target: Target) -> ConvSchedule:
    """The register tile with the most accumulators per average tile of a row (a tail tile
    counts for what it holds), favouring two output vectors and wide pixel tiles."""
    v = target.vector
    oc_blocks = -(-work.c_out // v)
    best = None
    for oc_vecs in (4, 3, 2, 1):
        if oc_vecs > oc_blocks or oc_blocks % oc_vecs:
            continue
        limit = min(accumulator_limit(target, oc_vecs) // oc_vecs, work.w_out)
        ow_tile = balanced_tile(work.w_out, limit)
        tiles = -(-work.w_out // ow_tile)
        score = (oc_vecs * work.w_out / tiles, oc_vecs == 2, ow_tile)
        if best is None or score > best[0]:
            best = (score, oc_vecs, ow_tile)
    _, oc_vecs, ow_tile = best
    ic_vecs = -(-work.c_in // v)
    # Weights of one ic block: ic_block*V input channels x k_h*k_w x oc_vecs vectors.
    per_vec = v * work.k_h * work.k_w * oc_vecs * v * 4
    ic_block = max(1, min(ic_vecs, target.l1d_bytes // 2 // per_vec))
    while ic_vecs % ic_block:
        ic_block -= 1
    # rows per task: enough tasks for the cores in one image (the kernel serves every
    # batch), and enough work per task that launching it stays a small part of its time
    groups = oc_blocks // oc_vecs
    row_flops = 2 * work.w_out * oc_vecs * v * work.c_in * work.k_h * work.k_w
    rows = 1
    while rows < 8 and (groups * (-(-work.h_out // (rows * 2))) >= _tasks_wanted(target)
                        or rows * row_flops < MIN_TASK_FLOPS):
        rows *= 2
    return ConvSchedule(oc_vecs, ow_tile, ic_block, rows)


def balanced_tile(extent: int, limit: int) -> int:
    """The tile width that covers ``extent`` in as few tiles as ``limit`` allows, evenly."""
    limit = max(1, min(limit, extent))
    return -(-extent // -(-extent // limit))


def depthwise_default(work: ConvWorkload, target: Target) -> DepthwiseSchedule:
    """Pixel tiles of 14 (stride 1, 3x3, 32 registers) or 8: the accumulators, the row of
    inputs they share across kw and the weights then fit the vector registers (measured: a
    19-pixel tile spills and runs 1.6x slower on effnet_dw_b1 with AVX-512; with AVX2's 16
    registers a 14-pixel tile ran 0.53-0.56 ms on a 96x112x112 3x3 layer, 8 pixels 0.47)."""
    wide = work.stride_w == 1 and work.k_w <= 3 and target.vector_registers >= 32
    limit = 14 if wide else 8
    return DepthwiseSchedule(balanced_tile(work.w_out, limit), 1)


def dense_default(units: int, target: Target) -> DenseSchedule:
    """Up to 4 unit vectors by up to 6 samples; the kernel serves every batch size (a
    smaller batch runs one-sample tiles)."""
    unit_blocks = -(-units // target.vector)
    unit_vecs = next(u for u in (4, 3, 2, 1) if unit_blocks % u == 0)
    batch_tile = min(accumulator_limit(target, unit_vecs) // unit_vecs, 6)
    return DenseSchedule(unit_vecs, batch_tile)
