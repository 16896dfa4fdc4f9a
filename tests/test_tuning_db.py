"""Tests of the tuning database: round trips, best-record rules and reasons, resumption,
schema versions, damaged files, read-only use, and concurrent or interrupted writers."""
import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cnngen.target import Target
from cnngen.tuning.db import (SCHEMA_VERSION, Context, Lookup, TrialRecord, TuningDB,
                              TuningDBError)

HERE = Context(fingerprint="fp-zen4", cpu="cpu AMD Ryzen 9 7950X avx512 (16 x float32), 2 cores",
               template_hash="tmpl-1", cnngen_version="0.1.0", numba_version="0.61.0",
               llvmlite_version="0.44.0")
OTHER_CPU = dataclasses.replace(HERE, fingerprint="fp-zen3",
                                cpu="cpu AMD EPYC 7763 avx2 (8 x float32)")
CONV = {"kind": "ConvSchedule", "oc_vecs": 2, "ow_tile": 7, "ic_block": 4, "rows": 1}


def trial(seconds=0.002, status="ok", batch=1, schedule=CONV, context=HERE, key="wk-conv",
          created=0.0, strategy="grid", kernel="conv2d"):
    """Return a TrialRecord with plausible defaults; a failure gets no timing and an error."""
    ok = status == "ok"
    return TrialRecord(
        workload_key=key, workload=json.dumps({"op": kernel, "c_in": 16, "c_out": 32}),
        kernel=kernel, batch=batch, schedule=schedule, status=status,
        seconds=seconds if ok else None, spread=seconds / 10 if ok else None,
        gflops=1.5 / seconds if ok else None, spills=0 if ok else 3,
        error="" if ok else f"{status}: failed", context=context, strategy=strategy,
        created=created)


def sched(i, **extra):
    return {**CONV, "ow_tile": i, **extra}


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "tuning.db"


# --- round trips ----------------------------------------------------------------------------

def test_records_round_trip_exactly(db_path):
    schedule = {"kind": "ConvSchedule", "oc_vecs": 2, "ow_tile": 7, "unroll": True,
                "order": ["oc", "ow", "ic"], "scale": 0.1 + 0.2, "note": "ünïcode", "none": None}
    record = dataclasses.replace(trial(schedule=schedule, created=1700000000.125),
                                 seconds=1 / 3, spread=2e-7, gflops=123.456789, spills=0)
    with TuningDB(db_path) as db:
        db.add(record)
    with TuningDB(db_path) as db:
        (got,) = db.measured("wk-conv", 1, HERE).values()
    assert got == record
    assert got.schedule["scale"] == 0.30000000000000004 and got.context == HERE


def test_created_is_filled_when_zero_and_kept_when_given(db_path):
    before = time.time()
    with TuningDB(db_path) as db:
        db.add_many([trial(schedule=sched(1)), trial(schedule=sched(2), created=12.5)])
        got = db.measured("wk-conv", 1, HERE)
    assert before <= got[json.dumps(sched(1), sort_keys=True)].created <= time.time()
    assert got[json.dumps(sched(2), sort_keys=True)].created == 12.5


@pytest.mark.parametrize("change, field", [
    (dict(status="fast"), "status"),
    (dict(batch=0), "batch"),
    (dict(batch=2.0), "batch"),
    (dict(schedule={"kind": "ConvSchedule", "tile": (2, 7)}), "schedule"),
    (dict(schedule={"kind": "ConvSchedule", "ow_tile": float("nan")}), "schedule"),
    (dict(schedule={1: 2}), "schedule"),
    (dict(schedule=[("oc_vecs", 2)]), "schedule"),
    (dict(seconds=None), "seconds"),
    (dict(seconds=0.0), "seconds"),
    (dict(spread="0.1"), "spread"),
    (dict(spills=2.5), "spills"),
    (dict(error=None), "error"),
    (dict(strategy=None), "strategy"),
    (dict(context=dataclasses.replace(HERE, template_hash=None)), "template_hash"),
])
def test_malformed_trials_are_rejected_naming_the_field(db_path, change, field):
    with TuningDB(db_path) as db:
        with pytest.raises(TuningDBError, match=rf"wk-conv.*{field} must.*Received: {field}="):
            db.add(dataclasses.replace(trial(), **change))
        assert db.report() == []


def test_add_many_is_one_transaction(db_path):
    good = [trial(schedule=sched(i)) for i in range(3)]
    with TuningDB(db_path) as db:
        with pytest.raises(TuningDBError, match="status"):
            db.add_many(good + [dataclasses.replace(good[0], status="bogus")])
        assert db.measured("wk-conv", 1, HERE) == {}
        db.add_many(good)
        assert len(db.measured("wk-conv", 1, HERE)) == 3


