"""The auto-tuner's database of measured trials: one SQLite file, versioned schema, WAL mode.

Schema (``PRAGMA user_version`` = ``SCHEMA_VERSION``): one table, ``trials``, one row per
measured candidate: the workload (``workload_key``, ``workload``, ``kernel``, ``batch``), the
schedule as canonical JSON text (``json.dumps(schedule, sort_keys=True)``), the outcome
(``status``, ``seconds``, ``spread``, ``gflops``, ``spills``, ``error``), ``strategy``,
``created``, and the Context it was measured under as six text columns. Index:
``trials_lookup`` on (workload_key, batch, fingerprint).

Rules:

- A record applies to a Context only if its workload key, fingerprint, template hash and the
  cnngen, numba and llvmlite versions all equal the context's, and its status is "ok". A stale
  record is never applied. ``best`` takes the fastest at the exact batch, else the fastest at
  the nearest measured batch (the larger batch on a tie). ``Lookup.reason`` says why. When
  nothing applies, the reason names the most specific cause: no record, another CPU, stale
  templates or versions, or only failed trials.
- ``measured`` returns what was measured under exactly a Context (any status), so an
  interrupted tuning run resumes where it stopped, and a changed context measures again.
- Every write is one ``BEGIN IMMEDIATE`` transaction: all of it is stored, or none. WAL mode
  and a 30 s busy timeout let two tuners write to one file at once.
- Opening runs ``PRAGMA quick_check`` and checks the schema version. A damaged, foreign or
  newer file raises TuningDBError, which names the file and the way out, and never reads as
  "no records". A missing parent directory of a writable database is created.
- ``readonly=True`` opens a ``mode=ro`` URI and never creates the database file (SQLite itself
  may add the -wal/-shm companions beside a WAL file it reads). A missing file reads as no
  records, and ``best`` says so.
"""
from __future__ import annotations

import importlib.metadata
import json
import math
import os
import sqlite3
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import CnngenError

SCHEMA_VERSION = 1
STATUSES = ("ok", "compile_error", "timeout", "crash", "wrong_result", "spills")
BUSY_TIMEOUT_S = 30.0
VERSION_FIELDS = ("cnngen_version", "numba_version", "llvmlite_version")


class TuningDBError(CnngenError):
    """The tuning database is unreadable, damaged, foreign or newer, or a trial is malformed."""


@dataclass(frozen=True)
class Context:
    """What a record is valid for: the machine, the kernel templates and the tool versions."""

    fingerprint: str
    cpu: str
    template_hash: str
    cnngen_version: str
    numba_version: str
    llvmlite_version: str

    @classmethod
    def current(cls, target, template_hash: str) -> Context:
        """Return the context of this process on ``target`` with the given template hash."""
        import llvmlite
        import numba
        return cls(target.fingerprint, str(target), template_hash,
                   importlib.metadata.version("cnngen"), numba.__version__, llvmlite.__version__)


@dataclass(frozen=True)
class TrialRecord:
    """One measured candidate schedule of one workload, and its outcome."""

    workload_key: str
    workload: str
    kernel: str
    batch: int
    schedule: dict
    status: str
    seconds: float | None
    spread: float | None
    gflops: float | None
    spills: int | None
    error: str
    context: Context
    strategy: str = ""
    created: float = 0.0


@dataclass(frozen=True)
class Lookup:
    """The record ``best`` chose (or None) and why."""

    record: TrialRecord | None
    reason: str


CONTEXT_COLUMNS = tuple(f.name for f in fields(Context))
# The context fields a record must match to apply; ``cpu`` is only a readable name.
MATCH_COLUMNS = tuple(c for c in CONTEXT_COLUMNS if c != "cpu")
COLUMNS = tuple(f.name for f in fields(TrialRecord) if f.name != "context") + CONTEXT_COLUMNS
_TYPES = {"batch": "INTEGER NOT NULL", "spills": "INTEGER",
          "seconds": "REAL", "spread": "REAL", "gflops": "REAL", "created": "REAL NOT NULL"}
_PYTHON_TYPES = {"TEXT": (str, "a str"), "INTEGER": (int, "an int"),
                 "REAL": ((int, float), "a number")}
