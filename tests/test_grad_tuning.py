"""The backward kernels' schedules: the tuner's space (every point legal, a sample of it
against the float64 reference at both SIMD widths), the heuristic's spill fallback in a
training plan, tuning records of weight gradients applied by TrainPlan, and tune_training
end to end. Transposed convs' weight gradients (the adjoint conv's wgrad, roles swapped)
take the same path: space, records, train_measure's checked trials."""
import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest

import cnngen
from cnngen import schedule as sched
from cnngen.cli import main
from cnngen.codegen.cache import KernelCache
from cnngen.codegen.cpu import GRAD_SPACE, GradLowering
from cnngen.codegen.cpu import conv_grad
from cnngen.codegen.cpu.dense_grad import lower_dense_grad
from cnngen.codegen.kernel import ParamGrad
from cnngen.codegen.layout import Blocked
from cnngen.errors import InputError
from cnngen.runtime.parameters import Parameters
from cnngen.runtime.training import TrainPlan
from cnngen.schedule import DenseWgradSchedule, WgradSchedule
from cnngen.spec import build_graph
from cnngen.target import resolve
from cnngen.tuning import workload
from cnngen.tuning.db import Context, TrialRecord, TuningDB, TuningDBError
from cnngen.tuning.measure import Job
from cnngen.tuning.train_measure import run_grad_job
from cnngen.tuning.tuner import KernelResult, KernelToTune, TuneReport, grad_kernels_to_tune

from .kernel_harness import run_calls
from . import test_conv_transpose_grad as transposed
from .test_conv_grad import assert_close, lowered, run_backward
from .test_cpu_ops import TARGETS
from .workloads import single

CONV = single("conv2d", (5, 7, 9), filters=20, kernel=3, padding=1)
DEPTHWISE = single("conv2d", (18, 6, 7), filters=18, kernel=[3, 5], groups=18,
                   padding=[[1, 1], [2, 2]])
DENSE = {"cnngen": 1, "name": "t", "input": {"shape": [37]},
         "layers": [{"name": "y", "op": "dense", "units": 21}]}


def sample(space, k, seed=0):
    """The heuristic's point and ``k`` others drawn at random (seeded)."""
    return [space[0], *random.Random(seed).sample(space[1:], k)]


def dense_lowering(n, target, schedule=None):
    graph = build_graph(DENSE)
    node = graph.nodes[0]
    x, y = Blocked.of(graph.input, target.vector), Blocked.of(node.out, target.vector)
    return graph, GradLowering(node, (x,), y, y, (None,), True, n, target, schedule)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("spec", [CONV, DEPTHWISE], ids=["conv", "depthwise"])
def test_every_point_of_the_wgrad_space_is_legal_and_the_heuristic_comes_first(spec, target):
    t = resolve(target)
    _, g, calls = lowered(spec, 5, t, data=False)
    space = GRAD_SPACE["conv2d"](g)
    assert space[0] == calls[0].kernel.schedule and len(set(space)) == len(space) > 10
    for point in space:      # lowering checks the schedule against the layer (no compile)
        _, _, calls = lowered(spec, 5, t, data=False, schedule=point)
        assert calls[0].kernel.schedule == point


@pytest.mark.parametrize("target", TARGETS)
def test_every_point_of_the_dense_wgrad_space_is_legal(target):
    t = resolve(target)
    _, g = dense_lowering(40, t)
    space = GRAD_SPACE["dense"](g)
    assert space[0] == lower_dense_grad(g)[0].kernel.schedule and len(set(space)) == len(space)
    assert {s.splits for s in space} == {1, 2, 4, 8}
    for point in space:
        _, g = dense_lowering(40, t, point)
        assert lower_dense_grad(g)[0].kernel.schedule == point


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("spec, k", [(CONV, 3), (DEPTHWISE, 1)], ids=["conv", "depthwise"])
def test_sampled_wgrad_space_points_match_the_reference(spec, k, target, kernel_cache):
    t = resolve(target)
    _, g, _ = lowered(spec, 3, t, data=False)
    for point in sample(GRAD_SPACE["conv2d"](g), k):
        node, _, out, grads = run_backward(spec, 3, t, kernel_cache, data=False, schedule=point)
        for param in ("w", "b"):
            assert_close(out[ParamGrad("y", param)], grads.weights["y"][param],
                         f"{point} d{param}")


