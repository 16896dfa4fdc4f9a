"""Lowering of dense (fully connected) layers to the register-tiled GEMM kernel.

    out[n, u] = act(bias[u] + sum_i w[u, i] * x[n, i])        w: (units, in), PyTorch layout

The input is a flat (N, in) tensor (``ops/dense.py`` requires rank 1), blocked as
(N, in/V, 1, 1, V), or a flatten that the plan lets dense read in place (``FlatView``):
then the weights are packed in the flattened tensor's memory order instead. The schedule picks the register tile (``unit_vecs`` output vectors x
``batch_tile`` samples); the lowering derives the task split and the reduction blocking
from it and the target's L2 size.
"""
from __future__ import annotations

import numpy as np

from ... import schedule as sched
from ..kernel import Call, Const, spec
from ..layout import Blocked, FlatView
from . import Lowering, activation_values
from .conv import pack_bias

# Batch tiles per task. The kernel takes the batch size as an argument, so this cannot
# follow the batch: two tiles (12 samples at the widest tile) share each weight slice from
# L2, and a batch of 64 still splits into 6 chunks per unit group for the cores.
TILES_PER_TASK = 2


def pack_weights(w: np.ndarray, unit_vecs: int, vector: int) -> np.ndarray:
    """(units, in) -> (unit groups, in vectors * V, unit_vecs, V), zero padded."""
    units, features = w.shape
    unit_blocks, in_blocks = -(-units // vector), -(-features // vector)
    padded = np.zeros((unit_blocks * vector, in_blocks * vector), np.float32)
    padded[:units, :features] = w
    grouped = padded.reshape(unit_blocks // unit_vecs, unit_vecs, vector, in_blocks * vector)
    return np.ascontiguousarray(grouped.transpose(0, 3, 1, 2)).ravel()


def reduction_blocks(in_blocks: int, unit_vecs: int, tiles_per_task: int, vector: int,
                     l2_bytes: int) -> int:
    """Input vectors per reduction pass: a slice of the group's weights that fits in half of L2.

    The slice is re-read by every batch tile of the task, from L2 rather than L3. Blocking
    for L1 instead measured slower: each pass ends with a store and reload of the whole
    register tile. With one tile per task nothing reuses the slice: one pass.
    """
    if tiles_per_task == 1:
        return in_blocks
    per_block = vector * unit_vecs * vector * 4
    return max(1, min(in_blocks, l2_bytes // 2 // per_block))


def in_memory_order(w: np.ndarray, x: FlatView) -> np.ndarray:
    """(units, features) weights as (units, slots): each feature's column moved to its
    slot in the flattened source, zero at the halo and padding lanes."""
    spread = np.zeros((w.shape[0], x.slots), w.dtype)
    spread[:, x.slot_of_features()] = w
    return spread


def input_values(x: Blocked | FlatView, vector: int) -> dict:
    """Template values of the dense input: a flat (N, in) tensor, or a flatten read in place."""
    if isinstance(x, FlatView):
        s = x.source
        return dict(in_blocks=x.slots // vector, x_batch=s.batch_stride, x_block=vector,
                    x_origin=s.block_offset * s.block_stride)
    return dict(in_blocks=x.blocks, x_batch=x.batch_stride, x_block=x.block_stride,
                x_origin=x.origin)


def lower_dense(low: Lowering) -> list[Call]:
    node, x, out, v = low.node, low.ins[0], low.out, low.target.vector
    n_batch, units, features = low.n_batch, out.channels, x.channels
    inputs = input_values(x, v)
    in_blocks = inputs["in_blocks"]
    s = low.schedule or low.heuristic(sched.dense_ranked(units, low.target))
    if out.blocks % s.unit_vecs:
        raise ValueError(f"layer {node.name!r} (dense): schedule unit_vecs={s.unit_vecs} must "
                         f"divide the {out.blocks} output vectors of {units} units")
    k_blocks = reduction_blocks(in_blocks, s.unit_vecs, TILES_PER_TASK, v, low.target.l2_bytes)
    act = node.attrs["activation"]
    ops = ("dense",) + ((act,) if act != "identity" else ())
    if isinstance(x, FlatView):
        weights = Const(node.name, f"w_u{s.unit_vecs}_flat",
                        lambda p, u=s.unit_vecs: pack_weights(in_memory_order(p["w"], x), u, v))
    else:
        weights = Const(node.name, f"w_u{s.unit_vecs}",
                        lambda p, u=s.unit_vecs: pack_weights(p["w"], u, v))
    bias = Const(node.name, "b", lambda p: pack_bias(p.get("b"), units, v))
    kernel = spec(
        "dense", ops, f"nc{v}c", s, flops=2 * n_batch * units * features,
        bytes=4 * (x.size(n_batch) + out.size(n_batch) + out.blocks * v * in_blocks * v),
        **activation_values(act), **inputs,
        unit_blocks=out.blocks, unit_vecs=s.unit_vecs, last_lanes=units - (out.blocks - 1) * v,
        batch_tile=s.batch_tile, k_blocks=k_blocks, tiles_per_task=TILES_PER_TASK,
        out_batch=out.batch_stride, out_block=out.block_stride, out_origin=out.origin)
    return [Call(node.name, kernel, (low.inputs[0], weights, bias, low.output))]


def dense_space(low: Lowering) -> list[sched.Schedule]:
    return sched.dense_space(low.out.channels, low.target)


LOWER = {"dense": lower_dense}
SPACE = {"dense": dense_space}
