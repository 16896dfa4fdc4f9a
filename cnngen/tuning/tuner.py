"""Tuning a network: each distinct kernel's space searched, measured in workers, recorded.

    report = cnngen.tune("resnet18.yaml", batch=1, trials=64, db="tuning.db")

The net is compiled with the heuristic first (so every other kernel is in the cache). Then,
kernel by kernel (one per distinct workload: ResNet-18's repeated blocks are tuned once),
the heuristic's own schedule is measured, and a search strategy proposes candidates from
the kernel's space (``codegen.cpu.SPACE``: register tiles, ic blocking, task rows, and the
algorithm, direct or Winograd). Each candidate is compiled, checked against the float64
reference and timed in a worker process (measure.py); every trial, failed ones too, is
written to the database at once, under the fingerprint of the machine that measured it.
A second run on the same database measures nothing it already has, and records are applied
by ``cnngen.compile`` (explicit schedule > record > heuristic).

``tune_training`` does the same for the weight-gradient kernels of a training step
(``codegen.cpu.GRAD_SPACE``: register tiles, batch chunks, kernel-row tasks; a transposed
conv's is its adjoint conv's wgrad, roles swapped), measured by
train_measure.py and keyed by the gradient's workload; ``TrainPlan.compile`` applies them.

Measurement fans out over a Dask cluster: ``workers=N`` starts a LocalCluster of N worker
processes, ``scheduler="tcp://..."`` uses an existing cluster of identical machines. Timing
holds a machine-wide lock in each worker, so compiles overlap and timed runs never do.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import schedule as sched
from .. import target as targets
from ..codegen.cache import KernelCache
from ..codegen.cpu import GRAD_SPACE, SPACE
from ..errors import CnngenError, InputError
from ..passes import origin
from ..runtime.compiled import DEFAULT_DB_NAME, CompiledNet
from ..runtime.parameters import Parameters
from ..runtime.training import TrainPlan
from ..spec import build_graph, load_spec
from ..weights import init_weights
from . import train_measure
from .db import Context, TrialRecord, TuningDB
from .measure import RUNNER, Job, Measurer, Trial
from .search import STRATEGIES, Measurement, search
from .workload import (describe, describe_grad, grad_kernel_family, grad_workload_key,
                       kernel_family, template_hash, workload_key)

# Seconds a worker may take for one candidate (compile, reference check, timing) before
# it counts as hung; the first job of a fresh worker also loads the net and its reference.
JOB_TIMEOUT_S = 300.0


@dataclass
class KernelToTune:
    """One distinct kernel of the net: where it is, what it computes, what it may take."""

    layer: str                  # the first spec layer of its fused chain (schedules' key)
    node: str                   # the plan node
    family: str                 # "conv2d", "dense", ...
    key: str                    # workload key in the database
    workload: str               # its description (JSON)
    flops: int                  # nominal, at the tuned batch
    points: list[sched.Schedule]
    default: sched.Schedule     # what the heuristic picks


@dataclass
class KernelResult:
    kernel: KernelToTune
    default: Measurement | None
    best: sched.Schedule | None
    best_measurement: Measurement | None
    new_trials: int
    known_trials: int
    stopped: str
    history: list[tuple[int, float]] = field(default_factory=list)

    @property
    def speedup(self) -> float | None:
        if self.default is None or self.best_measurement is None:
            return None
        return self.default.seconds / self.best_measurement.seconds


@dataclass
class TuneReport:
    db: Path
    batch: int
    target: str
    strategy: str
    results: list[KernelResult]
    seconds: float

    def __str__(self) -> str:
        # wide enough for the longest family ("conv_transpose2d_wgrad")
        family = max([12, *(len(r.kernel.family) for r in self.results)])
        lines = [f"tuned {len(self.results)} kernels at batch {self.batch} on {self.target} "
                 f"({self.strategy}, {self.seconds:.0f} s); records in {self.db}",
                 f"{'layer':<28} {'kernel':<{family}} {'default ms':>10} {'tuned ms':>9} "
                 f"{'speedup':>7} {'GFLOP/s':>7} {'trials':>9}  schedule"]
        for r in self.results:
            ms = lambda m: f"{m.seconds * 1e3:.3f}" if m else "-"     # noqa: E731
            best = r.best_measurement
            gflops = f"{r.kernel.flops / best.seconds / 1e9:.0f}" if best else "-"
            speedup = f"{r.speedup:.2f}x" if r.speedup else "-"
            lines.append(f"{r.kernel.layer:<28} {r.kernel.family:<{family}} {ms(r.default):>10} "
                         f"{ms(best):>9} {speedup:>7} {gflops:>7} "
                         f"{r.new_trials:>4}+{r.known_trials:<4}  {r.best or '-'}")
        return "\n".join(lines)


def kernels_to_tune(net: CompiledNet, batch: int, layers=None) -> list[KernelToTune]:
    """The net's distinct tunable kernels at ``batch`` (only those computing ``layers``,
    spec layer names, when given), in the order they run."""
    plan = net.plan(batch)
    found: dict[str, KernelToTune] = {}
    for step in plan.steps:
        low = plan.lowerings.get(step.call.layer)
        if low is None or low.node.op not in SPACE or step.call.kernel.schedule is None:
            continue
        chain = [n.name for n in origin(low.node)]
        if layers is not None and not set(chain) & set(layers):
            continue
        key = workload_key(low.node)
        if key not in found:
            default = step.call.kernel.schedule      # first: the search reads it as the best guess
            points = [default, *(p for p in SPACE[low.node.op](low) if p != default)]
            found[key] = KernelToTune(chain[0], low.node.name, kernel_family(low.node), key,
                                      json.dumps(describe(low.node), sort_keys=True),
                                      step.call.kernel.flops, points, default)
    return list(found.values())


def grad_kernels_to_tune(plan: TrainPlan, layers=None) -> list[KernelToTune]:
    """The training plan's distinct weight-gradient kernels (only those of ``layers``, when
    given), one per gradient workload, in the order they run."""
    found: dict[str, KernelToTune] = {}
    for step in plan.steps[plan.n_scored:]:
        g = plan.grad_lowerings.get(step.layer)
        if (g is None or g.node.op not in GRAD_SPACE or step.call.kernel.schedule is None
                or "wgrad" not in step.call.kernel.template
                or (layers is not None and step.layer not in layers)):
            continue
        key = grad_workload_key(g.node)
        if key not in found:
            default = step.call.kernel.schedule
            points = [default, *(p for p in GRAD_SPACE[g.node.op](g) if p != default)]
            found[key] = KernelToTune(step.layer, step.layer, grad_kernel_family(g.node), key,
                                      json.dumps(describe_grad(g.node), sort_keys=True),
                                      step.call.kernel.flops, points, default)
    return list(found.values())


class LocalExecutor:
    """One worker process on this machine, measuring one candidate at a time with
    ``runner`` (measure.py's for forward kernels, train_measure.py's for weight gradients)."""

    def __init__(self, timeout_s: float, runner: str = RUNNER):
        self.measurer = Measurer(timeout_s, runner)
        self.workers = 1

    def map(self, jobs: list[Job]) -> list[Trial]:
        return [self.measurer.measure(job) for job in jobs]

    def close(self) -> None:
        self.measurer.close()


_MEASURERS: dict[str, Measurer] = {}


def measure_here(job_json: str, timeout_s: float, runner: str = RUNNER) -> str:
    """Measure one job in this (Dask worker) process's own Measurer; the Trial as JSON."""
    if runner not in _MEASURERS:
        _MEASURERS[runner] = Measurer(timeout_s, runner)
    return _MEASURERS[runner].measure(Job.from_json(job_json)).to_json()


