"""Trials of candidate schedules: compiled and run in a worker process, checked, then timed.

Measurement cannot crown a wrong kernel: a candidate is timed only after the whole net's
output matched the float64 reference, and every failure comes back as a typed Trial:

- ``ok``: correct, and timed (median and interquartile range of the per-call seconds);
- ``compile_error``: the net did not build (a schedule that does not fit the layer, a
  Numba error, a layer that runs no kernel), not timed;
- ``spills``: the layer's kernel spills vector registers in its inner loops, not timed;
- ``wrong_result``: the output is off the reference, or not finite where it is finite;
- ``timeout``: the worker gave no answer within ``timeout_s`` and was killed;
- ``crash``: the worker died (a segfault, an abort) or the runner raised.

    with Measurer(timeout_s=60) as measurer:
        trial = measurer.measure(Job(spec, batch=1, layer="c1", schedule=to_dict(s)))

A ``Measurer`` keeps one worker (``python -m cnngen.tuning.measure``) that runs jobs one at
a time; after a timeout or a crash a fresh worker serves the next job, so one bad candidate
costs one trial, never the run. Measurers share nothing: a tuner may run one per thread.

Workers and cores: the timed section of a job (warm-up, calibration and samples) holds an
exclusive ``flock`` on ``LOCK_PATH``, machine-wide, and the rest of a job (compiling, the
reference check) a shared one. So workers compile side by side, but nothing of theirs runs
while one is timing: no two thread pools fight, and no compile steals a core from a timed
kernel. (Programs that do not take the lock are not held off.)
"""
from __future__ import annotations

import argparse
import fcntl
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import target as targets
from ..errors import InputError
from ..passes import origin
from ..reference import ReferenceExecutor
from ..runtime.compiled import compile as compile_net
from ..schedule import from_dict
from ..suggest import did_you_mean

STATUSES = ("ok", "compile_error", "timeout", "crash", "wrong_result", "spills")
# Templates whose schedule is a register tile that must fit the registers (status "spills").
TILED_TEMPLATES = ("conv2d", "depthwise2d", "dense")
RUNNER = "cnngen.tuning.measure:run_job"
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
LOCK_PATH = os.path.join(tempfile.gettempdir(), "cnngen-measure.lock")
# Largest |output - reference| allowed, as a fraction of the reference's largest magnitude:
# the bound the zoo tests hold whole float32 nets to; a wrong kernel misses by the values' size.
TOLERANCE = 1e-3
# References (input, output) a worker keeps: the candidates of one net share one.
REFERENCES_KEPT = 4
# Lines of a dead worker's stderr that go into a crash's error.
STDERR_TAIL_LINES = 4
SIGNALS = {int(s) for s in signal.Signals}


@dataclass(frozen=True)
class Job:
    """One candidate: ``layer``'s kernel in ``spec`` at ``batch`` under ``schedule``
    (``schedule.to_dict`` form; None for the heuristic default)."""

    spec: dict
    batch: int
    layer: str
    schedule: dict | None
    seed: int = 0
    target: str = "cpu"
    cache_dir: str | None = None
    repeats: int = 11
    min_sample_s: float = 0.001

    def __post_init__(self):
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise ValueError(f"Job.repeats: expected an integer >= 1; received {self.repeats!r}.")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Job:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Trial:
    """What one job measured: ``status`` (one of STATUSES), per-call seconds when ok."""

    status: str
    seconds: float | None
    spread: float | None
    samples: tuple[float, ...]
    spills: int | None
    kernel: str
    fingerprint: str
    cpu: str
    error: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Trial:
        data = json.loads(text)
        return cls(**{**data, "samples": tuple(data["samples"])})


def one_line(text: str) -> str:
    """``text`` on one line: every run of whitespace, newlines included, one space."""
    return " ".join(str(text).split())