_STATUS_CHECK = f"CHECK (status IN ({', '.join(repr(s) for s in STATUSES)}))"
SCHEMA = (
    "CREATE TABLE trials (id INTEGER PRIMARY KEY, "
    + ", ".join(f"{c} {_TYPES.get(c, 'TEXT NOT NULL')}" for c in COLUMNS) + f", {_STATUS_CHECK})",
    "CREATE INDEX trials_lookup ON trials (workload_key, batch, fingerprint)",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)
INSERT = f"INSERT INTO trials ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


def _row(trial: TrialRecord) -> tuple:
    """Return the row that stores ``trial``; raise TuningDBError naming a malformed field."""
    where = f"trial of workload {trial.workload_key!r} ({trial.kernel}, batch {trial.batch!r})"
    if trial.status not in STATUSES:
        raise TuningDBError(f"{where}: status must be one of {STATUSES}. "
                            f"Received: status={trial.status!r}.")
    if not isinstance(trial.batch, int) or isinstance(trial.batch, bool) or trial.batch < 1:
        raise TuningDBError(f"{where}: batch must be an int >= 1. Received: batch={trial.batch!r}.")
    ok_seconds = isinstance(trial.seconds, (int, float)) and math.isfinite(trial.seconds)
    if trial.status == "ok" and not (ok_seconds and trial.seconds > 0):
        raise TuningDBError(f"{where}: seconds must be a finite number > 0 when status is 'ok'. "
                            f"Received: seconds={trial.seconds!r}.")
    try:
        schedule = json.dumps(trial.schedule, sort_keys=True, allow_nan=False)
        exact = isinstance(trial.schedule, dict) and json.loads(schedule) == trial.schedule
    except (TypeError, ValueError):
        exact = False
    if not exact:
        raise TuningDBError(f"{where}: schedule must be a plain JSON dict (str keys; str, int, "
                            f"finite float, bool, None and list values) that reads back equal. "
                            f"Received: schedule={trial.schedule!r}.")
    values = {c: getattr(trial.context, c) for c in CONTEXT_COLUMNS}
    values |= {c: getattr(trial, c) for c in COLUMNS if c not in values}
    values |= {"schedule": schedule, "created": trial.created or time.time()}
    for column, value in values.items():
        sql_type = _TYPES.get(column, "TEXT NOT NULL")
        python_type, expected = _PYTHON_TYPES[sql_type.split()[0]]
        if not (isinstance(value, python_type) or (value is None and "NOT NULL" not in sql_type)):
            raise TuningDBError(f"{where}: {column} must be {expected}"
                                f"{'' if 'NOT NULL' in sql_type else ' or None'}. "
                                f"Received: {column}={value!r}.")
    return tuple(values[c] for c in COLUMNS)


def _record(row: tuple) -> TrialRecord:
    """Return the TrialRecord stored in ``row`` (columns in COLUMNS order)."""
    values = dict(zip(COLUMNS, row))
    context = Context(**{c: values.pop(c) for c in CONTEXT_COLUMNS})
    return TrialRecord(**(values | {"schedule": json.loads(values["schedule"])}), context=context)


def _staleness(measured: Context, now: Context) -> list[str]:
    """Return why a record measured under ``measured`` is stale under ``now`` ([] if fresh)."""
    causes = []
    if measured.template_hash != now.template_hash:
        causes.append("the kernel templates changed since it was measured")
    for name in VERSION_FIELDS:
        then, current = getattr(measured, name), getattr(now, name)
        if then != current:
            causes.append(f"measured with {name.removesuffix('_version')} {then} "
                          f"(this is {current})")
    return causes


def _ms(seconds: float) -> str:
    """Return ``seconds`` in milliseconds, three significant digits (whole ms from 1 s)."""
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 1000 else f"{ms:.0f}"