# --- resumption -----------------------------------------------------------------------------

def test_measured_returns_the_latest_trial_per_schedule_of_any_status(db_path):
    reordered = dict(reversed(list(CONV.items())))  # same schedule, other key order
    with TuningDB(db_path) as db:
        db.add(trial(status="timeout", created=100.0))
        db.add(trial(seconds=0.004, schedule=reordered, created=200.0))
        db.add(trial(status="spills", schedule=sched(14), created=150.0))
        db.add(trial(schedule=sched(3), batch=8))  # another batch
        db.add(trial(schedule=sched(4), key="wk-other"))  # another workload
        got = db.measured("wk-conv", 1, HERE)
    assert set(got) == {json.dumps(CONV, sort_keys=True), json.dumps(sched(14), sort_keys=True)}
    assert got[json.dumps(CONV, sort_keys=True)].seconds == 0.004
    assert got[json.dumps(sched(14), sort_keys=True)].status == "spills"


@pytest.mark.parametrize("field", ["fingerprint", "template_hash", "cnngen_version",
                                   "numba_version", "llvmlite_version"])
def test_measured_under_a_changed_context_returns_nothing(db_path, field):
    with TuningDB(db_path) as db:
        db.add_many([trial(schedule=sched(i)) for i in range(4)] + [trial(status="crash")])
        assert len(db.measured("wk-conv", 1, HERE)) == 5
        assert db.measured("wk-conv", 1, dataclasses.replace(HERE, **{field: "changed"})) == {}


# --- best -----------------------------------------------------------------------------------

def test_best_is_the_fastest_applicable_trial_at_the_exact_batch(db_path):
    stale = dataclasses.replace(HERE, template_hash="tmpl-0")
    with TuningDB(db_path) as db:
        db.add_many([
            trial(0.00300, schedule=sched(1)),
            trial(0.00231, schedule=sched(2), strategy="evolve"),
            trial(status="spills", schedule=sched(3)),
            trial(0.00100, schedule=sched(4), batch=8),           # other batch: faster, ignored
            trial(0.00050, schedule=sched(5), context=stale),     # stale: faster, never applied
            trial(0.00040, schedule=sched(6), context=OTHER_CPU),  # other CPU: ignored
        ])
        found = db.best("wk-conv", 1, HERE)
    assert found.record.schedule == sched(2) and found.record.strategy == "evolve"
    assert found.reason == "tuned: 2.31 ms, 3 trials"


@pytest.mark.parametrize("batches, wanted, chosen", [
    ((16, 32), 8, 16),
    ((1, 16), 8, 1),
    ((4, 12), 8, 12),  # a tie goes to the larger batch
    ((2, 4), 64, 4),
])
def test_best_falls_back_to_the_nearest_measured_batch(db_path, batches, wanted, chosen):
    with TuningDB(db_path) as db:
        for b in batches:
            db.add_many([trial(0.001 * b, batch=b, schedule=sched(b)),
                         trial(0.002 * b, batch=b, schedule=sched(b + 100))])
        db.add(trial(status="timeout", batch=wanted, schedule=sched(99)))
        found = db.best("wk-conv", wanted, HERE)
    assert found.record.batch == chosen and found.record.schedule == sched(chosen)
    assert found.reason.startswith(f"measured at batch {chosen}, the nearest to {wanted}: ")
    assert found.reason.endswith(", 2 trials")


@pytest.mark.parametrize("measured_under, reason", [
    (OTHER_CPU, "records only for another CPU: cpu AMD EPYC 7763 avx2 (8 x float32)"),
    (dataclasses.replace(HERE, template_hash="tmpl-0"),
     "stale: the kernel templates changed since it was measured"),
    (dataclasses.replace(HERE, numba_version="0.60.0"),
     "stale: measured with numba 0.60.0 (this is 0.61.0)"),
    (dataclasses.replace(HERE, cnngen_version="0.0.9"),
     "stale: measured with cnngen 0.0.9 (this is 0.1.0)"),
    (dataclasses.replace(HERE, llvmlite_version="0.43.0"),
     "stale: measured with llvmlite 0.43.0 (this is 0.44.0)"),
])
def test_best_rejects_records_of_another_context_and_says_which(db_path, measured_under, reason):
    with TuningDB(db_path) as db:
        db.add(trial(context=measured_under))
        assert db.best("wk-conv", 1, HERE) == Lookup(None, reason)