def failure(job: Job, status: str, error: str, kernel: str = "", spills: int | None = None,
            target: targets.Target | None = None) -> Trial:
    """An untimed Trial of ``job``, stamped with the machine that tried it."""
    if target is None:
        try:
            target = targets.resolve(job.target)
        except Exception:
            target = targets.host()
    return Trial(status, None, None, (), spills, kernel, target.fingerprint, str(target),
                 one_line(error))


def layer_steps(net, plan, layer: str) -> list:
    """The plan's steps, edges aside, that run the fused node computing spec layer ``layer``."""
    names = set()
    for node in plan.graph.nodes:
        members = {n.name for n in origin(node)}
        if layer in members:
            names |= members | {node.name}
    steps = [s for s in plan.steps if not s.edge and s.call.layer in names]
    if not steps:
        layers = [n.name for n in net.graph.nodes]
        why = (f"runs no kernel of its own at batch {plan.n_batch} (it is read or written "
               f"in place, or dropped for inference)" if layer in layers
               else f"is not a layer of it.{did_you_mean(layer, layers)}")
        raise InputError(f"layer {layer!r}: nothing to measure; {layer!r} in "
                         f"{net.graph.name!r} {why}")
    return steps


def count_spills(steps) -> int | None:
    """Vector spills and reloads in the inner loops of the steps' register-tiled kernels
    (``TILED_TEMPLATES``): their sum, or None when a kernel does not say and none of the
    others spills. Winograd's kernels are left to the clock: their transforms are FMA loops
    too, and a spill there is not a register tile that does not fit."""
    counts = [getattr(step.kernel, "spills", None) for step in steps
              if step.call.kernel.template in TILED_TEMPLATES]
    total = sum(c for c in counts if c is not None)
    return None if total == 0 and None in counts else total


_REFERENCES: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()


def reference(job: Job) -> tuple[np.ndarray, np.ndarray]:
    """The job's input (standard normal float32, seeded) and the float64 reference output,
    computed once per (spec, batch, seed) in this process (the target does not change it)."""
    key = (json.dumps(job.spec, sort_keys=True), job.batch, job.seed)
    if key not in _REFERENCES:
        executor = ReferenceExecutor(job.spec, seed=job.seed)
        x = np.random.default_rng(job.seed).standard_normal(
            (job.batch, *executor.graph.input.shape)).astype(np.float32)
        _REFERENCES[key] = (x, executor.forward(x.astype(np.float64)).out)
        while len(_REFERENCES) > REFERENCES_KEPT:
            _REFERENCES.popitem(last=False)
    _REFERENCES.move_to_end(key)
    return _REFERENCES[key]


def mismatch(got: np.ndarray, ref: np.ndarray) -> str:
    """'' when ``got`` is within TOLERANCE of the reference's largest magnitude wherever the
    reference is finite; otherwise how it is off, in one line."""
    finite = np.isfinite(ref)
    broken = int(np.count_nonzero(finite & ~np.isfinite(got)))
    if broken:
        return (f"{broken} of {got.size} outputs are not finite where the reference is "
                f"(e.g. {got[finite & ~np.isfinite(got)][0]})")
    scale = float(np.abs(ref[finite]).max(initial=0.0)) or 1.0
    error = float(np.abs(got[finite] - ref[finite]).max(initial=0.0))
    if error > TOLERANCE * scale:
        return (f"max |output - reference| = {error:.3g}, {error / scale:.2g} of the "
                f"reference's largest magnitude {scale:.3g} (allowed {TOLERANCE:g})")
    return ""


@contextmanager
def machine_lock(exclusive: bool = True):
    """Hold the machine-wide measurement lock (``LOCK_PATH``) while the block runs:
    exclusive for timing, shared for the work around it (compiling, checking)."""
    fd = os.open(LOCK_PATH, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)          # closing the descriptor releases the lock


