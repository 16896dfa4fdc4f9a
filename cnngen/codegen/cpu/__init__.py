"""CPU lowering: each spec layer becomes one or more calls of generated Numba kernels.

Every module here maps op names to a lowering function in ``LOWER``; where an op reads a
zero halo around its input (convolutions), to the halo it needs in ``HALO``; and where its
kernel takes a schedule, to the schedules it can take in ``SPACE`` (the tuner's space). A lowering
function takes a ``Lowering`` (the node, the layouts of its inputs and output, the batch
size, the target, an explicit schedule if any) and returns the ``Call``s to run in order.

Training adds two maps. ``TRAIN`` holds the training-mode forward lowering of the ops whose
forward differs in training (batch norm's batch statistics, dropout's mask, max pool's
switches); it takes a ``Lowering`` too. ``BACKWARD`` maps an op to its backward lowering: it
takes a ``GradLowering`` and returns the calls that turn the output's gradient into the
inputs' and the parameters' gradients; where it reads that gradient through a zero halo (a
conv's data gradient, a transposed conv), ``GRAD_HALO`` gives the halo; where its weight
gradient takes a schedule, ``GRAD_SPACE`` gives the tuner's space of it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ...ir import Node
from ...schedule import Schedule
from ...target import Target
from ..kernel import Buffer, ParamGrad
from ..layout import Blocked, Flat
from ..vecmath import ACTIVATIONS

LEAKY_ALPHA = 0.01


def activation_values(name: str, alpha: float = LEAKY_ALPHA) -> dict:
    """Template values for a fused activation: call it as ``${activation}(v, ALPHA)``."""
    return {"activation": ACTIVATIONS[name], "alpha": float(alpha)}


class LayerBuffers:
    """The buffers a lowering of ``self.node`` names: its activations and its temps."""

    def temp(self, what: str, layout: Blocked | Flat) -> Buffer:
        """A zero-initialised scratch buffer owned by this layer."""
        name = f"{self.node.name}:{what}"
        self.temps[name] = layout
        return Buffer(name)

    @property
    def inputs(self) -> tuple[Buffer, ...]:
        return tuple(Buffer(name) for name in self.node.inputs)

    @property
    def output(self) -> Buffer:
        return Buffer(self.node.name)

    def heuristic(self, ranked: list[Schedule]) -> Schedule:
        """The best of ``ranked`` (best first) whose kernel is not known to spill; the last
        one when all are."""
        return next((s for s in ranked if s not in self.avoid), ranked[-1])


@dataclass
class Lowering(LayerBuffers):
    node: Node
    ins: tuple[Blocked, ...]
    out: Blocked
    n_batch: int
    target: Target
    schedule: Schedule | None = None
    refs: tuple[Blocked, ...] = ()
    temps: dict[str, Blocked | Flat] = field(default_factory=dict)
    avoid: frozenset[Schedule] = frozenset()     # heuristic schedules whose kernels spilled


def grad_name(tensor: str) -> str:
    """The buffer holding dL/d(tensor) in a training plan."""
    return f"{tensor}:grad"


@dataclass
class GradLowering(LayerBuffers):
    """What a backward lowering needs: the forward node (in the training graph, so possibly
    a conv with a fused activation), the layouts of its forward inputs and output and of
    their gradients, and which gradients to compute.

    Contract for the calls it returns:
    - forward activations (``inputs``, ``output``) and the forward's temps
      (``saved(what)``: ``<layer>:<what>``, e.g. a max pool's ``switches``) are read-only;
    - ``grad_output`` may be overwritten (nothing reads it afterwards);
    - each ``grad_input(i)`` whose ``d_ins[i]`` is not None is overwritten: every real
      channel of its interior, padding lanes finite, the halo left at zero;
    - each ``param_grad(p)`` is overwritten whole when ``weight_grads`` (no L2 term).
    """

    node: Node
    ins: tuple[Blocked, ...]
    out: Blocked
    d_out: Blocked
    d_ins: tuple[Blocked | None, ...]
    weight_grads: bool
    n_batch: int
    target: Target
    schedule: Schedule | None = None
    refs: tuple[Blocked, ...] = ()
    temps: dict[str, Blocked | Flat] = field(default_factory=dict)
    avoid: frozenset[Schedule] = frozenset()     # heuristic schedules whose kernels spilled

    def saved(self, what: str) -> Buffer:
        """A temp the training forward of this layer wrote (``Lowering.temp(what, ...)``)."""
        return Buffer(f"{self.node.name}:{what}")

    @property
    def grad_output(self) -> Buffer:
        return Buffer(grad_name(self.node.name))

    def grad_input(self, i: int) -> Buffer:
        """dL/d(input i) as this layer contributes it (the plan sums several readers')."""
        return Buffer(f"{self.node.name}:grad_in{i}")

    def param_grad(self, param: str) -> ParamGrad:
        """The gradient of ``param`` of the spec layer (of a fused node) that owns it."""
        owner = next((n for n in (self.node.fused or (self.node,)) if param in n.params), None)
        if owner is None:
            raise KeyError(f"layer {self.node.name!r} has no parameter {param!r}")
        return ParamGrad(owner.name, param)


def _registry():
    from . import (conv, conv_grad, conv_transpose_grad, dense, dense_grad, elementwise,
                   elementwise_grad, norm_grad, pool, pool_grad)
    lower, halo, space, train, backward, grad_halo, grad_space = {}, {}, {}, {}, {}, {}, {}
    for module in (conv, pool, elementwise, dense, conv_grad, conv_transpose_grad, dense_grad,
                   pool_grad, elementwise_grad, norm_grad):
        lower.update(getattr(module, "LOWER", {}))
        halo.update(getattr(module, "HALO", {}))
        space.update(getattr(module, "SPACE", {}))
        train.update(getattr(module, "TRAIN", {}))
        backward.update(getattr(module, "BACKWARD", {}))
        grad_halo.update(getattr(module, "GRAD_HALO", {}))
        grad_space.update(getattr(module, "GRAD_SPACE", {}))
    return lower, halo, space, train, backward, grad_halo, grad_space


LOWER, HALO, SPACE, TRAIN, BACKWARD, GRAD_HALO, GRAD_SPACE = _registry()