def test_best_names_the_least_stale_record(db_path):
    very_old = dataclasses.replace(HERE, template_hash="tmpl-0", numba_version="0.59.0")
    with TuningDB(db_path) as db:
        db.add(trial(context=very_old, schedule=sched(1)))
        db.add(trial(context=dataclasses.replace(HERE, numba_version="0.60.0"), schedule=sched(2)))
        db.add(trial(context=OTHER_CPU, schedule=sched(3)))
        assert db.best("wk-conv", 1, HERE).reason == \
            "stale: measured with numba 0.60.0 (this is 0.61.0)"


def test_best_reasons_when_nothing_applies(db_path):
    with TuningDB(db_path) as db:
        assert db.best("wk-conv", 1, HERE) == Lookup(None, "no record for this workload")
        db.add_many([trial(status="spills", schedule=sched(i)) for i in range(3)]
                    + [trial(status="timeout", schedule=sched(i), batch=4) for i in range(2)]
                    + [trial(0.0001, context=dataclasses.replace(HERE, template_hash="old"))])
        assert db.best("wk-conv", 1, HERE) == \
            Lookup(None, "no successful trial: 5 failed (3 spills, 2 timeout)")
        assert db.best("wk-unknown", 1, HERE).reason == "no record for this workload"


def test_context_current_describes_the_target():
    import llvmlite
    import numba
    target = Target(kind="cpu", cpu_name="znver4", isa="avx2", features=("avx2", "fma"),
                    cores=2, l1d_bytes=32 << 10, l2_bytes=1 << 20, l3_bytes=32 << 20)
    context = Context.current(target, "tmpl-9")
    assert (context.fingerprint, context.cpu, context.template_hash) == \
        (target.fingerprint, str(target), "tmpl-9")
    assert "znver4" in context.cpu
    assert (context.numba_version, context.llvmlite_version) == \
        (numba.__version__, llvmlite.__version__)
    assert context.cnngen_version.count(".") >= 1


# --- report ---------------------------------------------------------------------------------

def test_report_summarises_each_workload_batch_and_cpu(db_path):
    old = dataclasses.replace(HERE, template_hash="tmpl-0")
    with TuningDB(db_path) as db:
        db.add_many([
            trial(0.002, schedule=sched(1)), trial(0.001, schedule=sched(2), strategy="random"),
            trial(status="spills", schedule=sched(3)), trial(status="timeout", schedule=sched(4)),
            trial(0.0005, schedule=sched(5), context=old, strategy="evolve"),
            trial(0.003, context=OTHER_CPU),
            trial(0.004, key="wk-dense", kernel="dense", batch=4, schedule={"kind": "D"},
                  context=old),
        ])
        everything, against_here = db.report(), db.report(HERE)
    assert [(r["kernel"], r["batch"], r["cpu"]) for r in everything] == [
        ("conv2d", 1, OTHER_CPU.cpu), ("conv2d", 1, HERE.cpu), ("dense", 4, HERE.cpu)]
    mine = everything[1]
    assert (mine["workload_key"], mine["fingerprint"], mine["trials"], mine["ok"]) == \
        ("wk-conv", "fp-zen4", 5, 3)
    assert mine["failures"] == {"spills": 1, "timeout": 1}
    assert (mine["best_seconds"], mine["best_strategy"], mine["stale"], mine["this_cpu"]) == \
        (0.0005, "evolve", None, None)
    assert json.loads(mine["workload"])["op"] == "conv2d"

    other, mine, dense = against_here
    assert (mine["trials"], mine["ok"], mine["best_seconds"], mine["best_schedule"]) == \
        (4, 2, 0.001, sched(2))
    assert mine["best_gflops"] == pytest.approx(1500.0)
    assert (mine["stale"], mine["this_cpu"]) == (False, True)
    assert (other["stale"], other["this_cpu"], other["trials"]) == (False, False, 1)
    assert (dense["stale"], dense["trials"], dense["best_seconds"]) == (True, 1, 0.004)


def test_report_row_without_a_successful_trial(db_path):
    with TuningDB(db_path) as db:
        db.add(trial(status="compile_error"))
        (row,) = db.report(HERE)
    assert (row["ok"], row["failures"], row["best_seconds"], row["best_schedule"]) == \
        (0, {"compile_error": 1}, None, None)


# --- the file: modes, schema, damage --------------------------------------------------------