def settle(timeout_s: float = 0.5, quiet_polls: int = 3, poll_s: float = 0.001) -> float:
    """Wait until no other thread of this process is running; return the wait in ms.

    Thread pools spin after their last task (measured here: libgomp in PyTorch about 8 ms,
    ONNX Runtime about 45 ms), and a spinning pool steals a core from whichever runner goes
    next (TBB's workers spin too). A measurement calls this after its samples, before it lets
    the next one start, so that one starts on a quiet machine; the benchmarks' peer runners
    call it after each sample. Without /proc it sleeps 50 ms instead."""
    t0 = time.perf_counter()
    task = "/proc/self/task"
    if not os.path.isdir(task):
        time.sleep(0.05)
        return (time.perf_counter() - t0) * 1e3
    me = str(threading.get_native_id())
    quiet = 0
    while quiet < quiet_polls and time.perf_counter() - t0 < timeout_s:
        quiet = 0 if any(_running(f"{task}/{tid}/stat") for tid in os.listdir(task)
                         if tid != me) else quiet + 1
        time.sleep(poll_s)
    return (time.perf_counter() - t0) * 1e3


def _running(stat_path: str) -> bool:
    try:
        with open(stat_path) as f:
            return f.read().rpartition(")")[2].split()[0] == "R"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False  # the thread exited between listdir and open


def time_steps(net, x: np.ndarray, steps, repeats: int, min_sample_s: float) -> list[float]:
    """Per-call seconds of ``steps``: ``repeats`` samples of k back-to-back calls, k doubled
    until a sample takes ``min_sample_s``; after a warm-up run of the whole net."""
    def sample(k: int) -> float:
        start = time.perf_counter()
        for _ in range(k):
            for step in steps:
                step()
        return time.perf_counter() - start

    with machine_lock():
        net(x)
        k = 1
        while sample(k) < min_sample_s:
            k *= 2
        samples = [sample(k) / k for _ in range(repeats)]
        settle()             # this pool's spinning threads would steal from the next timing
        return samples


def _build_and_check(job: Job):
    """The job's net, input, steps, kernel names, spills and target; or its failed Trial."""
    target = None
    try:
        target = targets.resolve(job.target)
        schedules = {job.layer: from_dict(job.schedule)} if job.schedule else None
        net = compile_net(job.spec, seed=job.seed, target=target, cache_dir=job.cache_dir,
                          schedules=schedules, tuning_db=False)
        steps = layer_steps(net, net.plan(job.batch), job.layer)
    except Exception as e:
        return failure(job, "compile_error", f"{type(e).__name__}: {e}", target=target)
    kernel = ", ".join(dict.fromkeys(step.kernel.name for step in steps))
    spills = count_spills(steps)
    if spills:
        return failure(job, "spills", f"{spills} vector spills/reloads in the inner loops",
                       kernel, spills, target)
    x, ref = reference(job)
    error = mismatch(net(x), ref)
    if error:
        return failure(job, "wrong_result", error, kernel, spills, target)
    return net, x, steps, kernel, spills, target


def run_job(job: Job) -> Trial:
    """The job's Trial, measured in this process (what a worker does with each job)."""
    with machine_lock(exclusive=False):       # no other worker is timing meanwhile
        checked = _build_and_check(job)
    if isinstance(checked, Trial):
        return checked
    net, x, steps, kernel, spills, target = checked
    samples = time_steps(net, x, steps, job.repeats, job.min_sample_s)
    q1, median, q3 = np.percentile(samples, [25, 50, 75])
    return Trial("ok", float(median), float(q3 - q1), tuple(samples), spills, kernel,
                 target.fingerprint, str(target))


