"""CompiledNet: a spec compiled to CPU kernels, called on numpy batches.

    net = cnngen.compile("lenet5.yaml")
    y = net(x)                       # x: float32 (N, C, H, W) or (N, C, L); y: numpy float32

Kernels take the batch size as an argument, so every batch runs on one set of kernels; each
new N builds a plan (its buffers) on its first call, and the ``max_plans`` most recently used
plans are kept (an evicted plan's buffers are freed).
Input conversion is documented and nothing else is guessed: float64 and integer arrays are
converted to float32, non-contiguous arrays are copied, any other dtype or a wrong shape
raises InputError.

A net is safe to call from several threads: a call holds the net's lock while it runs
(the kernels already use every core, so callers queue rather than share buffers).
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict

import numpy as np

from .. import target as targets
from ..codegen.cache import KernelCache
from ..errors import InputError
from ..ir import Graph
from ..reference import check_input
from ..schedule import (ConvSchedule, DenseSchedule, DepthwiseSchedule, Schedule,
                        WinogradSchedule)
from ..spec import build_graph, load_spec
from ..suggest import did_you_mean
from ..tuning.workload import Records
from ..weights import Weights, check_weights, init_weights, load_npz, save_npz
from .plan import Plan
from .weights_view import NetWeights, plain

# Plans (one per batch size) a net keeps by default; each holds its activation buffers.
MAX_PLANS = 8
# The tuning database a net reads by default, in its kernel cache directory.
DEFAULT_DB_NAME = "tuning.db"


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


def check_out(graph: Graph, n_batch: int, out) -> None:
    """``out`` must be a writable C-contiguous float32 array of the output's shape."""
    shape = (n_batch, *graph.output.out.shape)
    if not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == shape
            and out.flags.c_contiguous and out.flags.writeable):
        got = (f"{type(out).__name__}" if not isinstance(out, np.ndarray) else
               f"{out.dtype} {out.shape}{'' if out.flags.c_contiguous else ' non-contiguous'}"
               f"{'' if out.flags.writeable else ' read-only'}")
        raise InputError(f"out: expected a writable C-contiguous float32 array of shape "
                         f"{shape}; received {got}.")


def schedule_kinds(node) -> tuple[type[Schedule], ...]:
    """The schedule types a layer's kernel takes (one per algorithm); () for layers
    without knobs. Whether a WinogradSchedule fits the conv is checked when it is lowered."""
    if node.op == "dense":
        return (DenseSchedule,)
    if node.op in ("conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d"):
        groups = node.attrs["groups"]
        depthwise = (not node.op.startswith("conv_transpose")
                     and groups > 1 and groups == node.in_types[0].channels == node.out.channels)
        if depthwise:
            return (DepthwiseSchedule,)
        return (ConvSchedule, WinogradSchedule) if node.op == "conv2d" else (ConvSchedule,)
    return ()


def check_schedules(graph: Graph, schedules: dict) -> dict[str, Schedule]:
    """``{spec layer: Schedule}``: each key a conv or dense layer, each value the schedule
    type its kernel takes (whether the values fit the layer is checked when it is lowered)."""
    layers = [n.name for n in graph.nodes]
    for layer, schedule in schedules.items():
        if layer not in layers:
            raise InputError(f"schedules: no layer {layer!r} in {graph.name!r}."
                             f"{did_you_mean(layer, layers)}")
        node = graph.node(layer)
        kinds = schedule_kinds(node)
        if not kinds:
            raise InputError(f"schedules[{layer!r}]: layer {layer!r} ({node.op}) takes no "
                             f"schedule; conv and dense layers do.")
        if not isinstance(schedule, kinds):
            names = " or ".join(f"cnngen.schedule.{k.__name__}" for k in kinds)
            raise InputError(f"schedules[{layer!r}]: layer {layer!r} ({node.op}) takes a "
                             f"{names}; received {type(schedule).__name__} {schedule!r}.")
    return dict(schedules)


def tuning_records(tuning_db, cache: KernelCache, target) -> Records | None:
    """The records a net applies: ``tuning_db`` (a path), the default database beside the
    kernel cache (None), or none (False)."""
    if tuning_db is False:
        return None
    if tuning_db is None or tuning_db is True:
        tuning_db = cache.dir / DEFAULT_DB_NAME
    if not isinstance(tuning_db, (str, os.PathLike)):
        raise InputError(f"tuning_db: expected a path, None (the database beside the kernel "
                         f"cache) or False (none); received {tuning_db!r}.")
    return Records(tuning_db, target)


