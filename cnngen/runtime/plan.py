"""A graph run at one batch size: layouts, buffers, kernels, steps.

Building a plan lowers every layer to kernel calls, compiles (or loads from the cache, or
from this process) each distinct kernel, which takes the batch size as an argument and so
serves every plan, allocates every buffer once, zero-filled, so halos stay zero, and packs
the weights into the kernels' layouts. Running it is a loop over steps.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from ..codegen.cache import KernelCache, LoadedKernel
from ..codegen.parallel import MAX_ARGS, launch_parallel, run_serial
from ..codegen.cpu import HALO, LOWER, Lowering
from ..codegen.cpu.edges import from_blocked, to_blocked
from ..codegen.kernel import Buffer, Call, Const
from ..codegen.layout import Blocked, FlatView
from ..errors import InputError
from ..ir import Graph, Node
from ..passes import for_inference, origin, readers
from ..schedule import TUNABLE_OPS, Schedule
from ..target import Target
from ..tuning.workload import Records


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


# A dense reading a flatten in place multiplies every slot of the source's span, halo and
# padding lanes included: worth it while those are at most this fraction more than the
# features (a 1-channel 28x28 image in 16 lanes would be 16x the multiply-adds).
MAX_FLAT_VIEW_WASTE = 0.25


def flat_views(graph: Graph, layouts: dict) -> dict[str, str]:
    """Flattens (and reshapes to a vector) that only dense layers read, read in place:
    ``{flatten: its input}``. ``layouts`` gets a ``FlatView`` for each; the dense packs
    its weights in the input's memory order, so no kernel moves the data."""
    read_by = readers(graph)
    views: dict[str, str] = {}
    for node in graph.nodes:
        src = node.inputs[0] if node.inputs else None
        if not (node.op in ("flatten", "reshape") and len(node.out.shape) == 1
                and read_by[node.name] and all(r.op == "dense" for r in read_by[node.name])
                and isinstance(layouts[src], Blocked) and not layouts[src].buffer_blocks):
            continue
        view = FlatView(layouts[src])
        if view.slots <= (1 + MAX_FLAT_VIEW_WASTE) * view.channels:
            layouts[node.name] = view
            views[node.name] = src
    return views


@dataclass(frozen=True)
class Memory:
    """Activation memory of a plan, in bytes: what it holds after buffer reuse, what it
    would hold with one buffer per tensor, and the largest sum of tensors live at once."""

    allocated: int
    unshared: int
    live_peak: int

    def __str__(self) -> str:
        mib = 1 << 20
        return (f"activation memory {self.allocated / mib:.2f} MiB after reuse "
                f"({self.unshared / mib:.2f} MiB with a buffer per tensor; "
                f"{self.live_peak / mib:.2f} MiB live at the peak)")