def test_file_is_in_wal_mode_with_a_long_busy_timeout(db_path):
    with TuningDB(db_path) as db:
        db.add(trial())
        assert db._conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 30000
        with sqlite3.connect(db_path) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            indexes = raw.execute("PRAGMA index_list(trials)").fetchall()
            columns = {row[1]: [c[2] for c in raw.execute(f"PRAGMA index_info({row[1]})")]
                       for row in indexes}
    assert ["workload_key", "batch", "fingerprint"] in columns.values()


def test_a_missing_parent_directory_is_created(tmp_path):
    path = tmp_path / "a" / "b" / "tuning.db"
    with TuningDB(path) as db:
        db.add(trial())
    assert path.is_file()


@pytest.mark.parametrize("where", ["under_a_file", "a_directory"])
def test_an_unwritable_location_names_the_path(tmp_path, where):
    (tmp_path / "plain").write_text("x")
    (tmp_path / "dir.db").mkdir()
    path = tmp_path / ("plain/sub/tuning.db" if where == "under_a_file" else "dir.db")
    with pytest.raises(TuningDBError, match=rf"{path}.*another --db"):
        TuningDB(path)


def test_a_newer_schema_is_refused_with_both_versions(db_path):
    with TuningDB(db_path) as db:
        db.add(trial())
    with sqlite3.connect(db_path) as raw:
        raw.execute("PRAGMA user_version = 7")
    for readonly in (False, True):
        with pytest.raises(TuningDBError, match=rf"{db_path} has schema version 7.*newer.*"
                                                rf"schema version {SCHEMA_VERSION}.*Upgrade "
                                                rf"cnngen.*another --db"):
            TuningDB(db_path, readonly=readonly)


@pytest.mark.parametrize("make", ["zero_bytes", "empty_sqlite"])
def test_an_empty_file_is_initialised(db_path, make):
    if make == "zero_bytes":
        db_path.write_bytes(b"")
    else:
        sqlite3.connect(db_path).execute("VACUUM").connection.close()
        assert db_path.stat().st_size > 0
    with TuningDB(db_path, readonly=True) as db:
        assert db.best("wk-conv", 1, HERE).reason == f"tuning database {db_path} is empty " \
                                                     f"(no tuner has written to it)"
    with TuningDB(db_path) as db:
        db.add(trial())
        assert db.best("wk-conv", 1, HERE).record is not None
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


@pytest.mark.parametrize("version, sql", [
    (0, "CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)"),
    (1, "CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)"),
    (1, "CREATE TABLE trials (id INTEGER PRIMARY KEY, workload_key TEXT)"),
    (-2, "CREATE TABLE trials (id INTEGER PRIMARY KEY, workload_key TEXT)"),
])
def test_a_foreign_database_is_refused_and_left_untouched(db_path, version, sql):
    with sqlite3.connect(db_path) as raw:
        raw.execute(sql)
        raw.execute(f"PRAGMA user_version = {version}")
    raw.close()
    before = db_path.read_bytes()
    for readonly in (False, True):
        with pytest.raises(TuningDBError, match=rf"{db_path} is not a cnngen tuning database"
                                                rf".*user_version {version}"):
            TuningDB(db_path, readonly=readonly)
    assert db_path.read_bytes() == before


def _corrupt_message(path):
    return rf"tuning database {path} is corrupt .*Nothing was read.*mv {path} {path}\.bad.*--db"


@pytest.mark.parametrize("readonly", [False, True])
def test_random_bytes_are_reported_as_corrupt(db_path, readonly):
    db_path.write_bytes(bytes(range(256)) * 64)
    before = db_path.read_bytes()
    with pytest.raises(TuningDBError, match=_corrupt_message(db_path)):
        TuningDB(db_path, readonly=readonly)
    assert db_path.read_bytes() == before


