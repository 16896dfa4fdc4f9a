"""CPU lowering: each spec layer becomes one or more calls of generated Numba kernels.

Every module here maps op names to a lowering function in ``LOWER``; where an op reads a
zero halo around its input (convolutions), to the halo it needs in ``HALO``; and where its
kernel takes a schedule, to the schedules it can take in ``SPACE`` (the tuner's space). A lowering
function takes a ``Lowering`` (the node, the layouts of its inputs and output, the batch
size, the target, an explicit schedule if any) and returns the ``Call``s to run in order.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ...ir import Node
from ...schedule import Schedule
from ...target import Target
from ..kernel import Buffer
from ..layout import Blocked
from ..vecmath import ACTIVATIONS

LEAKY_ALPHA = 0.01


def activation_values(name: str, alpha: float = LEAKY_ALPHA) -> dict:
    """Template values for a fused activation: call it as ``${activation}(v, ALPHA)``."""
    return {"activation": ACTIVATIONS[name], "alpha": float(alpha)}


@dataclass
class Lowering:
    node: Node
    ins: tuple[Blocked, ...]
    out: Blocked
    n_batch: int
    target: Target
    schedule: Schedule | None = None
    refs: tuple[Blocked, ...] = ()
    temps: dict[str, Blocked] = field(default_factory=dict)
    avoid: frozenset[Schedule] = frozenset()     # heuristic schedules whose kernels spilled

    def heuristic(self, ranked: list[Schedule]) -> Schedule:
        """The best of ``ranked`` (best first) whose kernel is not known to spill; the last
        one when all are."""
        return next((s for s in ranked if s not in self.avoid), ranked[-1])

    def temp(self, what: str, layout: Blocked) -> Buffer:
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


def _registry():
    from . import conv, dense, elementwise, pool
    lower, halo, space = {}, {}, {}
    for module in (conv, pool, elementwise, dense):
        lower.update(module.LOWER)
        halo.update(getattr(module, "HALO", {}))
        space.update(getattr(module, "SPACE", {}))
    return lower, halo, space


LOWER, HALO, SPACE = _registry()