def share_buffers(graph: Graph, layouts: dict, views: dict[str, str], n_batch: int,
                  reuse: bool = True):
    """Which buffer each tensor lives in (``{tensor: holder}``), each holder's size in
    bytes, ``{tensor: the later tensor that overwrites it}``, and the memory all takes.

    A tensor reuses the buffer of an earlier tensor once every reader of that tensor has
    run, if both have the same plane geometry (height, width, halo, vector): the buffer is
    then a run of identical channel-block planes whose halos no kernel ever writes, so they
    stay zero whichever tensor lives there. The buffer takes the size of its largest
    tenant. Views live in their whole tensor's buffer, which lives from its first writer
    to its last reader. The graph's output keeps its own buffer."""
    order = {graph.input_name: -1, **{n.name: i for i, n in enumerate(graph.nodes)}}

    def owner(name):
        while name in views:
            name = views[name]
        return name

    first, last = {}, {}
    for name, i in order.items():
        o = owner(name)
        first[o] = min(first.get(o, i), i)
        last.setdefault(o, i)
    for node in graph.nodes:
        for dep in node.deps:
            o = owner(dep)
            last[o] = max(last[o], order[node.name])
    last[owner(graph.output.name)] = len(graph.nodes)
    def plane(o):
        b = layouts[o]
        return (b.height, b.width, b.halo, b.vector)

    size = {o: 4 * layouts[o].size(n_batch) for o in first}
    assigned: dict[str, str] = {}
    capacity: dict[str, int] = {}
    tenant: dict[str, str] = {}       # holder -> its latest tensor
    overwritten: dict[str, str] = {}  # tensor -> the tensor that next took its buffer
    free: dict[tuple, list[str]] = {}
    releases: list[tuple[int, str]] = []
    live = peak = 0
    for o in sorted(first, key=lambda o: (first[o], order[o])):
        for _, old in sorted(r for r in releases if r[0] < first[o]):
            free.setdefault(plane(old), []).append(assigned[old])
            live -= size[old]
        releases = [r for r in releases if r[0] >= first[o]]
        pool = free.get(plane(o), []) if reuse else []
        # the free buffer closest in size above, else the largest (which then grows)
        pool.sort(key=lambda h: (capacity[h] < size[o], abs(capacity[h] - size[o])))
        holder = pool.pop(0) if pool else o
        if holder in tenant:
            overwritten[tenant[holder]] = o
        tenant[holder] = o
        assigned[o] = holder
        capacity[holder] = max(capacity.get(holder, 0), size[o])
        releases.append((last[o], o))
        live += size[o]
        peak = max(peak, live)
    memory = Memory(sum(capacity.values()), sum(size.values()), peak)
    home = {name: assigned[owner(name)] for name in order}
    overwritten = {name: overwritten[owner(name)] for name in order if owner(name) in overwritten}
    return home, capacity, overwritten, memory