@pytest.mark.parametrize("target", TARGETS)
def test_sampled_dense_wgrad_space_points_match_the_reference(target, kernel_cache):
    t = resolve(target)
    n = 9
    graph, g = dense_lowering(n, t)
    ref = cnngen.ReferenceExecutor(DENSE, seed=1)
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((n, 37)), rng.standard_normal((n, 21))
    grads = ref.backward(ref.forward(x), dy)
    for point in sample(GRAD_SPACE["dense"](g), 2):
        _, g = dense_lowering(n, t, point)
        calls = lower_dense_grad(g)
        layouts = {graph.input_name: g.ins[0], "y:grad": g.d_out, **g.temps}
        out = run_calls(calls, layouts, {graph.input_name: x, "y:grad": dy}, ref.weights, n, t,
                        kernel_cache)
        for param in ("w", "b"):
            assert_close(out[ParamGrad("y", param)], grads.weights["y"][param],
                         f"{point} d{param}")


def test_a_dense_schedule_that_does_not_fit_names_the_layer():
    _, g = dense_lowering(4, resolve(TARGETS[-1]), DenseWgradSchedule(2, 5, 1))
    with pytest.raises(InputError, match=r"'y' \(dense\).*unit_vecs=2 must divide the 3 "
                                         r"unit vectors; in_tile=5"):
        lower_dense_grad(g)


# A conv whose weight gradient can take a 4 x 8 tile (32 accumulators: more than either
# register file holds, beside the 4 dy vectors) at both widths.
NET = {"cnngen": 1, "name": "g", "input": {"shape": [16, 5, 7]},
       "layers": [{"name": "c", "op": "conv2d", "filters": 64, "kernel": 3, "padding": 1,
                   "activation": "relu"},
                  {"name": "flat", "op": "flatten"},
                  {"name": "out", "op": "dense", "units": 3}],
       "loss": {"op": "softmax_cross_entropy"}}
SPILLING = WgradSchedule(oc_vecs=4, cols=8, axis=0, chunks=1, kh_tasks=1, pairs=0)
CLEAN = WgradSchedule(oc_vecs=2, cols=4, axis=0, chunks=1, kh_tasks=1, pairs=0)


def train_plan(target, batch=2):
    graph = build_graph(NET)
    ref = cnngen.ReferenceExecutor(NET, seed=1)
    return TrainPlan(graph, batch, resolve(target), Parameters(graph, ref.weights)), ref


def wgrad_call(plan, layer="c"):
    return next(s.call for s in plan.steps[plan.n_scored:]
                if s.layer == layer and s.call.kernel.template == "conv2d_wgrad")


def assert_gradients_match(plan, ref, batch=2):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 16, 5, 7)).astype(np.float32)
    y = rng.integers(0, 3, size=batch)
    plan.run(x, y)
    _, grads, _ = ref.loss_and_grads(x.astype(np.float64), y)
    for param in ("w", "b"):
        want = grads.weights["c"][param]
        assert_close(plan.params.grad_views["c"][param], want, f"d{param}")


@pytest.mark.parametrize("target", TARGETS)
def test_a_heuristic_wgrad_tile_that_spills_is_replaced_by_the_next(target, kernel_cache,
                                                                    monkeypatch):
    monkeypatch.setattr(conv_grad, "wgrad_ranked", lambda work, target: [SPILLING, CLEAN])
    plan, ref = train_plan(target)
    plan.compile(KernelCache(kernel_cache), tuning_db=False)
    assert wgrad_call(plan).kernel.schedule == CLEAN
    assert plan.spill_fallbacks["c"][0].startswith(f"{SPILLING} spilled ")
    assert next(s.kernel for s in plan.steps if s.call == wgrad_call(plan)).spills == 0
    assert_gradients_match(plan, ref)


