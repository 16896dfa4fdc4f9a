"""A graph specialised to one batch size: layouts, buffers, compiled kernels, steps.

Building a plan lowers every layer to kernel calls, compiles (or loads from the cache)
each distinct kernel, allocates every buffer once, zero-filled, so halos stay zero, and
packs the weights into the kernels' layouts. Running it is a loop over steps.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..codegen.cache import KernelCache, LoadedKernel
from ..codegen.parallel import MAX_ARGS, run_parallel, run_serial
from ..codegen.cpu import HALO, LOWER, Lowering
from ..codegen.cpu.edges import from_blocked, to_blocked
from ..codegen.kernel import Buffer, Call, Const
from ..codegen.layout import Blocked
from ..ir import Graph, Node
from ..passes import for_inference, origin, readers
from ..schedule import Schedule
from ..target import Target


def plan_layouts(graph: Graph, vector: int) -> dict[str, Blocked]:
    """Blocked layout of every tensor, with the widest halo any of its readers needs."""
    halos = {name: (0, 0, 0, 0) for name in (graph.input_name, *(n.name for n in graph.nodes))}
    for node in graph.nodes:
        if node.op in HALO:
            src = node.inputs[0]
            halos[src] = tuple(map(max, halos[src], HALO[node.op](node)))
    return {name: Blocked.of(graph.type_of(name), vector, halo) for name, halo in halos.items()}


def concat_views(graph: Graph, layouts: dict[str, Blocked]) -> dict[str, str]:
    """Concats whose inputs are written in place, as channel views of the concat's buffer:
    ``{input: concat}``. A concat qualifies when each input is a layer that only it reads,
    and every input starts on a whole channel block; then it runs no kernel. ``layouts``
    gets the views."""
    read_by = readers(graph)
    views: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "concat" or len(set(node.inputs)) != len(node.inputs):
            continue
        out = layouts[node.name]
        offsets = np.cumsum([0] + [layouts[i].channels for i in node.inputs[:-1]])
        if all(i != graph.input_name and len(read_by[i]) == 1 and graph.node(i).op != "concat"
               and off % out.vector == 0 for i, off in zip(node.inputs, offsets)):
            for i, off in zip(node.inputs, offsets):
                layouts[i] = out.channel_view(layouts[i].channels, int(off))
                views[i] = node.name
    return views


# Below this much work a kernel runs on the calling thread: waking the pool costs more.
PARALLEL_FLOPS = 2_000_000
PARALLEL_BYTES = 256 << 10
UNUSED = np.zeros(1, np.float32)


def worth_parallel(call: Call, kernel: LoadedKernel, cores: int) -> bool:
    return (cores > 1 and kernel.tasks > 1
            and (call.kernel.flops >= PARALLEL_FLOPS or call.kernel.bytes >= PARALLEL_BYTES))


def layer_params(node: Node, params: dict[str, dict[str, np.ndarray]]) -> dict:
    """The parameters a (possibly fused) node packs: its first layer's, plus each fused
    layer's under its op name (``p["batchnorm"]``)."""
    if not node.fused:
        return params.get(node.name, {})
    head, *rest = node.fused
    merged = dict(params.get(head.name, {}))
    merged.update({n.op: params[n.name] for n in rest if n.name in params})
    return merged


@dataclass
class Step:
    """One kernel launch with its arguments bound. ``step()`` runs it."""

    call: Call
    kernel: LoadedKernel
    args: list
    parallel: bool

    @property
    def edge(self) -> bool:
        return self.call.edge

    @property
    def layer(self) -> str:
        return self.call.layer

    def __call__(self) -> None:
        run = run_parallel if self.parallel else run_serial
        run(self.kernel.fn.address, self.kernel.tasks, *self.args)