class TuningDB:
    """The trials measured so far, in one SQLite file: ``with TuningDB(path) as db: ...``."""

    def __init__(self, path, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        self._conn: sqlite3.Connection | None = None
        self._absent = ""  # why a read-only database has no records, when it has none
        if readonly and not self.path.exists():
            self._absent = f"no tuning database at {self.path}"
            return
        try:
            with self._sqlite_errors():
                self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        """Connect, check the file for damage, initialise an empty file, check the schema."""
        if self.readonly:
            # In a directory this process cannot write (a read-only kernel cache), SQLite
            # could not create the WAL's shared-memory file: read the file as immutable.
            mode = "ro" if os.access(self.path.parent, os.W_OK) else "ro&immutable=1"
        else:
            mode = "rwc"
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise TuningDBError(
                    f"cannot create the directory {self.path.parent} for tuning database "
                    f"{self.path} ({exc.strerror}). Expected a writable location; "
                    f"pass another --db.") from exc
        self._conn = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode={mode}", uri=True,
                                     timeout=BUSY_TIMEOUT_S, isolation_level=None)
        self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        problems = [line for (line,) in self._conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise self._corrupt("; ".join(problems[:3]))
        if not self.readonly and self._schema() == (0, []):
            with self._write():
                if self._schema() == (0, []):  # another process may have initialised it
                    for statement in SCHEMA:
                        self._conn.execute(statement)
        version, names = self._schema()
        if version > SCHEMA_VERSION:
            raise TuningDBError(
                f"tuning database {self.path} has schema version {version}, written by a newer "
                f"cnngen; this cnngen reads schema version {SCHEMA_VERSION}. Upgrade cnngen "
                f"(pip install -U cnngen) to use it, or pass another --db.")
        if (version, names) == (0, []):  # read-only, so left as it is
            self._absent = f"tuning database {self.path} is empty (no tuner has written to it)"
            return
        columns = [row[1] for row in self._conn.execute("PRAGMA table_info(trials)")]
        if version != SCHEMA_VERSION or columns != ["id", *COLUMNS]:
            raise TuningDBError(
                f"{self.path} is not a cnngen tuning database: expected schema version "
                f"{SCHEMA_VERSION} with a 'trials' table. Received: user_version {version}, "
                f"tables {names[:8]}. Pass another --db (or move this file aside).")
        if not self.readonly:
            self._conn.execute("PRAGMA journal_mode = WAL")
            # WAL + NORMAL stays atomic and uncorrupted on a crash; only power loss may drop
            # the last commits, which a resumed tuning run measures again.
            self._conn.execute("PRAGMA synchronous = NORMAL")

    def _schema(self) -> tuple[int, list[str]]:
        """Return the file's user_version and the names of the tables and indexes in it."""
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        return version, [name for (name,) in self._conn.execute("SELECT name FROM sqlite_master")]

    def _corrupt(self, detail: str) -> TuningDBError:
        """Return the error for a damaged file, with the way to recover."""
        return TuningDBError(
            f"tuning database {self.path} is corrupt ({detail}). Nothing was read from it. "
            f"Move it aside (mv {self.path} {self.path}.bad) and re-run `cnngen tune`, which "
            f"measures again, or pass another --db.")

    @contextmanager
    def _sqlite_errors(self):
        """Run the body, turning SQLite's errors into TuningDBErrors that name the file."""
        try:
            yield
        except sqlite3.Error as exc:
            name = getattr(exc, "sqlite_errorname", "")
            if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
                raise self._corrupt(str(exc)) from exc
            if name in ("SQLITE_BUSY", "SQLITE_LOCKED"):
                raise TuningDBError(
                    f"tuning database {self.path} stayed locked by another process for over "
                    f"{BUSY_TIMEOUT_S:.0f} s ({exc}). Expected a lock held for one transaction; "
                    f"wait for the other run to finish, or pass another --db.") from exc
            access = "read" if self.readonly else "write to"
            raise TuningDBError(
                f"cannot {access} tuning database {self.path} ({exc}). Expected a "
                f"{'readable' if self.readonly else 'writable'} file in a writable directory; "
                f"fix the permissions or pass another --db.") from exc

    @contextmanager
    def _write(self):
        """Run the body as one BEGIN IMMEDIATE transaction: all of it is stored, or none."""
        if self.readonly:
            raise TuningDBError(f"tuning database {self.path} was opened read-only. Expected "
                                f"TuningDB(path, readonly=False) to add trials.")
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _select(self, where: str, params: tuple) -> list[TrialRecord]:
        """Return the records matching the SQL condition ``where``, oldest first."""
        if self._absent:
            return []
        with self._sqlite_errors():
            rows = self._conn.execute(f"SELECT {', '.join(COLUMNS)} FROM trials WHERE {where} "
                                      f"ORDER BY created, id", params).fetchall()
        return [_record(row) for row in rows]

    def add(self, trial: TrialRecord) -> None:
        """Store one trial (``created`` is set to now when it is 0)."""
        self.add_many([trial])

    def add_many(self, trials: list[TrialRecord]) -> None:
        """Store all ``trials`` in one transaction, or none of them if one is malformed."""
        with self._sqlite_errors(), self._write():
            self._conn.executemany(INSERT, map(_row, trials))

    def measured(self, workload_key: str, batch: int, context: Context) -> dict[str, TrialRecord]:
        """Return the latest trial per schedule (keyed by its canonical JSON) measured for this
        workload and batch under exactly ``context``, any status."""
        where = " AND ".join(f"{c} = ?" for c in ("workload_key", "batch", *MATCH_COLUMNS))
        params = (workload_key, batch, *(getattr(context, c) for c in MATCH_COLUMNS))
        return {json.dumps(r.schedule, sort_keys=True): r for r in self._select(where, params)}

    def best(self, workload_key: str, batch: int, context: Context) -> Lookup:
        """Return the fastest applicable record for this workload at ``batch`` (else at the
        nearest measured batch), or None, with the reason."""
        if self._absent:
            return Lookup(None, self._absent)
        records = self._select("workload_key = ?", (workload_key,))
        if not records:
            return Lookup(None, "no record for this workload")
        here = [r for r in records if r.context.fingerprint == context.fingerprint]
        if not here:
            cpus = dict.fromkeys(r.context.cpu for r in reversed(records))
            return Lookup(None, "records only for another CPU: " + "; ".join(cpus))
        fresh = [r for r in here if not _staleness(r.context, context)]
        if not fresh:  # the newest of the records that differ least
            causes = min((_staleness(r.context, context) for r in reversed(here)), key=len)
            return Lookup(None, "stale: " + "; ".join(causes))
        ok = [r for r in fresh if r.status == "ok"]
        if not ok:
            counts = sorted(Counter(r.status for r in fresh).items(), key=lambda i: (-i[1], i[0]))
            detail = ", ".join(f"{n} {status}" for status, n in counts)
            return Lookup(None, f"no successful trial: {len(fresh)} failed ({detail})")
        nearest = min({r.batch for r in ok}, key=lambda b: (abs(b - batch), -b))
        chosen = min((r for r in ok if r.batch == nearest), key=lambda r: r.seconds)
        trials = sum(r.batch == nearest for r in fresh)
        how = ("tuned" if nearest == batch
               else f"measured at batch {nearest}, the nearest to {batch}")
        return Lookup(chosen, f"{how}: {_ms(chosen.seconds)} ms, {trials} trials")

    def report(self, context: Context | None = None) -> list[dict]:
        """Return one summary row per (workload_key, batch, fingerprint), sorted by kernel,
        workload key, batch and cpu.

        Keys: workload_key, workload, kernel, batch, fingerprint, cpu (workload, kernel and cpu
        from the newest record), trials, ok, failures ({status: count}), best_seconds,
        best_gflops, best_schedule, best_strategy (None without an "ok" trial), stale, this_cpu.
        Without ``context`` every record counts and stale/this_cpu are None. With it, a row
        counts only the records whose template hash and versions match the context (stale False);
        a row with none counts all of its records and is stale. this_cpu says whether the
        row's fingerprint is the context's.
        """
        groups = defaultdict(list)
        for r in self._select("1", ()):
            groups[(r.workload_key, r.batch, r.context.fingerprint)].append(r)
        rows = []
        for (workload_key, batch, fingerprint), records in groups.items():
            fresh = [r for r in records if context and not _staleness(r.context, context)]
            counted = fresh or records
            ok = [r for r in counted if r.status == "ok"]
            top = min(ok, key=lambda r: r.seconds, default=None)
            newest = records[-1]
            rows.append({
                "workload_key": workload_key, "workload": newest.workload,
                "kernel": newest.kernel, "batch": batch, "fingerprint": fingerprint,
                "cpu": newest.context.cpu, "trials": len(counted), "ok": len(ok),
                "failures": dict(Counter(r.status for r in counted if r.status != "ok")),
                "best_seconds": top.seconds if top else None,
                "best_gflops": top.gflops if top else None,
                "best_schedule": top.schedule if top else None,
                "best_strategy": top.strategy if top else None,
                "stale": None if context is None else not fresh,
                "this_cpu": None if context is None else fingerprint == context.fingerprint})
        return sorted(rows, key=lambda row: (row["kernel"], row["workload_key"], row["batch"],
                                             row["cpu"]))

    def close(self) -> None:
        """Close the connection (safe to call twice); later calls raise TuningDBError."""
        if self._conn is not None:
            self._conn.close()

    def __enter__(self) -> TuningDB:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