class CompiledNet:
    def __init__(self, spec, weights: Weights | None = None, target="cpu",
                 cache_dir: str | os.PathLike | None = None, seed: int = 0,
                 schedules: dict[str, Schedule] | None = None, max_plans: int = MAX_PLANS,
                 tuning_db: str | os.PathLike | bool | None = None):
        if isinstance(spec, Graph):
            self.graph = spec
        else:
            self.graph = build_graph(load_spec(spec) if isinstance(spec, (str, os.PathLike)) else spec)
        if isinstance(max_plans, bool) or not isinstance(max_plans, int) or max_plans < 1:
            raise InputError(f"max_plans: expected an integer >= 1; received {max_plans!r}.")
        self.target = targets.resolve(target)
        self.cache = KernelCache(cache_dir)
        self.schedules = check_schedules(self.graph, schedules or {})
        self.records = tuning_records(tuning_db, self.cache, self.target)
        self._weights = (init_weights(self.graph, seed) if weights is None
                         else check_weights(self.graph, plain(weights)))
        self.max_plans = max_plans
        self._plans: OrderedDict[tuple[int, bool], Plan] = OrderedDict()   # by (batch, reuse)
        self._lock = threading.RLock()

    @property
    def weights(self) -> NetWeights:
        """``{layer: {param: array}}``: read-only arrays; assigning a layer's dict or one
        parameter (``net.weights["c1"]["w"] = w``) validates it and repacks the kernels'
        constants. Assigning the whole dict replaces every parameter."""
        return NetWeights(self)

    @weights.setter
    def weights(self, value: Weights) -> None:
        checked = check_weights(self.graph, plain(value))
        with self._lock:
            self._weights = checked
            for plan in self._plans.values():
                plan.update_weights(self._weights)

    def set_weights(self, changed: Weights) -> None:
        """Replace the parameters of the layers in ``changed`` (each layer complete),
        validated, and repack only those layers' constants."""
        with self._lock:
            checked = check_weights(self.graph, {**self._weights, **plain(changed)})
            self._weights = checked
            for plan in self._plans.values():
                plan.update_weights(self._weights, layers=set(changed))

    def load_weights(self, path: str | os.PathLike) -> None:
        self.weights = load_npz(path, self.graph)

    def save_weights(self, path: str | os.PathLike) -> None:
        save_npz(self._weights, path)

    def plan(self, n_batch: int, reuse: bool = True) -> Plan:
        """The plan for batch size ``n_batch``: built and compiled on first use, kept while
        it is among the ``max_plans`` most recently used.

        ``reuse=False`` gives every activation its own buffer, so ``plan.tensor(layer)``
        can show any layer after a run (for debugging; it takes more memory)."""
        if isinstance(n_batch, bool) or not isinstance(n_batch, (int, np.integer)) or n_batch < 1:
            raise InputError(f"batch size: expected an integer >= 1; received {n_batch!r}.")
        key = (int(n_batch), bool(reuse))
        with self._lock:
            if key in self._plans:
                self._plans.move_to_end(key)
                return self._plans[key]
            plan = Plan(self.graph, key[0], self.target, self.cache, self._weights,
                        self.schedules, reuse, self.records)
            self._plans[key] = plan
            while len(self._plans) > self.max_plans:
                self._plans.popitem(last=False)
            return plan

    @property
    def kernels(self):
        """Every kernel of the plans kept, once each: name, path, seconds, cache_hit."""
        seen = {}
        for plan in list(self._plans.values()):
            for step in plan.steps:
                seen.setdefault(step.kernel.path, step.kernel)
        return list(seen.values())

    def __call__(self, x, out: np.ndarray | None = None) -> np.ndarray:
        """The network's output for the batch ``x``: a new array, or written into ``out``
        (float32, C-contiguous, the output's shape) and returned."""
        x = as_batch(self.graph, x)
        if out is not None:
            check_out(self.graph, x.shape[0], out)
        else:
            out = np.empty((x.shape[0], *self.graph.output.out.shape), np.float32)
        with self._lock:
            self.plan(x.shape[0]).run(x, out)
        return out

    def __repr__(self) -> str:
        return f"CompiledNet({self.graph.name!r}, target={self.target.kind}-{self.target.isa})"


def compile(spec, weights: Weights | None = None, target="cpu", cache_dir=None, seed: int = 0,
            schedules: dict[str, Schedule] | None = None,
            max_plans: int = MAX_PLANS, tuning_db=None) -> CompiledNet:
    """A spec (path, text, dict or Graph) compiled for ``target`` ("cpu", "cpu-avx2", a Target).

    Each conv and dense kernel takes its schedule from ``schedules`` (by spec layer), else
    from a record of the tuning database ``tuning_db`` measured on this CPU with these
    templates and versions (default: ``tuning.db`` beside the kernel cache; False: none),
    else from the heuristic. ``cnngen.explain`` says which, and why a record was not used."""
    return CompiledNet(spec, weights, target, cache_dir, seed, schedules, max_plans, tuning_db)