class Plan:
    def __init__(self, graph: Graph, n_batch: int, target: Target, cache: KernelCache,
                 params: dict[str, dict[str, np.ndarray]],
                 schedules: dict[str, Schedule] | None = None):
        self.graph, self.n_batch, self.target = for_inference(graph), n_batch, target
        graph = self.graph
        self.layouts = plan_layouts(graph, target.vector)
        self.views = concat_views(graph, self.layouts)
        calls, temps = self._lower(schedules or {})
        self.buffers = {name: np.zeros(layout.size(n_batch), np.float32)
                        for name, layout in {**self.layouts, **temps}.items()
                        if name not in self.views}
        self.buffers.update({name: self.buffers[whole] for name, whole in self.views.items()})
        out = graph.output.name
        self.buffers[f"{graph.input_name}:nchw"] = np.zeros(n_batch * graph.input.size, np.float32)
        self.buffers[f"{out}:nchw"] = np.zeros(n_batch * graph.output.out.size, np.float32)
        self.consts: dict[Const, np.ndarray] = {}
        self.update_weights(params, calls)
        start = time.perf_counter()
        kernels = cache.load_all([(c.kernel.name(target), c.kernel.source(target)) for c in calls],
                                 target)
        self.steps = [Step(call, kernel, self._bind_all(call.args),
                           worth_parallel(call, kernel, target.cores))
                      for call, kernel in zip(calls, kernels)]
        self.compile_seconds = time.perf_counter() - start

    def _lower(self, schedules):
        graph, layouts = self.graph, self.layouts
        calls = [to_blocked(graph.input_name, layouts[graph.input_name], self.n_batch)]
        temps: dict[str, Blocked] = {}
        self.schedule_sources = {}
        in_place = set(self.views.values())
        for node in graph.nodes:
            if node.name in in_place:
                continue          # its inputs wrote it
            explicit = [n.name for n in origin(node) if n.name in schedules]
            self.schedule_sources[node.name] = (
                f"explicit (schedules[{explicit[0]!r}])" if explicit
                else "heuristic (no tuning database given)")
            low = Lowering(node, tuple(layouts[i] for i in node.inputs), layouts[node.name],
                           self.n_batch, self.target, schedules[explicit[0]] if explicit else None,
                           tuple(layouts[r] for r in node.refs), temps)
            calls += LOWER[node.op](low)
        calls.append(from_blocked(graph.output.name, layouts[graph.output.name], self.n_batch))
        return calls, temps

    def _bind_all(self, args) -> list[np.ndarray]:
        bound = [self.consts[a] if isinstance(a, Const) else self.buffers[a.name] for a in args]
        return bound + [UNUSED] * (MAX_ARGS - len(bound))

    def update_weights(self, params: dict[str, dict[str, np.ndarray]], calls=None) -> None:
        """Repack every constant from ``params``, in place, so bound steps see the new values."""
        for call in calls if calls is not None else [s.call for s in self.steps]:
            for arg in call.args:
                if isinstance(arg, Const):
                    source = layer_params(self.graph.node(arg.layer), params)
                    packed = np.ascontiguousarray(arg.pack(source), np.float32)
                    if arg in self.consts:
                        self.consts[arg][...] = packed
                    else:
                        self.consts[arg] = packed

    def set_input(self, x: np.ndarray) -> None:
        """Copy a checked (N, C, ...) float32 batch into the input edge buffer."""
        self.buffers[f"{self.graph.input_name}:nchw"][...] = x.reshape(-1)

    def run(self) -> None:
        for step in self.steps:
            step()

    def output(self) -> np.ndarray:
        """The last run's output as (N, *output shape), a view valid until the next run."""
        flat = self.buffers[f"{self.graph.output.name}:nchw"]
        return flat.reshape(self.n_batch, *self.graph.output.out.shape)

    def tensor(self, name: str) -> np.ndarray:
        """Any layer's activation from the last run as (N, C, ...) (for tests and debugging)."""
        layout = self.layouts[name]
        shape = self.graph.type_of(name).shape
        return layout.to_nchw(self.buffers[name], self.n_batch).reshape(self.n_batch, *shape)
