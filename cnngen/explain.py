"""What a compiled net runs and why: one entry per kernel launch of a plan.

    report = explain(net, n_batch=1, profile=True)
    print(report)                 # the table `cnngen explain SPEC --profile` prints
    report.kernels[0].source      # the generated source of the first kernel

Each entry gives the spec layers the kernel computes (its fused op chain), its schedule and
where that came from, the path of its generated source in the kernel cache, its FLOPs and
the bytes it must move, and, when profiled, its measured time and share of the whole run.
The report ends with the plan's activation memory (after buffer reuse, and the peak).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .passes import origin
from .runtime.compiled import CompiledNet
from .runtime.plan import Memory, Plan, Step


@dataclass(frozen=True)
class KernelReport:
    layer: str                   # the plan node (named after its last spec layer)
    layers: tuple[str, ...]      # the spec layers it computes, in order
    ops: str                     # the fused op chain, "conv2d -> bn -> relu -> maxpool2d"
    kernel: str
    schedule: str                # "-" for kernels without knobs
    schedule_source: str
    path: Path
    flops: int
    bytes: int
    edge: bool                   # a layout conversion at the net's input or output
    spills: int | None = None    # vector spills/reloads in its reduction loops (None: unknown)
    ms: float | None = None      # median time per launch, when profiled
    share: float | None = None   # of the sum over all launches

    @property
    def source(self) -> str:
        return self.path.read_text()


@dataclass(frozen=True)
class Report:
    net: str
    n_batch: int
    target: str
    kernels: tuple[KernelReport, ...]
    memory: Memory
    run_ms: float | None = None  # median of whole runs, when profiled

    def __str__(self) -> str:
        return format_report(self)


def _entry(plan: Plan, step: Step) -> KernelReport:
    spec = step.call.kernel
    node = next((n for n in plan.graph.nodes if n.name == step.layer), None)
    layers = tuple(n.name for n in origin(node)) if node else (step.layer,)
    has_knobs = spec.schedule is not None
    source = plan.schedule_sources.get(step.layer, "-") if has_knobs else "-"
    if has_knobs and step.layer in plan.spill_fallbacks:
        source += f"; replaced tiles that spilled: {', '.join(plan.spill_fallbacks[step.layer])}"
    return KernelReport(step.layer, layers, " -> ".join(spec.ops), step.kernel.name,
                        str(spec.schedule) if has_knobs else "-", source,
                        step.kernel.path, spec.flops, spec.bytes, step.edge, step.kernel.spills)


def profile_steps(plan: Plan, repeats: int) -> tuple[list[float], float]:
    """Median ms per step over ``repeats`` launches each, and the median whole run."""
    plan.run()  # warm: caches, thread pool
    per_step = []
    clock = time.perf_counter
    for step in plan.steps:
        samples = []
        for _ in range(repeats):
            t0 = clock()
            step()
            samples.append(clock() - t0)
        per_step.append(float(np.median(samples)) * 1e3)
    runs = []
    for _ in range(repeats):
        t0 = clock()
        plan.run()
        runs.append(clock() - t0)
    return per_step, float(np.median(runs)) * 1e3


def explain(net: CompiledNet, n_batch: int = 1, profile: bool = False,
            repeats: int = 20) -> Report:
    """The kernels of ``net``'s plan for ``n_batch``; timed on a random input if ``profile``
    (``repeats`` launches per kernel, the median)."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise InputError(f"repeats: expected an integer >= 1; received {repeats!r}.")
    plan = net.plan(n_batch)
    entries = [_entry(plan, step) for step in plan.steps]
    run_ms = None
    if profile:
        rng = np.random.default_rng(0)
        plan.set_input(rng.standard_normal((n_batch, *net.graph.input.shape), np.float32))
        times, run_ms = profile_steps(plan, repeats)
        total = sum(times)
        entries = [KernelReport(**{**e.__dict__, "ms": ms, "share": ms / total})
                   for e, ms in zip(entries, times)]
    return Report(net.graph.name, n_batch, str(net.target), tuple(entries), plan.memory, run_ms)


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.0f}"


def format_report(report: Report) -> str:
    lines = [f"{report.net}: batch {report.n_batch}, {report.target}, "
             f"{len(report.kernels)} kernel launches"]
    for i, k in enumerate(report.kernels):
        timing = ""
        if k.ms is not None:
            timing = f"   {k.ms:.3f} ms  {100 * k.share:5.1f}%"
        lines.append(f"[{i}] {k.layer}{'  (edge)' if k.edge else ''}{timing}")
        if k.layers != (k.layer,):
            lines.append(f"    layers:   {', '.join(k.layers)}")
        lines.append(f"    ops:      {k.ops}")
        lines.append(f"    kernel:   {k.kernel}")
        lines.append(f"    schedule: {k.schedule}" + (f"  from {k.schedule_source}"
                                                       if k.schedule != "-" else ""))
        lines.append(f"    work:     {_si(k.flops)}FLOP, {_si(k.bytes)}B")
        lines.append("    spills:   " + ("unknown" if k.spills is None else
                                         f"{k.spills} in its reduction loops"))
        lines.append(f"    source:   {k.path}")
    flops = sum(k.flops for k in report.kernels)
    lines.append(f"total: {_si(flops)}FLOP, {_si(sum(k.bytes for k in report.kernels))}B; "
                 f"{report.memory}")
    if report.run_ms is not None:
        lines.append(f"profile: whole run {report.run_ms:.3f} ms (median); "
                     f"{flops / (report.run_ms * 1e-3) / 1e9:.1f} GFLOP/s")
    return "\n".join(lines)