def available_bytes() -> int | None:
    """Memory the system can still hand out (Linux ``MemAvailable``); None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(graph: Graph, n_batch: int, nbytes: int) -> None:
    """InputError, before anything is allocated, when a plan's buffers exceed the memory
    available (numpy would raise MemoryError, or the kernel's OOM killer would strike)."""
    available = available_bytes()
    if available is not None and nbytes > available:
        gib = 1 << 30
        raise InputError(f"batch size {n_batch}: {graph.name!r} needs {nbytes / gib:.2f} GiB "
                         f"of activation buffers and this machine has {available / gib:.2f} "
                         f"GiB available. Use a smaller batch (about "
                         f"{max(1, int(n_batch * available / nbytes))} fits).")


# Below this much work a kernel runs on the calling thread: waking the pool costs more.
PARALLEL_FLOPS = 2_000_000
PARALLEL_BYTES = 256 << 10
UNUSED = np.zeros(1, np.float32)


def worth_parallel(call: Call, tasks: int, cores: int) -> bool:
    return (cores > 1 and tasks > 1
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
    """One kernel launch with its arguments bound: ``tasks`` tasks of a batch of
    ``n_batch``, on the thread pool if ``parallel``. ``step()`` runs it."""

    call: Call
    kernel: LoadedKernel
    args: list
    n_batch: int
    tasks: int
    parallel: bool

    @property
    def edge(self) -> bool:
        return self.call.edge

    @property
    def layer(self) -> str:
        return self.call.layer

    def __call__(self) -> None:
        run = launch_parallel if self.parallel else run_serial
        run(self.kernel.fn.address, self.tasks, self.n_batch, *self.args)

    def run_on(self, position: int, array: np.ndarray) -> None:
        """Run with argument ``position`` replaced by the flat float32 ``array`` (an edge
        reading the caller's input or writing the caller's output in place)."""
        args = list(self.args)
        args[position] = array
        run = launch_parallel if self.parallel else run_serial
        run(self.kernel.fn.address, self.tasks, self.n_batch, *args)


# Heuristic tiles tried after the first, per layer, when each spills.
MAX_SPILL_RETRIES = 3


class Plan:
    def __init__(self, graph: Graph, n_batch: int, target: Target, cache: KernelCache,
                 params: dict[str, dict[str, np.ndarray]],
                 schedules: dict[str, Schedule] | None = None, reuse: bool = True,
                 records: Records | None = None):
        self.graph, self.n_batch, self.target = for_inference(graph), n_batch, target
        graph = self.graph
        self.layouts = plan_layouts(graph, target.vector)
        concats = concat_views(graph, self.layouts)
        self.written_in_place = set(concats.values())
        self.views = {**concats, **flat_views(graph, self.layouts)}
        self.spill_fallbacks: dict[str, list[str]] = {}    # layer: the heuristic tiles that spilled
        self.records = records
        self.tuned: set[str] = set()                       # layers whose schedule is a record
        start = time.perf_counter()
        calls, temps, kernels = self._compile(cache, schedules or {})
        self.compile_seconds = time.perf_counter() - start
        home, capacity, self.overwritten, self.memory = share_buffers(
            graph, self.layouts, self.views, n_batch, reuse)
        check_fits(graph, n_batch, sum(capacity.values()) + 4 * n_batch * (
            graph.input.size + graph.output.out.size
            + sum(layout.size(1) for layout in temps.values())))
        held = {h: np.zeros(nbytes // 4, np.float32) for h, nbytes in capacity.items()}
        self.buffers = {name: np.zeros(layout.size(n_batch), np.float32)
                        for name, layout in temps.items()}
        self.buffers.update({name: held[h] for name, h in home.items()})
        out = graph.output.name
        self.buffers[f"{graph.input_name}:nchw"] = np.zeros(n_batch * graph.input.size, np.float32)
        self.buffers[f"{out}:nchw"] = np.zeros(n_batch * graph.output.out.size, np.float32)
        self.consts: dict[Const, np.ndarray] = {}
        self.update_weights(params, calls)
        self.steps = []
        for call, kernel in zip(calls, kernels):
            tasks = kernel.task_count(n_batch)
            self.steps.append(Step(call, kernel, self._bind_all(call.args), n_batch, tasks,
                                   worth_parallel(call, tasks, target.cores)))

    def _compile(self, cache: KernelCache, schedules: dict[str, Schedule]):
        """Lower and load every kernel; a heuristic schedule whose kernel spills in its
        reduction loops is replaced by the next-best one (at most MAX_SPILL_RETRIES times
        per layer), so that the defaults never run spilling code."""
        avoid: dict[str, set[Schedule]] = {}
        for _ in range(MAX_SPILL_RETRIES + 1):
            calls, temps = self._lower(schedules, avoid)
            kernels = cache.load_all([(c.kernel.name(self.target), c.kernel.source(self.target))
                                      for c in calls], self.target)
            spilled = [(call, kernel) for call, kernel in zip(calls, kernels)
                       if kernel.spills and call.kernel.schedule is not None
                       and self.schedule_sources[call.layer].startswith("heuristic")
                       and call.kernel.schedule not in avoid.get(call.layer, ())]
            if not spilled:
                break
            for call, kernel in spilled:
                avoid.setdefault(call.layer, set()).add(call.kernel.schedule)
                self.spill_fallbacks.setdefault(call.layer, []).append(
                    f"{call.kernel.schedule} spilled {kernel.spills}")
        return calls, temps, kernels

    def _lower(self, schedules, avoid: dict[str, set[Schedule]]):
        graph, layouts = self.graph, self.layouts
        calls = [to_blocked(graph.input_name, layouts[graph.input_name], self.n_batch)]
        temps: dict[str, Blocked] = {}
        self.schedule_sources = {}
        self.lowerings: dict[str, Lowering] = {}     # by node: what the tuner's space reads
        for node in graph.nodes:
            if node.name in self.written_in_place or isinstance(self.layouts[node.name], FlatView):
                continue          # written by its inputs, or read in place by its readers
            schedule, self.schedule_sources[node.name] = self._choose(node, schedules)
            low = Lowering(node, tuple(layouts[i] for i in node.inputs), layouts[node.name],
                           self.n_batch, self.target, schedule,
                           tuple(layouts[r] for r in node.refs), temps,
                           frozenset(avoid.get(node.name, ())))
            self.lowerings[node.name] = low
            try:
                calls += LOWER[node.op](low)
            except InputError as error:
                if schedule is None or node.name not in self.tuned:
                    raise
                # a record that no longer fits (it names the same workload, so this is rare)
                low.schedule = None
                calls += LOWER[node.op](low)
                self.schedule_sources[node.name] = f"heuristic (the tuning record does not fit: {error})"
        calls.append(from_blocked(graph.output.name, layouts[graph.output.name], self.n_batch))
        return calls, temps

    def _choose(self, node: Node, schedules: dict[str, Schedule]) -> tuple[Schedule | None, str]:
        """The node's schedule and where it came from: explicit, then a tuning record, then
        the heuristic (None: the lowering ranks its own)."""
        explicit = [n.name for n in origin(node) if n.name in schedules]
        if explicit:
            return schedules[explicit[0]], f"explicit (schedules[{explicit[0]!r}])"
        if origin(node)[0].op not in TUNABLE_OPS:
            return None, "heuristic"
        if self.records is None:
            return None, "heuristic (no tuning database given)"
        schedule, source = self.records.schedule_for(node, self.n_batch)
        if schedule is not None:
            self.tuned.add(node.name)
        return schedule, source

    def _bind_all(self, args) -> list[np.ndarray]:
        bound = [self.consts[a] if isinstance(a, Const) else self.buffers[a.name] for a in args]
        return bound + [UNUSED] * (MAX_ARGS - len(bound))

    def update_weights(self, params: dict[str, dict[str, np.ndarray]], calls=None,
                       layers: set[str] | None = None) -> None:
        """Repack the constants from ``params`` (only those packed from ``layers``, if
        given), in place, so bound steps see the new values."""
        for call in calls if calls is not None else [s.call for s in self.steps]:
            for arg in call.args:
                if isinstance(arg, Const) and (layers is None or not layers.isdisjoint(
                        n.name for n in origin(self.graph.node(arg.layer)))):
                    source = layer_params(self.graph.node(arg.layer), params)
                    packed = np.ascontiguousarray(arg.pack(source), np.float32)
                    if arg in self.consts:
                        self.consts[arg][...] = packed
                    else:
                        self.consts[arg] = packed

    def set_input(self, x: np.ndarray) -> None:
        """Copy a checked (N, C, ...) float32 batch into the input edge buffer."""
        self.buffers[f"{self.graph.input_name}:nchw"][...] = x.reshape(-1)

    def run(self, x: np.ndarray | None = None, out: np.ndarray | None = None) -> None:
        """Run every step. The input edge reads ``x`` in place (a checked (N, C, ...)
        C-contiguous float32 batch) and the output edge writes ``out`` (C-contiguous
        float32, (N, *output shape)); without them, the plan's own edge buffers
        (``set_input``, ``output``)."""
        first, *middle, last = self.steps
        if x is None:
            first()
        else:
            first.run_on(0, x.reshape(-1))
        for step in middle:
            step()
        if out is None:
            last()
        else:
            last.run_on(1, out.reshape(-1))

    def output(self) -> np.ndarray:
        """The last run's output as (N, *output shape), a view valid until the next run."""
        flat = self.buffers[f"{self.graph.output.name}:nchw"]
        return flat.reshape(self.n_batch, *self.graph.output.out.shape)

    def tensor(self, name: str) -> np.ndarray:
        """Any layer's activation from the last run as (N, C, ...) (for tests and debugging).

        A tensor whose buffer a later layer reused is gone by the end of the run; build the
        plan with ``reuse=False`` (``net.plan(n, reuse=False)``) to keep every activation."""
        if name in self.overwritten:
            raise KeyError(f"tensor {name!r}: its buffer was reused by {self.overwritten[name]!r} "
                           f"later in the run; build the plan with reuse=False to keep it.")
        layout = self.layouts[name]
        shape = self.graph.type_of(name).shape
        return layout.to_nchw(self.buffers[name], self.n_batch).reshape(self.n_batch, *shape)