def _stop(proc: subprocess.Popen, stderr) -> None:
    """Kill a worker's process group (its own compile workers too), reap it, close its files."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    for f in (proc.stdin, proc.stdout, stderr):
        f.close()


class _Worker:
    """One worker process in its own session; its stderr goes to an unnamed temp file."""

    def __init__(self, runner: str):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (PACKAGE_ROOT, env.get("PYTHONPATH"))))
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cnngen.tuning.measure", "--runner", runner],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, env=env,
            start_new_session=True)
        self.pending, self.stderr_start = b"", 0
        self.stop = weakref.finalize(self, _stop, self.proc, self.stderr)

    def ask(self, line: str, timeout_s: float) -> str | None:
        """The answer to one job line; None if the worker died; TimeoutError past timeout_s."""
        self.stderr_start = os.fstat(self.stderr.fileno()).st_size
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            return None
        deadline, fd = time.monotonic() + timeout_s, self.proc.stdout.fileno()
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self.pending += chunk
        answer, _, self.pending = self.pending.partition(b"\n")
        return answer.decode()

    def death(self) -> str:
        """How the worker died (signal or exit code) and the tail of its stderr for this job."""
        try:
            code = self.proc.wait(timeout=5)
            how = f"exited with code {code}"
            if code < 0:
                how = f"was killed by {signal.Signals(-code).name if -code in SIGNALS else -code}"
        except subprocess.TimeoutExpired:
            how = "closed its answers but did not exit"
        self.stderr.seek(self.stderr_start)
        lines = self.stderr.read().decode(errors="replace").strip().splitlines()
        tail = " | ".join(line.strip() for line in lines[-STDERR_TAIL_LINES:])
        return f"the worker {how}" + (f"; stderr: {tail}" if tail else "; stderr empty")


class Measurer:
    """A persistent worker subprocess (started on first use) that runs jobs one at a time.

    ``runner`` ("module:function") is what the worker calls with each Job (tests pass fault
    runners). ``timeout_s`` bounds each job, compile included; it may be changed between
    jobs. ``started`` counts the workers started, replacements included."""

    def __init__(self, timeout_s: float = 120.0, runner: str = RUNNER):
        self.timeout_s, self.runner = timeout_s, runner
        self.started = 0
        self._worker: _Worker | None = None
        self._lock = threading.Lock()

    def measure(self, job: Job) -> Trial:
        """The job's Trial; "timeout" or "crash" when the worker does not answer, and then a
        fresh worker serves the next job."""
        with self._lock:
            if self._worker is not None and self._worker.proc.poll() is not None:
                self._retire()             # it died while idle: not this job's fault
            if self._worker is None:
                self._worker = _Worker(self.runner)
                self.started += 1
            worker = self._worker
            try:
                answer = worker.ask(job.to_json(), self.timeout_s)
            except TimeoutError:
                self._retire()
                return failure(job, "timeout", f"no answer within {self.timeout_s:g} s; the "
                                               f"worker was killed")
            if answer is None:
                error = worker.death()
                self._retire()
                return failure(job, "crash", error)
            return Trial.from_json(answer)

    def _retire(self) -> None:
        self._worker.stop()
        self._worker = None

    def close(self) -> None:
        """Stop the worker (it is idle: jobs run one at a time); a later job starts a fresh one."""
        with self._lock:
            if self._worker is not None:
                self._retire()

    def __enter__(self) -> Measurer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_runner(name: str):
    """The function ``module:function`` names."""
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: list[str] | None = None) -> None:
    """The worker: one JSON Job per line on stdin, one JSON Trial per line on stdout."""
    parser = argparse.ArgumentParser(prog="python -m cnngen.tuning.measure")
    parser.add_argument("--runner", default=RUNNER, help="module:function run on each job")
    runner = load_runner(parser.parse_args(argv).runner)
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())   # stray output, Python's or C's, to stderr
    for line in sys.stdin:
        job = Job.from_json(line)
        try:
            trial = runner(job)
        except Exception as e:
            trial = failure(job, "crash", f"the runner raised {type(e).__name__}: {e}")
        answers.write(trial.to_json() + "\n")
        answers.flush()


if __name__ == "__main__":       # run as the module itself, so jobs are its own Job type
    from cnngen.tuning.measure import main as module_main
    module_main()
