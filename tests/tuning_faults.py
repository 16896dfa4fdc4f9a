"""Fault runners for the measurement tests: each runs a job as ``run_job`` does, except that
a job with seed ``FAULTY_SEED`` meets its fault (the worker aborts, exits, hangs, or its net
computes a wrong output). Workers load them as ``tests.tuning_faults:<name>``."""
import os
import time
from contextlib import contextmanager

import numpy as np

from cnngen.runtime import plan as plan_module
from cnngen.tuning.measure import run_job

FAULTY_SEED = 13


def aborts(job):
    if job.seed == FAULTY_SEED:
        os.write(1, b"about to abort\n")        # stray output, even on fd 1, goes to stderr
        os.abort()
    return run_job(job)


def exits(job):
    if job.seed == FAULTY_SEED:
        os._exit(3)
    return run_job(job)


def hangs(job):
    while job.seed == FAULTY_SEED:
        time.sleep(3600)
    return run_job(job)


def raises(job):
    if job.seed == FAULTY_SEED:
        raise RuntimeError("runner bug")
    return run_job(job)


@contextmanager
def packed_weights(change):
    """Kernels pack ``change(w)`` instead of each layer's weights ``w`` (the reference,
    which reads the spec's seeded weights, keeps the true ones)."""
    original = plan_module.layer_params

    def changed(node, params):
        packed = original(node, params)
        return {**packed, "w": change(packed["w"].copy())} if "w" in packed else packed

    plan_module.layer_params = changed
    try:
        yield
    finally:
        plan_module.layer_params = original


def scale_first_channel(w):
    w[0] *= 1.1
    return w


def infinite_centre_tap(w):
    w[0, 0, w.shape[2] // 2, w.shape[3] // 2] = np.inf
    return w


def wrong_weights(job):
    """The first output channel's weights 10% too large."""
    if job.seed != FAULTY_SEED:
        return run_job(job)
    with packed_weights(scale_first_channel):
        return run_job(job)


def infinite_weight(job):
    """One infinite weight, at the centre tap (never on padding): outputs of +-inf."""
    if job.seed != FAULTY_SEED:
        return run_job(job)
    with packed_weights(infinite_centre_tap):
        return run_job(job)


class Spilling:
    """The kernel it wraps, reporting ``spills`` vector spills."""

    def __init__(self, kernel, spills: int):
        self._kernel, self.spills = kernel, spills

    def __getattr__(self, name):
        return getattr(self._kernel, name)


@contextmanager
def kernels_spill(layers, spills: int = 7):
    """Plans built meanwhile have the kernels of ``layers`` (fused node names) report spills."""
    original = plan_module.Plan.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        for step in self.steps:
            if step.call.layer in layers:
                step.kernel = Spilling(step.kernel, spills)

    plan_module.Plan.__init__ = init
    try:
        yield
    finally:
        plan_module.Plan.__init__ = original
