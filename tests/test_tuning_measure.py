"""Measurement of one layer's candidate schedules: correct first, then timed; every failure
typed, and a worker that crashes or hangs costs one trial, never the Measurer.

The fault runners live in tests/tuning_faults.py; they fault on jobs with ``FAULTY_SEED``.
The kernels compile once into this module's own cache directory."""
import json
import os
import re
import signal
import threading
import time

import numpy as np
import pytest

from cnngen.schedule import ConvSchedule, to_dict
from cnngen.target import cpu
from cnngen.tuning.measure import (STATUSES, Job, Measurer, Trial, machine_lock, mismatch,
                                   run_job)
from . import tuning_faults
from .tuning_faults import FAULTY_SEED

# conv then a separate relu: they fuse into one node named "act", which computes "conv"
SPEC = {"cnngen": 1, "name": "small_conv", "input": {"shape": [16, 10, 10]},
        "layers": [{"name": "conv", "op": "conv2d", "filters": 32, "kernel": 3, "padding": 1},
                   {"name": "act", "op": "relu"}]}
# Not the heuristic's choice (it prefers two output vectors); a test checks the names differ.
EXPLICIT = ConvSchedule(oc_vecs=1, ow_tile=10, ic_block=1, rows=1)


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    return str(tmp_path_factory.mktemp("measure_kernels"))


@pytest.fixture(scope="module")
def measurer():
    with Measurer(timeout_s=300) as m:
        yield m


def job(cache_dir, schedule=None, layer="conv", seed=0, spec=SPEC):
    return Job(spec, batch=2, layer=layer, schedule=schedule and to_dict(schedule), seed=seed,
               cache_dir=cache_dir, repeats=5)


def assert_ok(trial: Trial, repeats=5):
    assert trial.status == "ok", trial.error
    assert trial.seconds > 0 and trial.spread >= 0 and len(trial.samples) == repeats
    assert min(trial.samples) <= trial.seconds <= max(trial.samples)
    assert trial.fingerprint == cpu().fingerprint and trial.cpu == str(cpu())
    assert trial.error == ""


def test_job_and_trial_round_trip_through_json():
    j = Job(SPEC, 4, "conv", to_dict(EXPLICIT), seed=3, target="cpu-avx2", cache_dir="/c",
            repeats=7, min_sample_s=0.5)
    assert Job.from_json(j.to_json()) == j
    t = Trial("ok", 1e-4, 2e-6, (1e-4, 1.1e-4), None, "conv2d_relu__x", "ab12", "cpu z", "")
    assert Trial.from_json(t.to_json()) == t
    assert json.loads(t.to_json())["status"] in STATUSES
    with pytest.raises(ValueError, match=r"repeats: expected an integer >= 1; received 0"):
        Job(SPEC, 1, "conv", None, repeats=0)


def test_explicit_and_default_schedules_are_checked_then_timed(measurer, kernels):
    explicit = measurer.measure(job(kernels, EXPLICIT))
    default = measurer.measure(job(kernels))
    for trial in (explicit, default):
        assert_ok(trial)
        assert trial.kernel.startswith("conv2d_relu__") and "," not in trial.kernel
        assert trial.spills in (None, 0)
    assert f"__{EXPLICIT}__" in explicit.kernel and explicit.kernel != default.kernel
    assert measurer.started == 1


def test_a_schedule_that_does_not_fit_is_a_compile_error(measurer, kernels):
    # oc_vecs=3 divides no target's count of 32-channel output vectors (2, 4 or 8)
    trial = measurer.measure(job(kernels, ConvSchedule(3, 5, 1, 1)))
    assert trial.status == "compile_error" and trial.seconds is None and trial.samples == ()
    assert "oc" in trial.error and "\n" not in trial.error and trial.error.split(":")[0].isidentifier()
    assert trial.fingerprint == cpu().fingerprint


def test_a_layer_without_a_kernel_is_a_compile_error_that_names_it(kernels):
    trial = run_job(job(kernels, layer="conv_1"))
    assert trial.status == "compile_error"
    assert "'conv_1'" in trial.error and "not a layer" in trial.error and "'conv'" in trial.error


@pytest.mark.parametrize("runner, how", [("aborts", r"killed by SIGABRT; stderr: .*about to abort"),
                                         ("exits", r"exited with code 3")])