def test_the_spill_fallback_stops_after_three_retries(kernel_cache, monkeypatch):
    spilling = [WgradSchedule(4, cols, 0, 1, 1, 0) for cols in (8, 9, 10, 11, 12)]
    monkeypatch.setattr(conv_grad, "wgrad_ranked", lambda work, target: spilling)
    plan, ref = train_plan(TARGETS[-1])
    plan.compile(KernelCache(kernel_cache), tuning_db=False)
    assert [f.split()[0] for f in plan.spill_fallbacks["c"]] == [str(s) for s in spilling[:3]]
    assert wgrad_call(plan).kernel.schedule == spilling[3]
    assert_gradients_match(plan, ref)       # the steps are bound to what was lowered last


def test_an_explicit_wgrad_schedule_is_kept_even_when_it_spills(kernel_cache):
    plan, ref = train_plan(TARGETS[-1])
    plan.compile(KernelCache(kernel_cache), schedules={"c": SPILLING}, tuning_db=False)
    assert wgrad_call(plan).kernel.schedule == SPILLING and "c" not in plan.spill_fallbacks
    assert plan.grad_schedule_sources["c"] == "explicit (schedules['c'])"
    assert_gradients_match(plan, ref)


def test_an_explicit_schedule_of_the_wrong_kind_names_what_the_layer_takes(kernel_cache):
    plan, _ = train_plan(TARGETS[-1])
    with pytest.raises(InputError, match=r"schedules\['c'\].*takes a WgradSchedule.*"
                                         r"received DenseWgradSchedule"):
        plan.compile(KernelCache(kernel_cache), schedules={"c": DenseWgradSchedule(1, 1, 1)},
                     tuning_db=False)


def record(plan, layer, schedule, seconds=1e-3):
    node = plan.grad_lowerings[layer].node
    return TrialRecord(workload.grad_workload_key(node),
                       str(workload.describe_grad(node)), workload.grad_kernel_family(node),
                       plan.n_batch, sched.to_dict(schedule), "ok", seconds, 0.0, 1.0, 0, "",
                       Context.current(plan.target, workload.template_hash()), "test")


def test_a_tuning_record_is_picked_up_by_the_training_plan(tmp_path, kernel_cache):
    """The database beside the kernel cache, as the Trainer compiles its plans."""
    cache = KernelCache(tmp_path)
    plan, ref = train_plan(TARGETS[-1])
    with TuningDB(tmp_path / "tuning.db") as db:
        db.add_many([record(plan, "c", CLEAN), record(plan, "c", SPILLING, seconds=2e-3)])
    plan.compile(cache)
    assert wgrad_call(plan).kernel.schedule == CLEAN
    assert plan.grad_schedule_sources["c"].startswith(f"tuning database {tmp_path / 'tuning.db'}")
    assert plan.grad_schedule_sources["out"].startswith("heuristic (")     # no record of it
    assert_gradients_match(plan, ref)


def test_a_weight_gradient_record_never_serves_the_forward_kernel():
    plan, _ = train_plan(TARGETS[-1])
    node = plan.grad_lowerings["c"].node
    assert workload.grad_workload_key(node) != workload.workload_key(node)


def test_a_corrupt_database_stops_the_training_plan_with_its_name(tmp_path):
    db = tmp_path / "tuning.db"
    db.write_bytes(b"not a database at all" * 100)
    plan, _ = train_plan(TARGETS[-1])
    with pytest.raises(TuningDBError, match=rf"{db} is corrupt"):
        plan.compile(KernelCache(tmp_path))


def test_a_foreign_database_stops_the_training_plan_with_its_name(tmp_path):
    import sqlite3
    db = tmp_path / "tuning.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE other (x)")
    plan, _ = train_plan(TARGETS[-1])
    with pytest.raises(TuningDBError, match=rf"{db} is not a cnngen tuning database"):
        plan.compile(KernelCache(tmp_path))


