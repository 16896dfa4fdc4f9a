"""The tuner over a net: spaces, resumption, records applied at compile (and refused when
stale), the order explicit > record > heuristic, the CLI, and Dask fan-out."""
import dataclasses
import json
import sqlite3

import numpy as np
import pytest

import cnngen
from cnngen import schedule as sched
from cnngen.cli import main
from cnngen.codegen.cpu import SPACE
from cnngen.explain import explain
from cnngen.tuning import workload
from cnngen.tuning.db import TuningDB, TuningDBError

SPEC = {"cnngen": 1, "name": "tiny", "input": {"shape": [16, 6, 6]},
        "layers": [{"name": "c", "op": "conv2d", "filters": 16, "kernel": 3, "padding": 1,
                    "activation": "relu"}]}


def conv_source(net):
    report = explain(net)
    return next(k for k in report.kernels if k.schedule != "-")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One grid run of 3 trials on SPEC, and a second run on the same database."""
    root = tmp_path_factory.mktemp("tune")
    db = root / "t.db"
    first = cnngen.tune(SPEC, trials=3, strategy="grid", db=db, cache_dir=root, progress=False)
    with TuningDB(db) as d:
        rows_after_first = len(d._select("1", ()))
    second = cnngen.tune(SPEC, trials=3, strategy="grid", db=db, cache_dir=root, progress=False)
    return root, db, first, second, rows_after_first


def test_every_point_of_a_space_is_legal_and_the_heuristic_comes_first():
    net = cnngen.compile(cnngen.zoo.resnet18(num_classes=10, input_size=64), tuning_db=False)
    plan = net.plan(1)
    for name, low in plan.lowerings.items():
        if low.node.op not in SPACE:
            continue
        points = SPACE[low.node.op](low)
        assert len(points) == len(set(points)) > 1
        chosen = next(s.call.kernel.schedule for s in plan.steps if s.call.layer == name)
        # the space ranks the plain heuristic first; a fused pool may adjust its rows
        assert points[0] == chosen or low.node.fused and chosen.ow_tile == points[0].ow_tile, name
        conv = [p for p in points if isinstance(p, sched.ConvSchedule)]
        assert all(p.oc_vecs * p.ow_tile + p.oc_vecs + 1 <= net.target.vector_registers
                   for p in conv)


def test_a_winograd_point_is_offered_only_for_stride_1_3x3():
    net = cnngen.compile(cnngen.zoo.resnet18(num_classes=10, input_size=64), tuning_db=False)
    plan = net.plan(1)
    for low in plan.lowerings.values():
        if low.node.op != "conv2d":
            continue
        kinds = {type(p) for p in SPACE["conv2d"](low)}
        three = low.node.attrs["kernel"] == (3, 3) and low.node.attrs["stride"] == (1, 1)
        assert (sched.WinogradSchedule in kinds) == three, low.node.name


def test_a_second_run_measures_nothing_the_first_had(tuned):
    _, db, first, second, rows_after_first = tuned
    (r1,), (r2,) = first.results, second.results
    assert r1.new_trials == 3 and r2.known_trials == 4          # 3 + the heuristic's
    with TuningDB(db) as d:
        rows = d._select("1", ())
    assert len(rows) == rows_after_first + r2.new_trials + 1     # + the heuristic again
    first_run = {json.dumps(r.schedule, sort_keys=True) for r in rows[:rows_after_first]}
    second_run = [json.dumps(r.schedule, sort_keys=True) for r in rows[rows_after_first:]
                  if r.strategy != "heuristic"]
    # close calls may re-measure a best pair; nothing else is measured twice
    assert len(first_run & set(second_run)) <= 2
    # the heuristic: measured before the first search and after each (the second run's too)
    assert sum(r.strategy == "heuristic" for r in rows) == 3


def test_the_record_is_applied_at_compile_and_explain_names_it(tuned):
    root, db, _, second, _ = tuned
    net = cnngen.compile(SPEC, cache_dir=root, tuning_db=db)
    entry = conv_source(net)
    assert entry.schedule == str(second.results[0].best)
    assert entry.schedule_source.startswith(f"tuning database {db}")
    x = np.random.default_rng(1).standard_normal((2, 16, 6, 6), np.float32)
    ref = cnngen.compile(SPEC, cache_dir=root, tuning_db=False)
    np.testing.assert_allclose(net(x), ref(x), rtol=1e-4, atol=1e-4)


def test_explicit_beats_a_record(tuned):
    root, db, _, _, _ = tuned
    explicit = sched.ConvSchedule(1, 3, 1, 1)
    net = cnngen.compile(SPEC, cache_dir=root, tuning_db=db, schedules={"c": explicit})
    entry = conv_source(net)
    assert entry.schedule == str(explicit) and entry.schedule_source.startswith("explicit")


@pytest.mark.parametrize("change, reason", [
    (lambda c: dataclasses.replace(c, template_hash="0" * 16), "templates changed"),
    (lambda c: dataclasses.replace(c, fingerprint="f" * 16, cpu="another cpu"), "another CPU"),
    (lambda c: dataclasses.replace(c, numba_version="0.1.0"), "numba"),
])
def test_a_stale_record_is_never_applied(tuned, monkeypatch, change, reason):
    root, db, _, _, _ = tuned
    real = workload.Records.__init__

    def records_of_another_context(self, path, target):
        real(self, path, target)
        self.context = change(self.context)

    monkeypatch.setattr(workload.Records, "__init__", records_of_another_context)
    net = cnngen.compile(SPEC, cache_dir=root, tuning_db=db)
    entry = conv_source(net)
    assert entry.schedule_source.startswith("heuristic") and reason in entry.schedule_source


def test_a_corrupt_database_stops_compile_with_its_name(tmp_path):
    db = tmp_path / "tuning.db"
    db.write_bytes(b"not a database at all" * 100)
    with pytest.raises(TuningDBError, match=str(db)):
        cnngen.compile(SPEC, cache_dir=tmp_path)        # the default database, beside the cache


def test_no_database_means_the_heuristic_and_says_so(tmp_path):
    entry = conv_source(cnngen.compile(SPEC, cache_dir=tmp_path))
    assert entry.schedule_source == f"heuristic (no tuning database at {tmp_path / 'tuning.db'})"


def test_cli_tune_and_report(tmp_path, capsys):
    db = tmp_path / "cli.db"
    assert main(["tune", "zoo:lenet5", "--trials", "2", "--strategy", "random", "--db", str(db),
                 "--cache-dir", str(tmp_path), "--layers", "c3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "tuned 1 kernels at batch 1" in out and "c3" in out
    assert main(["tune", "--report", str(db)]) == 0
    assert "this CPU" in capsys.readouterr().out
    assert main(["tune"]) == 1
    assert "expected SPEC" in capsys.readouterr().err


def test_bad_tuner_arguments_name_the_field(tmp_path):
    with pytest.raises(cnngen.InputError, match="strategy: expected one of grid, random, evolve"):
        cnngen.tune(SPEC, strategy="anneal", db=tmp_path / "x.db", cache_dir=tmp_path)
    with pytest.raises(cnngen.InputError, match="trials: expected an integer >= 1; received 0"):
        cnngen.tune(SPEC, trials=0, db=tmp_path / "x.db", cache_dir=tmp_path)


@pytest.mark.slow
def test_dask_local_cluster_with_two_workers(tmp_path):
    pytest.importorskip("dask.distributed")
    db = tmp_path / "dask.db"
    report = cnngen.tune(SPEC, trials=4, strategy="random", db=db, cache_dir=tmp_path,
                         workers=2, progress=False)
    (result,) = report.results
    assert result.new_trials >= 4 and result.best_measurement is not None
    with sqlite3.connect(db) as conn:
        fingerprints = {row[0] for row in conn.execute("SELECT fingerprint FROM trials")}
    assert fingerprints == {cnngen.target.cpu().fingerprint}
