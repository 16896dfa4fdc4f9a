"""Backward lowering of dense (fully connected) layers.

    dx[n, i] = sum_u dy[n, u] * w[u, i]          the forward GEMM with w transposed
    dw[u, i] = sum_n dy[n, u] * x[n, i]          dense_wgrad: a reduction over the batch
    db[u]    = sum_n dy[n, u]

In the training graph a dense node's activation is "identity" (its activation is a layer
of its own), so dy is the gradient of the GEMM's output. The input is a flat (N, in)
tensor, blocked as (N, in/V, 1, 1, V).

The data gradient reuses the forward kernel (``dense.lower_dense``): a dense layer of
``in`` units over ``units`` features, whose weights are w transposed, packed as a constant
of their own, without bias. The weight gradient is ``dense_wgrad``: a register tile of unit
vectors of dy by broadcast features of x, parallel over (unit group, input block) tasks;
where those are too few for the cores it also splits the batch into slices, each writing
partial sums into a scratch buffer, and ``dense_wgrad_sum`` adds them into dw and db. Its
schedule is a ``DenseWgradSchedule`` (tile and slices): explicit, else the best of
``wgrad_ranked`` not known to spill; ``GRAD_SPACE`` holds what the tuner searches.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ...errors import InputError
from ...schedule import DenseWgradSchedule, divisors, ranked_first
from ..kernel import Call, Const, spec
from ..layout import Blocked, Flat
from . import GradLowering, Lowering
from .dense import lower_dense, pack_weights

# Batch slices are added only where (unit group, input block) tasks are fewer than this
# many per core, each slice reduces at least SPLIT_MIN_SAMPLES samples, and the GEMM is
# big enough that a second launch (the final sum) pays for itself.
TASKS_PER_CORE = 2
SPLIT_MIN_SAMPLES = 16
SPLIT_MIN_FLOPS = 1_000_000
# Values of dw per task of the final sum (a multiple of every vector width).
SUM_CHUNK = 4096


def wgrad_tiles(unit_blocks: int, vector: int, registers: int) -> list[tuple[int, int]]:
    """(unit vectors, features) of the weight-gradient register tiles, best first.

    Every tile whose accumulators, its unit-vector loads and one broadcast fit in the
    registers (28 of AVX-512's 32, as the forward tiles; 15 of AVX2's 16), unit vectors
    dividing the layer's (up to 4), features dividing V; the most accumulators first, then
    the fewest loads per FMA (unit vectors + features), then more unit vectors."""
    budget = 28 if registers >= 32 else registers - 1
    tiles = [(unit_vecs, in_tile) for unit_vecs in reversed(divisors(unit_blocks, 4))
             for in_tile in divisors(vector) if unit_vecs * in_tile + unit_vecs + 1 <= budget]
    return sorted(tiles, key=lambda t: (t[0] * t[1], -(t[0] + t[1])), reverse=True)


def batch_splits(tasks: int, n_batch: int, cores: int, flops: int) -> int:
    """Batch slices of the weight gradient: enough tasks for every core, where it pays."""
    want = TASKS_PER_CORE * cores
    if tasks >= want or flops < SPLIT_MIN_FLOPS:
        return 1
    return max(1, min(-(-want // tasks), n_batch // SPLIT_MIN_SAMPLES))


def wgrad_ranked(g: GradLowering) -> list[DenseWgradSchedule]:
    """The layer's weight-gradient schedules best first: ``wgrad_tiles``, each with the
    batch slices ``batch_splits`` gives its tasks."""
    x, dy, v = g.ins[0], g.d_out, g.target.vector
    flops = 2 * g.n_batch * dy.channels * x.channels
    return [DenseWgradSchedule(unit_vecs, in_tile, batch_splits(
                dy.blocks // unit_vecs * x.blocks, g.n_batch, g.target.cores, flops))
            for unit_vecs, in_tile in wgrad_tiles(dy.blocks, v, g.target.vector_registers)]


# Batch slices the tuner tries (at most one per sample), besides the heuristic's.
SPLITS = (1, 2, 4, 8)


def grad_space(g: GradLowering) -> list[DenseWgradSchedule]:
    """Every weight-gradient tile that could fit the registers (unit vectors dividing the
    layer's, up to 4, by features dividing V) by the batch slices of SPLITS, the
    heuristic's ranking first."""
    x, dy, v, registers = g.ins[0], g.d_out, g.target.vector, g.target.vector_registers
    ranked = wgrad_ranked(g)
    splits = sorted({s for s in SPLITS if s <= g.n_batch} | {s.splits for s in ranked})
    points = [DenseWgradSchedule(unit_vecs, in_tile, n)
              for unit_vecs in divisors(dy.blocks, 4) for in_tile in divisors(v)
              if unit_vecs * in_tile + unit_vecs + 1 <= registers for n in splits]
    return ranked_first(ranked, points)


def explicit(g: GradLowering) -> DenseWgradSchedule | None:
    """The lowering's explicit schedule if it is a DenseWgradSchedule, checked against the
    layer."""
    s, v, unit_blocks = g.schedule, g.target.vector, g.d_out.blocks
    if not isinstance(s, DenseWgradSchedule):
        return None
    problems = []
    if s.unit_vecs < 1 or unit_blocks % s.unit_vecs:
        problems.append(f"unit_vecs={s.unit_vecs} must divide the {unit_blocks} unit vectors")
    if s.in_tile < 1 or v % s.in_tile:
        problems.append(f"in_tile={s.in_tile} must divide the vector width {v}")
    if s.splits < 1:
        problems.append(f"splits={s.splits} must be >= 1")
    if problems:
        raise InputError(f"layer {g.node.name!r} (dense) weight gradient: schedule {s} does "
                         f"not fit: {'; '.join(problems)}.")
    return s


def lower_dense_grad(g: GradLowering, splits: int | None = None) -> list[Call]:
    """The calls of a dense layer's backward (``splits`` forces the batch slices of the
    weight gradient; by default its schedule's)."""
    node = g.node
    if node.attrs["activation"] != "identity":
        raise ValueError(f"layer {node.name!r} (dense): the training graph keeps activations "
                         f"as layers of their own; received activation "
                         f"{node.attrs['activation']!r} fused into the dense node")
    if not isinstance(g.ins[0], Blocked):
        raise ValueError(f"layer {node.name!r} (dense): backward needs a flat blocked input; "
                         f"received {g.ins[0]}")
    calls = []
    if g.d_ins[0] is not None:
        calls += data_grad(g)
    if g.weight_grads:
        calls += weight_grad(g, splits)
    return calls


def data_grad(g: GradLowering) -> list[Call]:
    """dx = dy . w: the forward dense kernel of ``in`` units over ``units`` features."""
    node, v = g.node, g.target.vector
    low = Lowering(node, (g.d_out,), g.d_ins[0], g.n_batch, g.target, avoid=g.avoid)
    [call] = lower_dense(low)
    unit_vecs = dict(call.kernel.values)["unit_vecs"]
    features = g.d_ins[0].channels
    w_t = Const(node.name, f"w_t_u{unit_vecs}",
                lambda p, u=unit_vecs: pack_weights(np.asarray(p["w"]).T, u, v))
    no_bias = Const(node.name, f"zero_bias_{features}",
                    lambda p: np.zeros(-(-features // v) * v, np.float32))
    kernel = dataclasses.replace(call.kernel, ops=("dense_grad_input",))
    return [Call(node.name, kernel, (g.grad_output, w_t, no_bias, g.grad_input(0)))]


def weight_grad(g: GradLowering, splits: int | None) -> list[Call]:
    """dw = dy^T . x and db = sum_n dy: ``dense_wgrad``, and ``dense_wgrad_sum`` after it
    when the batch is split."""
    node, x, dy, v = g.node, g.ins[0], g.d_out, g.target.vector
    units, features, n_batch = dy.channels, x.channels, g.n_batch
    has_bias = "b" in node.params
    s = explicit(g) or g.heuristic(wgrad_ranked(g))
    if splits is not None:
        s = dataclasses.replace(s, splits=splits)
    unit_vecs, in_tile, splits = s.unit_vecs, s.in_tile, s.splits
    flops = 2 * n_batch * units * features
    w_size = units * features
    dw, db = g.param_grad("w"), g.param_grad("b") if has_bias else None
    if splits > 1:
        partials = g.temp("wgrad_partials", Flat(splits * (w_size + units)))
        outputs, db_origin = (partials, partials), splits * w_size
    else:
        outputs, db_origin = (dw, db) if has_bias else (dw,), 0
    kernel = spec(
        "dense_wgrad", ("dense_wgrad",), f"nc{v}c", s, flops=flops + n_batch * units,
        bytes=4 * (dy.size(n_batch) + x.size(n_batch) + splits * (w_size + units)),
        units=units, features=features, unit_blocks=dy.blocks, in_blocks=x.blocks,
        last_units=units - (dy.blocks - 1) * v, last_in=features - (x.blocks - 1) * v,
        has_bias=has_bias, unit_vecs=unit_vecs, in_tile=in_tile, splits=splits,
        dy_batch=dy.batch_stride, dy_block=dy.block_stride, dy_origin=dy.origin,
        x_batch=x.batch_stride, x_block=x.block_stride, x_origin=x.origin,
        dw_split=w_size, db_origin=db_origin, db_split=units)
    calls = [Call(node.name, kernel, (g.grad_output, g.inputs[0], *outputs))]
    if splits > 1:
        total = spec("dense_wgrad_sum", ("dense_wgrad_sum",), "flat",
                     flops=splits * (w_size + units),
                     bytes=4 * (splits + 1) * (w_size + units), splits=splits, w_size=w_size,
                     units=units, db_origin=db_origin, has_bias=has_bias, chunk=SUM_CHUNK)
        calls.append(Call(node.name, total, (partials, dw) + ((db,) if has_bias else ())))
    return calls


BACKWARD = {"dense": lower_dense_grad}
GRAD_SPACE = {"dense": grad_space}