def test_tune_training_records_each_weight_gradient_and_the_trainer_applies_them(tmp_path,
                                                                              capsys):
    """``cnngen tune --training``: the dense and conv weight gradients, each checked (a
    dropout layer does not upset the check) and timed; the Trainer's plan applies the best."""
    spec = {"cnngen": 1, "name": "tt", "input": {"shape": [3, 11]},
            "layers": [{"name": "c", "op": "conv1d", "filters": 5, "kernel": 3,
                        "activation": "tanh"},
                       {"name": "drop", "op": "dropout", "rate": 0.5},
                       {"name": "flat", "op": "flatten"},
                       {"name": "out", "op": "dense", "units": 4}],
            "loss": {"op": "softmax_cross_entropy"}}
    path = tmp_path / "tt.json"
    path.write_text(json.dumps(spec))
    assert main(["tune", str(path), "--training", "--batch", "4", "--trials", "2",
                 "--strategy", "random", "--cache-dir", str(tmp_path), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "dense_wgrad" in printed and "conv1d_wgrad" in printed
    with TuningDB(tmp_path / "tuning.db") as db:
        rows = {row["kernel"]: row for row in db.report()}
    assert set(rows) == {"dense_wgrad", "conv1d_wgrad"}
    assert all(row["ok"] >= 2 for row in rows.values()), rows      # checked, then timed
    trainer = cnngen.Trainer(spec, batch_size=4, cache_dir=tmp_path)
    trainer.train_step(np.zeros((4, 3, 11), np.float32), np.zeros(4, np.int64))
    plan = trainer._plans[4]
    for layer, kernel in (("c", "conv1d_wgrad"), ("out", "dense_wgrad")):
        assert plan.grad_schedule_sources[layer].startswith("tuning database")
        best = sched.from_dict(rows[kernel]["best_schedule"])
        assert best in {s.call.kernel.schedule for s in plan.steps if s.layer == layer}


# Transposed convs: the adjoint conv's c_out is the layer's 18 input channels (2 vectors
# at AVX-512, 3 at AVX2), its c_in the 9 filters.
TRANSPOSED = single("conv_transpose2d", (18, 3, 4), filters=9, kernel=3, stride=2, padding=1,
                    output_padding=1)
TRANSPOSED_DEPTHWISE = single("conv_transpose1d", (6, 7), filters=6, kernel=3, groups=6,
                              stride=2, padding=1)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("spec", [TRANSPOSED, TRANSPOSED_DEPTHWISE],
                         ids=["conv_transpose2d", "conv_transpose1d_depthwise"])
def test_every_point_of_a_transposed_conv_wgrad_space_is_legal(spec, target):
    t = resolve(target)
    node, g, calls = transposed.lowered(spec, 3, t, data=False)
    space = GRAD_SPACE[node.op](g)
    assert space[0] == calls[0].kernel.schedule and len(set(space)) == len(space) > 5
    for point in space:
        _, _, calls = transposed.lowered(spec, 3, t, data=False, schedule=point)
        assert calls[0].kernel.schedule == point


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("spec, k", [(TRANSPOSED, 2), (TRANSPOSED_DEPTHWISE, 1)],
                         ids=["conv_transpose2d", "conv_transpose1d_depthwise"])
def test_sampled_transposed_conv_wgrad_space_points_match_the_reference(spec, k, target,
                                                                        kernel_cache):
    t = resolve(target)
    node, g, _ = transposed.lowered(spec, 3, t, data=False)
    for point in sample(GRAD_SPACE[node.op](g), k):
        _, _, out, grads = transposed.run_backward(spec, 3, t, kernel_cache, data=False,
                                                   schedule=point)
        for param in ("w", "b"):
            assert_close(out[ParamGrad("y", param)], grads.weights["y"][param],
                         f"{point} d{param}")


# A decoder layer trained on its own: a transposed conv under an MSE loss.
DECODER = {"cnngen": 1, "name": "decoder", "input": {"shape": [18, 3, 4]},
           "layers": [{"name": "dec", "op": "conv_transpose2d", "filters": 9, "kernel": 3,
                       "stride": 2, "padding": 1, "output_padding": 1}],
           "loss": {"op": "mse"}}


def decoder_plan(target, batch=2):
    graph = build_graph(DECODER)
    ref = cnngen.ReferenceExecutor(DECODER, seed=1)
    return TrainPlan(graph, batch, resolve(target), Parameters(graph, ref.weights)), ref


def decoder_wgrad_schedule(plan):
    [schedule] = [s.call.kernel.schedule for s in plan.steps[plan.n_scored:]
                  if s.layer == "dec" and s.call.kernel.template == "conv2d_wgrad"]
    return schedule


@pytest.mark.parametrize("target", TARGETS)
def test_a_transposed_conv_tuning_record_is_picked_up_by_the_training_plan(target, tmp_path,
                                                                         kernel_cache):
    plan, ref = decoder_plan(target)
    g = plan.grad_lowerings["dec"]
    heuristic, *others = GRAD_SPACE["conv_transpose2d"](g)
    tuned = random.Random(1).choice(others)
    with TuningDB(tmp_path / "tuning.db") as db:
        db.add_many([record(plan, "dec", tuned)])
    plan.compile(KernelCache(kernel_cache), tuning_db=tmp_path / "tuning.db")
    assert decoder_wgrad_schedule(plan) == tuned != heuristic
    assert plan.grad_schedule_sources["dec"].startswith("tuning database")
    [kernel] = grad_kernels_to_tune(plan)
    assert (kernel.layer, kernel.family, kernel.key, kernel.default) == (
        "dec", "conv_transpose2d_wgrad", workload.grad_workload_key(g.node), tuned)
    assert json.loads(kernel.workload)["ops"][0]["op"] == "conv_transpose2d"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 18, 3, 4)).astype(np.float32)
    y = rng.standard_normal((2, 9, 6, 8))
    plan.run(x, y)
    _, grads, _ = ref.loss_and_grads(x.astype(np.float64), y)
    for param in ("w", "b"):
        assert_close(plan.params.grad_views["dec"][param], grads.weights["dec"][param],
                     f"d{param}")