def test_a_crashed_worker_costs_one_trial(runner, how, kernels):
    with Measurer(timeout_s=300, runner=f"tests.tuning_faults:{runner}") as m:
        trial = m.measure(job(kernels, seed=FAULTY_SEED))
        assert trial.status == "crash" and trial.seconds is None
        assert re.search(how, trial.error), trial.error
        assert_ok(m.measure(job(kernels)))
        assert m.started == 2


def test_a_runner_that_raises_is_a_crash_and_the_worker_lives_on(kernels):
    with Measurer(timeout_s=300, runner="tests.tuning_faults:raises") as m:
        trial = m.measure(job(kernels, seed=FAULTY_SEED))
        assert trial.status == "crash" and "RuntimeError: runner bug" in trial.error
        assert_ok(m.measure(job(kernels)))
        assert m.started == 1


def test_a_worker_that_died_while_idle_is_replaced_before_the_next_job(kernels):
    with Measurer(timeout_s=300) as m:
        assert_ok(m.measure(job(kernels)))
        os.kill(m._worker.proc.pid, signal.SIGKILL)
        m._worker.proc.wait()
        assert_ok(m.measure(job(kernels)))
        assert m.started == 2


def test_timing_waits_for_the_machine_wide_lock(kernels):
    assert_ok(run_job(job(kernels)))              # built once: the next run goes straight to timing
    trials = []
    with machine_lock():
        timing = threading.Thread(target=lambda: trials.append(run_job(job(kernels))))
        timing.start()
        timing.join(1.0)
        assert timing.is_alive() and not trials
    timing.join(60)
    assert_ok(trials[0])


def test_a_hung_worker_times_out_promptly_and_is_replaced(kernels):
    with Measurer(timeout_s=3, runner="tests.tuning_faults:hangs") as m:
        start = time.monotonic()
        trial = m.measure(job(kernels, seed=FAULTY_SEED))
        assert trial.status == "timeout" and "no answer within 3 s" in trial.error
        assert time.monotonic() - start < 6
        m.timeout_s = 300          # the fresh worker's start-up and compile
        assert_ok(m.measure(job(kernels)))
        assert m.started == 2


def test_a_wrong_output_is_never_timed(kernels):
    with Measurer(timeout_s=300, runner="tests.tuning_faults:wrong_weights") as m:
        trial = m.measure(job(kernels, seed=FAULTY_SEED))
        assert trial.status == "wrong_result" and trial.seconds is None and trial.samples == ()
        assert "max |output - reference|" in trial.error and trial.kernel.startswith("conv2d_relu")
        assert_ok(m.measure(job(kernels, seed=1)))         # the patch was undone


def test_infinite_outputs_where_the_reference_is_finite_are_wrong(kernels):
    trial = tuning_faults.infinite_weight(job(kernels, seed=FAULTY_SEED))
    assert trial.status == "wrong_result" and "not finite where the reference is" in trial.error


def test_mismatch_is_relative_to_the_reference_scale():
    ref = np.array([[100.0, -50.0, 0.0]])
    assert mismatch(np.float32(ref + [[0.05, 0.0, -0.05]]), ref) == ""       # 5e-4 of 100
    assert "0.002 of the reference's largest magnitude 100" in mismatch(ref + [[0, 0, 0.2]], ref)
    assert "1 of 3 outputs are not finite" in mismatch(ref + [[0, np.nan, 0]], ref)
    assert mismatch(ref * 1e-6 + [[0, 0, 1e-9]], ref * 1e-6) == ""
    assert mismatch(ref * 1e-6 + [[0, 0, 1e-6]], ref * 1e-6) != ""


def test_only_the_layers_own_kernels_spills_count(kernels):
    spec = {**SPEC, "layers": [*SPEC["layers"],
                               {"name": "conv2", "op": "conv2d", "filters": 16, "kernel": 1}]}
    with tuning_faults.kernels_spill({"conv2"}):
        spilling = run_job(job(kernels, layer="conv2", spec=spec))
        other = run_job(job(kernels, layer="conv", spec=spec))
    assert spilling.status == "spills" and spilling.spills == 7
    assert spilling.seconds is None and spilling.samples == () and "conv2d" in spilling.kernel
    assert_ok(other)
    assert other.spills in (None, 0)
