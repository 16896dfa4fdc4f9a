"""Lowering of the training losses: one fused kernel per loss, from the network output to
its gradient, the per-sample losses and (for classification) the per-sample hits.

    softmax_cross_entropy: L = mean over samples and pixels of -log softmax(y)[label]
    mse:                   L = mean over every element of (y - t)**2

Both follow ``ops/loss.value_and_grad``: the gradient is of the batch's mean (divided by
the count, which the kernel takes from its batch argument, so one kernel serves every
batch size), and the spec's L2 term is the optimizer's, not the loss kernel's.

Buffers (``LOSS_TARGET``, ``LOSS_VALUES``, ``LOSS_CORRECT``):
- the network output ``out_name`` (read), in its Blocked layout ``out``;
- ``loss:target``, in ``target_layout(op, out_type, vector)``: cross-entropy labels as
  float32 integers, one per sample and pixel (``Flat(H*W, per_sample=True)``); for mse the
  targets in the output's blocked layout without halo (padding lanes are ignored);
- ``grad_name(out_name)``: dL/d(output), written in ``d_out`` (default ``out``), every
  real channel of the interior, padding lanes 0;
- ``loss:values``: ``Flat(1, per_sample=True)``, each sample's loss (its mean over pixels,
  or over elements for mse): the batch's loss is the mean of these;
- ``loss:correct`` (cross-entropy only): ``Flat(1, per_sample=True)``, 1.0 where the
  argmax channel (the first maximum) is the label, 0.0 else; for a spatial output the
  fraction of the sample's pixels that are right.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...ir import TensorType
from ...target import Target
from ..kernel import Buffer, Call, Const, spec
from ..layout import Blocked, Flat
from . import grad_name
from .elementwise import MASKED

LOSS_TARGET, LOSS_VALUES, LOSS_CORRECT = "loss:target", "loss:values", "loss:correct"
LAYER = "loss"                # the layer name of the loss calls and their constants
# A task covers whole samples, at least this many vectors of the output between them.
TASK_VECTORS = 256


@dataclass
class LossLowering:
    """What a loss lowering needs: the loss op, the network output's name and layout, the
    batch size and the target; ``d_out`` is the gradient's layout when it differs from
    the output's."""

    op: str
    out_name: str
    out: Blocked
    n_batch: int
    target: Target
    d_out: Blocked | None = None

    @property
    def output(self) -> Buffer:
        return Buffer(self.out_name)

    @property
    def grad_output(self) -> Buffer:
        return Buffer(grad_name(self.out_name))

    @property
    def grad_layout(self) -> Blocked:
        return self.d_out or self.out


def target_layout(op: str, out_type: TensorType, vector: int) -> Flat | Blocked:
    """The layout of ``loss:target`` for a network output of type ``out_type``."""
    if op == "softmax_cross_entropy":
        return Flat(math.prod(out_type.spatial), per_sample=True)
    if op == "mse":
        return Blocked.of(out_type, vector)
    raise ValueError(f"no generated loss {op!r}; expected one of {sorted(LOSS)}")


def samples_per_task(out: Blocked) -> int:
    """Whole samples per task: together at least TASK_VECTORS vectors of the output."""
    return max(1, -(-TASK_VECTORS // (out.blocks * out.height * out.width)))


def lower_softmax_cross_entropy(low: LossLowering) -> list[Call]:
    """One call: softmax, cross-entropy, its gradient and the hits, per pixel."""
    out, v, n = low.out, low.target.vector, low.n_batch
    classes, pixels = out.channels, out.height * out.width
    kernel = spec("softmax_xent", ("softmax_cross_entropy",), f"nchw{v}c",
                  flops=6 * n * out.blocks * v * pixels,
                  bytes=4 * (2 * out.size(n) + 3 * n * pixels),
                  classes=classes, blocks=out.blocks, height=out.height, width=out.width,
                  samples=samples_per_task(out), **out.strides("y"),
                  **low.grad_layout.strides("g"))

    def table(params):
        """The mask (0 on the classes, MASKED past them), then each lane's channel index."""
        mask = np.full(out.blocks * v, MASKED, np.float32)
        mask[:classes] = 0.0
        return np.concatenate([mask, np.arange(out.blocks * v, dtype=np.float32)])
    return [Call(LAYER, kernel, (low.output, Buffer(LOSS_TARGET),
                                 Const(LAYER, f"xent_table_c{classes}_v{v}", table),
                                 low.grad_output, Buffer(LOSS_VALUES), Buffer(LOSS_CORRECT)))]


def lower_mse(low: LossLowering) -> list[Call]:
    """One call: the squared error's gradient and each sample's mean."""
    out, v, n = low.out, low.target.vector, low.n_batch
    t = Blocked(out.channels, out.height, out.width, v)
    kernel = spec("mse", ("mse",), f"nchw{v}c", flops=4 * out.size(n), bytes=12 * out.size(n),
                  channels=out.channels, blocks=out.blocks,
                  last_lanes=out.channels - (out.blocks - 1) * v, height=out.height,
                  width=out.width, samples=samples_per_task(out), **out.strides("y"),
                  **t.strides("t"), **low.grad_layout.strides("g"))
    return [Call(LAYER, kernel, (low.output, Buffer(LOSS_TARGET), low.grad_output,
                                 Buffer(LOSS_VALUES)))]


LOSS = {"softmax_cross_entropy": lower_softmax_cross_entropy, "mse": lower_mse}
