"""CompiledNet: a spec compiled to CPU kernels, called on numpy batches.

    net = cnngen.compile("lenet5.yaml")
    y = net(x)                       # x: float32 (N, C, H, W) or (N, C, L); y: numpy float32

Kernels are specialised to the batch size, so each new N builds (and caches) a plan on its
first call. Input conversion is documented and nothing else is guessed: float64 and
integer arrays are converted to float32, non-contiguous arrays are copied, any other dtype
or a wrong shape raises InputError.
"""
from __future__ import annotations

import os

import numpy as np

from .. import target as targets
from ..codegen.cache import KernelCache
from ..errors import InputError
from ..ir import Graph
from ..reference import check_input
from ..schedule import ConvSchedule, DenseSchedule, DepthwiseSchedule, Schedule
from ..spec import build_graph, load_spec
from ..suggest import did_you_mean
from ..weights import Weights, check_weights, init_weights, load_npz, save_npz
from .plan import Plan


def as_batch(graph: Graph, x) -> np.ndarray:
    """``x`` as a C-contiguous float32 batch of the graph's input shape, or InputError."""
    if isinstance(x, np.ndarray) and x.dtype == np.float32:
        if x.shape[1:] != graph.input.shape or x.ndim == 0 or x.shape[0] < 1:
            check_input(graph, x)  # raises the shape error
        return np.ascontiguousarray(x)
    if isinstance(x, np.ndarray) and x.dtype == np.float16:
        raise InputError("input: expected float32 (float64 and integers are converted); "
                         "received dtype float16.")
    return np.ascontiguousarray(check_input(graph, x), np.float32)


def schedule_kind(node) -> type[Schedule] | None:
    """The schedule type a layer's kernel takes; None for layers without knobs."""
    if node.op == "dense":
        return DenseSchedule
    if node.op in ("conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d"):
        groups = node.attrs["groups"]
        depthwise = (node.op.startswith("conv") and not node.op.startswith("conv_transpose")
                     and groups > 1 and groups == node.in_types[0].channels == node.out.channels)
        return DepthwiseSchedule if depthwise else ConvSchedule
    return None


def check_schedules(graph: Graph, schedules: dict) -> dict[str, Schedule]:
    """``{spec layer: Schedule}``: each key a conv or dense layer, each value the schedule
    type its kernel takes (whether the values fit the layer is checked when it is lowered)."""
    layers = [n.name for n in graph.nodes]
    for layer, schedule in schedules.items():
        if layer not in layers:
            raise InputError(f"schedules: no layer {layer!r} in {graph.name!r}."
                             f"{did_you_mean(str(layer), layers)}")
        node = graph.node(layer)
        kind = schedule_kind(node)
        if kind is None:
            raise InputError(f"schedules[{layer!r}]: layer {layer!r} ({node.op}) takes no "
                             f"schedule; conv and dense layers do.")
        if not isinstance(schedule, kind):
            raise InputError(f"schedules[{layer!r}]: layer {layer!r} ({node.op}) takes a "
                             f"cnngen.schedule.{kind.__name__}; received "
                             f"{type(schedule).__name__} {schedule!r}.")
    return dict(schedules)


class CompiledNet:
    def __init__(self, spec, weights: Weights | None = None, target="cpu",
                 cache_dir: str | os.PathLike | None = None, seed: int = 0,
                 schedules: dict[str, Schedule] | None = None):
        if isinstance(spec, Graph):
            self.graph = spec
        else:
            self.graph = build_graph(load_spec(spec) if isinstance(spec, (str, os.PathLike)) else spec)
        self.target = targets.resolve(target)
        self.cache = KernelCache(cache_dir)
        self.schedules = check_schedules(self.graph, schedules or {})
        self._weights = (init_weights(self.graph, seed) if weights is None
                         else check_weights(self.graph, weights))
        self._plans: dict[tuple[int, bool], Plan] = {}   # by (batch, reuse)

    @property
    def weights(self) -> Weights:
        """``{layer: {param: array}}``, a copy; assign a dict to replace them (validated)."""
        return {layer: {k: v.copy() for k, v in p.items()} for layer, p in self._weights.items()}

    @weights.setter
    def weights(self, value: Weights) -> None:
        self._weights = check_weights(self.graph, value)
        for plan in self._plans.values():
            plan.update_weights(self._weights)

    def load_weights(self, path: str | os.PathLike) -> None:
        self.weights = load_npz(path)

    def save_weights(self, path: str | os.PathLike) -> None:
        save_npz(self._weights, path)

    def plan(self, n_batch: int, reuse: bool = True) -> Plan:
        """The plan for batch size ``n_batch``: built and compiled on first use.

        ``reuse=False`` gives every activation its own buffer, so ``plan.tensor(layer)``
        can show any layer after a run (for debugging; it takes more memory)."""
        if isinstance(n_batch, bool) or not isinstance(n_batch, (int, np.integer)) or n_batch < 1:
            raise InputError(f"batch size: expected an integer >= 1; received {n_batch!r}.")
        key = (int(n_batch), bool(reuse))
        if key not in self._plans:
            self._plans[key] = Plan(self.graph, key[0], self.target, self.cache,
                                    self._weights, self.schedules, reuse)
        return self._plans[key]

    @property
    def kernels(self):
        """Every kernel loaded so far, once each: name, path, seconds, cache_hit."""
        seen = {}
        for plan in self._plans.values():
            for step in plan.steps:
                seen.setdefault(step.kernel.path, step.kernel)
        return list(seen.values())

    def __call__(self, x) -> np.ndarray:
        x = as_batch(self.graph, x)
        plan = self.plan(x.shape[0])
        plan.set_input(x)
        plan.run()
        return plan.output().copy()

    def __repr__(self) -> str:
        return f"CompiledNet({self.graph.name!r}, target={self.target.kind}-{self.target.isa})"


def compile(spec, weights: Weights | None = None, target="cpu", cache_dir=None, seed: int = 0,
            schedules: dict[str, Schedule] | None = None) -> CompiledNet:
    """A spec (path, text, dict or Graph) compiled for ``target`` ("cpu", "cpu-avx2", a Target)."""
    return CompiledNet(spec, weights, target, cache_dir, seed, schedules)