class DaskExecutor:
    """Candidates measured on a Dask cluster: a LocalCluster of ``workers`` processes, or
    the existing cluster at ``scheduler``. Each Dask worker keeps its own Measurer."""

    def __init__(self, workers: int | None, scheduler: str | None, timeout_s: float,
                 runner: str = RUNNER):
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError as error:
            raise CnngenError("tuning with --workers or --scheduler needs Dask: "
                              "pip install 'cnngen[distributed]'") from error
        self.timeout_s, self.runner = timeout_s, runner
        self.cluster = None
        if scheduler:
            self.client = Client(scheduler, timeout="30s")
        else:
            self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1,
                                        processes=True, dashboard_address=None)
            self.client = Client(self.cluster)
        self.workers = max(1, len(self.client.scheduler_info()["workers"]))

    def map(self, jobs: list[Job]) -> list[Trial]:
        futures = self.client.map(measure_here, [j.to_json() for j in jobs],
                                  [self.timeout_s] * len(jobs), [self.runner] * len(jobs),
                                  pure=False)
        return [Trial.from_json(text) for text in self.client.gather(futures)]

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _check(strategy, trials, time_budget_s, workers, batch) -> None:
    if strategy not in STRATEGIES:
        raise InputError(f"strategy: expected one of {', '.join(STRATEGIES)}; received {strategy!r}.")
    for name, value, least in (("trials", trials, 1), ("batch", batch, 1), ("workers", workers, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InputError(f"{name}: expected an integer >= {least}; received {value!r}.")
    if time_budget_s is not None and not (isinstance(time_budget_s, (int, float))
                                          and time_budget_s > 0):
        raise InputError(f"time_budget_s: expected seconds > 0 or None; received {time_budget_s!r}.")


class _Session:
    """What tuning one kernel needs: the jobs' common fields, the executor, the database."""

    def __init__(self, spec, batch, target_name, cache_dir, executor, db, context, strategy):
        self.spec, self.batch, self.target_name = spec, batch, target_name
        self.cache_dir, self.executor, self.db = cache_dir, executor, db
        self.context, self.strategy = context, strategy

    def measure(self, kernel: KernelToTune, schedules, strategy: str) -> list[Trial]:
        """Trials of ``schedules`` (None: the heuristic's), each recorded at once."""
        jobs = [Job(self.spec, self.batch, kernel.layer, None if s is None else sched.to_dict(s),
                    target=self.target_name, cache_dir=self.cache_dir) for s in schedules]
        trials = self.executor.map(jobs)
        self.db.add_many([self._record(kernel, s or kernel.default, t, strategy)
                          for s, t in zip(schedules, trials)])
        return trials

    def _record(self, kernel, schedule, trial: Trial, strategy: str) -> TrialRecord:
        # written under the machine that measured it (a remote worker may differ)
        context = dataclasses.replace(self.context, fingerprint=trial.fingerprint or
                                      self.context.fingerprint, cpu=trial.cpu or self.context.cpu)
        gflops = kernel.flops / trial.seconds / 1e9 if trial.status == "ok" else None
        return TrialRecord(kernel.key, kernel.workload, kernel.family, self.batch,
                           sched.to_dict(schedule), trial.status, trial.seconds, trial.spread,
                           gflops, trial.spills, trial.error, context, strategy)


def _measurement(trial: Trial) -> Measurement | None:
    return Measurement(trial.seconds, trial.spread) if trial.status == "ok" else None


def _known(db: TuningDB, kernel: KernelToTune, batch: int, context: Context):
    records = db.measured(kernel.key, batch, context).values()
    return {sched.from_dict(r.schedule): (Measurement(r.seconds, r.spread or 0.0)
                                          if r.status == "ok" else None) for r in records}


def tune_kernel(session: _Session, kernel: KernelToTune, trials: int, time_budget_s,
                seed: int, progress: bool) -> KernelResult:
    """Search one kernel's space; the heuristic's schedule is measured first (once per
    database) and again after a search that measured anything, its faster time reported."""
    from tqdm import tqdm

    start = time.monotonic()
    known = _known(session.db, kernel, session.batch, session.context)
    if kernel.default not in known:
        known[kernel.default] = _measurement(session.measure(kernel, [None], "heuristic")[0])
    default = known[kernel.default]
    bar = tqdm(total=trials, desc=f"{kernel.layer} ({kernel.family})", disable=not progress,
               unit="trial", leave=True)
    best = [default]

    def measure(batch):
        return [_measurement(t) for t in session.measure(kernel, batch, session.strategy)]

    def on_result(schedule, measurement):
        if measurement and (best[0] is None or measurement.seconds < best[0].seconds):
            best[0] = measurement
        if bar.n < trials:            # a close call's re-measures are not new trials
            bar.update(1)
        if best[0]:
            bar.set_postfix_str(f"best {best[0].seconds * 1e3:.3f} ms, "
                                f"{kernel.flops / best[0].seconds / 1e9:.0f} GFLOP/s")

    left = None if time_budget_s is None else max(0.0, time_budget_s - (time.monotonic() - start))
    try:
        result = search(kernel.points, measure, strategy=session.strategy, trials=trials,
                        time_budget_s=left, seed=seed, known=known,
                        patience=max(32, trials // 2), batch_size=2 * session.executor.workers,
                        on_result=on_result)
    finally:
        bar.close()
    if result.measured:
        # once more at the end: noise on a shared machine only slows a trial down, and the
        # search's best is already the fastest of many, so the heuristic gets two tries
        again = _measurement(session.measure(kernel, [None], "heuristic")[0])
        if again is not None and (default is None or again.seconds < default.seconds):
            default = again
    # what compile will apply: the database's pick over every trial of this context
    record = session.db.best(kernel.key, session.batch, session.context).record
    best = (None, None) if record is None else (
        sched.from_dict(record.schedule), Measurement(record.seconds, record.spread or 0.0))
    return KernelResult(kernel, default, *best, len(result.measured), len(known),
                        result.stopped, result.history)


def tune(spec, batch: int = 1, trials: int = 64, time_budget_s: float | None = None,
         strategy: str = "evolve", db=None, workers: int = 1, scheduler: str | None = None,
         seed: int = 0, target="cpu", cache_dir=None, layers=None, progress: bool = True,
         plot=None) -> TuneReport:
    """Tune every distinct conv and dense kernel of ``spec`` at ``batch``; the records go to
    ``db`` (default: ``tuning.db`` beside the kernel cache, where ``cnngen.compile`` looks).

    ``trials`` new candidates per kernel at most; ``time_budget_s`` for the whole run, shared
    equally by the kernels not yet tuned. ``workers`` > 1 or ``scheduler`` measure on Dask.
    ``plot``: a PNG path for the convergence curves (needs matplotlib)."""
    _check(strategy, trials, time_budget_s, workers, batch)
    started = time.monotonic()
    spec = load_spec(spec) if isinstance(spec, (str, os.PathLike)) else spec
    build_graph(spec)                                  # a bad spec fails here, clearly
    target_obj = targets.resolve(target)
    net = CompiledNet(spec, target=target_obj, cache_dir=cache_dir, tuning_db=False)
    report = _tune_kernels(kernels_to_tune(net, batch, layers), RUNNER, spec, batch, target,
                           db, cache_dir, strategy, trials, time_budget_s, workers, scheduler,
                           seed, progress, started)
    if plot is not None:
        plot_convergence(report, plot)
    return report


def tune_training(spec, batch: int = 32, trials: int = 64, time_budget_s: float | None = None,
                  strategy: str = "evolve", db=None, workers: int = 1,
                  scheduler: str | None = None, seed: int = 0, target="cpu", cache_dir=None,
                  layers=None, progress: bool = True, plot=None) -> TuneReport:
    """Tune the weight-gradient kernel of every distinct conv, transposed conv and dense
    layer of ``spec``'s training step at ``batch``; the records go to ``db`` (default:
    ``tuning.db`` beside the kernel cache), keyed by the gradient's workload
    (``describe_grad``), where ``TrainPlan.compile`` (so ``cnngen.Trainer``) finds them.
    The arguments are ``tune``'s; ``layers`` names layers of the training graph. Each
    candidate is checked against the reference gradients before it is timed
    (train_measure.py)."""
    _check(strategy, trials, time_budget_s, workers, batch)
    started = time.monotonic()
    spec = load_spec(spec) if isinstance(spec, (str, os.PathLike)) else spec
    graph = build_graph(spec)
    target_obj = targets.resolve(target)
    plan = TrainPlan(graph, batch, target_obj, Parameters(graph, init_weights(graph, seed)))
    plan.compile(KernelCache(cache_dir), tuning_db=False)
    report = _tune_kernels(grad_kernels_to_tune(plan, layers), train_measure.RUNNER, spec,
                           batch, target, db, cache_dir, strategy, trials, time_budget_s,
                           workers, scheduler, seed, progress, started)
    if plot is not None:
        plot_convergence(report, plot)
    return report


def _tune_kernels(kernels, runner, spec, batch, target, db, cache_dir, strategy, trials,
                  time_budget_s, workers, scheduler, seed, progress, started) -> TuneReport:
    """Search each of ``kernels`` in turn, measured by ``runner`` in workers; the report."""
    target_obj = targets.resolve(target)
    target_name = target if isinstance(target, str) else f"cpu-{target_obj.isa}"
    cache = KernelCache(cache_dir)
    db_path = Path(db) if db is not None else cache.dir / DEFAULT_DB_NAME
    context = Context.current(target_obj, template_hash())
    executor = (DaskExecutor(workers, scheduler, JOB_TIMEOUT_S, runner)
                if workers > 1 or scheduler else LocalExecutor(JOB_TIMEOUT_S, runner))
    results = []
    try:
        with TuningDB(db_path) as database:
            session = _Session(spec, batch, target_name,
                               None if scheduler else str(cache.dir), executor, database,
                               context, strategy)
            for i, kernel in enumerate(kernels):
                budget = None
                if time_budget_s is not None:
                    budget = (time_budget_s - (time.monotonic() - started)) / (len(kernels) - i)
                    if budget <= 0:
                        break
                results.append(tune_kernel(session, kernel, trials, budget, seed, progress))
    finally:
        executor.close()
    return TuneReport(db_path, batch, str(target_obj), strategy, results,
                      time.monotonic() - started)


def plot_convergence(report: TuneReport, path) -> Path:
    """A PNG of each kernel's best time so far against trials, relative to its heuristic."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise CnngenError("the convergence plot needs matplotlib: "
                          "pip install 'cnngen[plot]'") from error
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)      # a colour per kernel up to 20
    for r in report.results:
        points = [(n, r.default.seconds / s) for n, s in r.history
                  if r.default is not None and s != float("inf")]
        if points:
            ax.plot(*zip(*points), marker=".", label=r.kernel.layer)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("trials (earlier runs' included)")
    ax.set_ylabel("speed-up over the heuristic schedule")
    ax.set_title(f"cnngen tune, batch {report.batch}, {report.strategy}: {report.target}",
                 fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