def test_a_transposed_conv_wgrad_record_never_serves_a_conv_of_the_same_shapes():
    plan, _ = decoder_plan(TARGETS[-1])
    node = plan.grad_lowerings["dec"].node
    assert workload.grad_kernel_family(node) == "conv_transpose2d_wgrad"
    assert workload.grad_workload_key(node) != workload.workload_key(node)


def test_train_measure_checks_and_times_a_transposed_conv_wgrad(kernel_cache):
    """A worker's trial of a space point: checked against the reference, then timed; a
    point that does not fit fails to compile, naming the layer's own op."""
    target = TARGETS[-1]
    plan, _ = decoder_plan(target)
    _, *others = GRAD_SPACE["conv_transpose2d"](plan.grad_lowerings["dec"])
    # batch chunks with their sum kernel, and a tile small enough not to spill
    point = next(p for p in others if p.chunks == 2 and p.oc_vecs * p.cols <= 6)
    job = dict(spec=DECODER, batch=2, layer="dec", target=target,
               cache_dir=str(kernel_cache), repeats=1, min_sample_s=1e-6)
    trial = run_grad_job(Job(schedule=sched.to_dict(point), **job))
    assert trial.status == "ok" and trial.seconds > 0, trial.error
    bad = dataclasses.replace(point, kh_tasks=4)
    trial = run_grad_job(Job(schedule=sched.to_dict(bad), **job))
    assert trial.status == "compile_error"
    assert "layer 'dec' (conv_transpose2d) weight gradient" in trial.error


def test_the_tune_report_columns_fit_a_transposed_conv_wgrad_family():
    results = [KernelResult(KernelToTune(layer, layer, family, "key", "{}", 10**6, [], None),
                            None, None, None, 0, 0, "done")
               for layer, family in (("dec", "conv_transpose2d_wgrad"), ("enc", "conv2d_wgrad"))]
    header, *rows = str(TuneReport(Path("t.db"), 4, "cpu", "random", results, 1.0)).split("\n")[1:]
    column = header.index("default ms")
    assert all(row[column - 1] == " " and row[column:column + 10].strip() == "-" for row in rows)
