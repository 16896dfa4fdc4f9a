"""Trials of weight-gradient schedules: one training step checked, then one layer's timed.

A worker of a ``Measurer(runner=RUNNER)`` runs these jobs as it runs forward ones
(measure.py): the same ``Job`` (its ``layer`` is the layer whose weight gradient takes
``schedule``), the same typed ``Trial``. For each job it builds the training plan with that
schedule (no tuning database, every other layer on the heuristic), and then:

- ``spills``: the weight-gradient kernel spills vector registers in its inner loops;
- ``wrong_result``: after one step on a seeded batch, the layer's parameter gradients are
  off the float64 reference's (``ReferenceExecutor.loss_and_grads``) by more than
  measure.py's TOLERANCE of their largest magnitude. Dropout layers run at rate 0 in both,
  so that their random masks do not differ; the layer's workload does not change;
- ``ok``: the layer's weight-gradient steps (the kernel and its batch-chunk sum) timed as
  forward kernels are, after a warm-up step of the whole plan.
"""
from __future__ import annotations

import numpy as np

from .. import target as targets
from ..codegen.cache import KernelCache
from ..reference import ReferenceExecutor
from ..runtime.parameters import Parameters
from ..runtime.training import TrainPlan
from ..schedule import from_dict
from ..spec import build_graph
from .measure import Job, Trial, failure, machine_lock, mismatch, time_steps

RUNNER = "cnngen.tuning.train_measure:run_grad_job"


def without_dropout(spec: dict) -> dict:
    """``spec`` with every dropout layer at rate 0 (its mask keeps everything)."""
    layers = [dict(layer, rate=0.0) if layer.get("op") == "dropout" else layer
              for layer in spec["layers"]]
    return {**spec, "layers": layers}


def batch_of(graph, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded standard-normal input and targets that fit the loss."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *graph.input.shape)).astype(np.float32)
    if graph.loss.op == "mse":
        return x, rng.standard_normal((batch, *graph.output.out.shape))
    return x, rng.integers(0, graph.output.out.channels, size=batch)


def wgrad_steps(plan: TrainPlan, layer: str) -> list:
    """The plan's steps that the schedule of ``layer``'s weight gradient decides: its
    wgrad kernel and batch-chunk sum (a transposed conv's bias sum, ``channel_sum``, takes
    no schedule and is not timed)."""
    return [s for s in plan.steps[plan.n_scored:]
            if s.layer == layer and "wgrad" in s.call.kernel.template]


def _build_and_check(job: Job):
    """The plan, its batch, the layer's steps, kernel names and target; or a failed Trial."""
    target = None
    try:
        target = targets.resolve(job.target)
        spec = without_dropout(job.spec)
        graph = build_graph(spec)
        ref = ReferenceExecutor(spec, seed=job.seed)
        plan = TrainPlan(graph, job.batch, target, Parameters(graph, ref.weights))
        plan.compile(KernelCache(job.cache_dir), tuning_db=False,
                     schedules={job.layer: from_dict(job.schedule)} if job.schedule else None)
        steps = wgrad_steps(plan, job.layer)
        if not steps:
            raise ValueError(f"layer {job.layer!r} computes no weight gradient in "
                             f"{graph.name!r}")
    except Exception as e:
        return failure(job, "compile_error", f"{type(e).__name__}: {e}", target=target)
    kernel = ", ".join(dict.fromkeys(step.kernel.name for step in steps))
    spills = sum(step.kernel.spills or 0 for step in steps)
    if spills:
        return failure(job, "spills", f"{spills} vector spills/reloads in the inner loops",
                       kernel, spills, target)
    x, y = batch_of(graph, job.batch, job.seed)
    plan.run(x, y)
    _, grads, _ = ref.loss_and_grads(x.astype(np.float64), y)
    for param, want in grads.weights.get(job.layer, {}).items():
        error = mismatch(plan.params.grad_views[job.layer][param].reshape(want.shape), want)
        if error:
            return failure(job, "wrong_result", f"d{param}: {error}", kernel, spills, target)
    return plan, x, y, steps, kernel, spills, target


def run_grad_job(job: Job) -> Trial:
    """The job's Trial, measured in this process (a worker's runner)."""
    with machine_lock(exclusive=False):
        checked = _build_and_check(job)
    if isinstance(checked, Trial):
        return checked
    plan, x, y, steps, kernel, spills, target = checked
    samples = time_steps(lambda x: plan.run(x, y), x, steps, job.repeats, job.min_sample_s)
    q1, median, q3 = np.percentile(samples, [25, 50, 75])
    return Trial("ok", float(median), float(q3 - q1), tuple(samples), spills, kernel,
                 target.fingerprint, str(target))