@pytest.mark.parametrize("readonly", [False, True])
def test_a_truncated_database_is_reported_as_corrupt(db_path, readonly):
    with TuningDB(db_path) as db:
        db.add_many([trial(schedule=sched(i), key=f"wk-{i % 40}") for i in range(2000)])
    data = db_path.read_bytes()
    assert len(data) > 16 * 4096 and not db_path.with_name("tuning.db-wal").exists()
    db_path.write_bytes(data[:len(data) // 2])
    with pytest.raises(TuningDBError, match=_corrupt_message(db_path)):
        TuningDB(db_path, readonly=readonly)


def test_readonly_with_no_file_reads_as_no_records_and_creates_nothing(tmp_path):
    path = tmp_path / "missing" / "tuning.db"
    with TuningDB(path, readonly=True) as db:
        assert db.best("wk-conv", 1, HERE) == Lookup(None, f"no tuning database at {path}")
        assert db.measured("wk-conv", 1, HERE) == {} and db.report() == []
        with pytest.raises(TuningDBError, match=rf"{path} was opened read-only"):
            db.add(trial())
    assert list(tmp_path.iterdir()) == []


def test_readonly_reads_records_and_refuses_writes(db_path):
    with TuningDB(db_path) as db:
        db.add(trial())
    with TuningDB(db_path, readonly=True) as db:
        assert db.best("wk-conv", 1, HERE).record == db.measured("wk-conv", 1, HERE)[
            json.dumps(CONV, sort_keys=True)]
        with pytest.raises(TuningDBError, match="read-only"):
            db.add_many([trial(schedule=sched(1))])
    with TuningDB(db_path) as db:
        assert len(db.measured("wk-conv", 1, HERE)) == 1


def test_readonly_in_a_directory_it_cannot_write_still_reads(db_path, monkeypatch):
    # a read-only kernel cache: SQLite could not create the WAL's -shm file beside it
    # (faked here, since root may write anywhere)
    with TuningDB(db_path) as db:
        db.add(trial())
    for leftover in db_path.parent.glob(f"{db_path.name}-*"):
        leftover.unlink()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False
                        if Path(path) == db_path.parent else real_access(path, mode, **kw))
    with TuningDB(db_path, readonly=True) as db:
        assert db.best("wk-conv", 1, HERE).record is not None
    assert sorted(p.name for p in db_path.parent.iterdir()) == [db_path.name]


def test_a_closed_database_raises(db_path):
    db = TuningDB(db_path)
    db.close()
    db.close()
    with pytest.raises(TuningDBError, match=str(db_path)):
        db.add(trial())
    with pytest.raises(TuningDBError, match=str(db_path)):
        db.best("wk-conv", 1, HERE)


# --- several processes ----------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import json, sys, time
    from cnngen.tuning.db import Context, TrialRecord, TuningDB
    path, name, count, per_write = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    context, start_at = Context(**json.loads(sys.argv[5])), float(sys.argv[6])
    with TuningDB(path) as db:
        time.sleep(max(0.0, start_at - time.time()))  # start writing together
        for start in range(0, count, per_write):
            db.add_many([TrialRecord(
                workload_key="wk-conv", workload="{}", kernel="conv2d", batch=1,
                schedule={"writer": name, "i": i}, status="ok", seconds=1e-3 * (i + 1),
                spread=1e-5, gflops=1.0, spills=0, error="", context=context, strategy=name)
                for i in range(start, start + per_write)])
            print(start, flush=True)
""")


def _writer(path, name, count, per_write, start_at=0.0):
    context = json.dumps(dataclasses.asdict(HERE))
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, str(count),
                             str(per_write), context, str(start_at)],
                            stdout=subprocess.PIPE, text=True)


def test_two_processes_writing_at_once_lose_and_corrupt_nothing(db_path):
    start_at = time.time() + 3.0  # after both have started and opened the file
    writers = [_writer(db_path, name, 300, 1, start_at) for name in ("a", "b")]
    for w in writers:
        w.communicate(timeout=120)
        assert w.returncode == 0
    with TuningDB(db_path) as db:
        got = db.measured("wk-conv", 1, HERE)
    assert len(got) == 600
    for name in ("a", "b"):
        mine = {k: r for k, r in got.items() if r.strategy == name}
        assert sorted(r.schedule["i"] for r in mine.values()) == list(range(300))
        assert all(r.seconds == pytest.approx(1e-3 * (r.schedule["i"] + 1)) and
                   r.schedule["writer"] == name and r.context == HERE for r in mine.values())


def test_a_damaged_page_is_found_at_open(db_path):
    with TuningDB(db_path) as db:
        db.add_many([trial(schedule=sched(i), key=f"wk-{i % 40}") for i in range(2000)])
    with open(db_path, "r+b") as f:  # a page in the middle becomes garbage; the size stays
        f.seek((db_path.stat().st_size // 4096 // 2) * 4096)
        f.write(bytes(range(256)) * 16)
    with pytest.raises(TuningDBError, match=_corrupt_message(db_path)):
        TuningDB(db_path, readonly=True)


def test_a_writer_killed_mid_run_leaves_only_whole_transactions(db_path):
    writer = _writer(db_path, "k", 10**6, 500)
    writer.stdout.readline()  # the first transaction is committed
    writer.stdout.readline()
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    with TuningDB(db_path) as db:
        count = len(db.measured("wk-conv", 1, HERE))
        assert count >= 1000 and count % 500 == 0
        db.add(trial())
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]

