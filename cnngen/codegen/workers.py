"""Helper processes that compile kernels in parallel.

Numba compiles under a process-wide lock, so parallel compilation needs processes. The
workers are plain ``python -m cnngen.codegen.workers`` children that read one kernel file
per line on stdin, import it (which compiles it into the on-disk cache) and answer with
the seconds it took and their resident memory. They never import the user's ``__main__``
(unlike multiprocessing's spawn), start on first use, and exit when their stdin closes.

A worker keeps every kernel it imported, so it grows with each one. It is retired, and a
fresh one started in its place, after ``KERNELS_PER_WORKER`` kernels or once its resident
memory passes ``WORKER_RSS_BYTES``, so a long-running program's helpers stay bounded.
"""
from __future__ import annotations

import atexit
import os
import selectors
import subprocess
import sys
import threading
import time
from pathlib import Path

PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
# Measured with 14 small conv nets, 72 kernels (2 busy cores, AVX-512): a worker takes 0.7 s
# and 100 MiB to start, 165 MiB after its first kernel, then 1.5-4 MiB more per kernel (large
# layers take more). Unbounded, the two workers held 221 and 279 MiB after 44 and 28 kernels;
# with 32 per worker the peak was 262 MiB, one restart, and the compile no slower (104 vs 112 s).
KERNELS_PER_WORKER = 32
WORKER_RSS_BYTES = 512 * 2**20


def _rss_bytes() -> int:
    """This process's resident memory: now where /proc tells, else its peak."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import resource
    except ImportError:
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class Worker:
    """One helper process, and how much it has compiled."""

    def __init__(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (PACKAGE_ROOT, env.get("PYTHONPATH"))))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cnngen.codegen.workers"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1, env=env)
        self.kernels = 0
        self.rss_bytes = 0

    @property
    def spent(self) -> bool:
        return self.kernels >= KERNELS_PER_WORKER or self.rss_bytes >= WORKER_RSS_BYTES

    def close(self) -> None:
        """Close its stdin: it exits after the kernel in hand (reaped by the next Popen)."""
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe and not pipe.closed:
                try:
                    pipe.close()
                except OSError:
                    pass


class CompileWorkers:
    """Up to ``count`` workers, started on demand and replaced when spent or dead."""

    def __init__(self, count: int):
        self.count = count
        self.procs: list[Worker] = []
        self.started = 0                  # workers started so far, replacements included
        self._lock = threading.Lock()     # one batch at a time: the pipes are shared
        atexit.register(self.close)

    def _start(self) -> Worker | None:
        try:
            worker = Worker()
        except OSError:
            return None
        self.started += 1
        self.procs.append(worker)
        return worker

    def _retire(self, worker: Worker) -> None:
        worker.close()
        self.procs.remove(worker)

    def compile(self, files: list[Path]) -> dict[str, float]:
        """Compile each kernel file in some worker; {stem: seconds} for those that succeeded."""
        with self._lock, selectors.DefaultSelector() as selector:
            return self._compile(files, selector)

    def _compile(self, files: list[Path], selector: selectors.BaseSelector) -> dict[str, float]:
        todo, done = list(files), {}

        def assign(worker: Worker) -> None:
            if worker.spent:
                self._retire(worker)
                worker = self._start() if todo else None
            if worker is None or not todo:
                return
            path = todo.pop()
            try:
                worker.proc.stdin.write(f"{path.stem}\t{path}\n")
            except OSError:                # it died before this kernel; that one compiles here
                self._retire(worker)
                return
            selector.register(worker.proc.stdout, selectors.EVENT_READ, worker)

        for worker in [w for w in self.procs if w.proc.poll() is not None]:
            self._retire(worker)
        while len(self.procs) < min(self.count, len(todo)) and self._start():
            pass
        for worker in list(self.procs):
            assign(worker)
        while selector.get_map():
            for key, _ in selector.select():
                worker = key.data
                selector.unregister(worker.proc.stdout)
                line = worker.proc.stdout.readline()
                if not line:                       # the worker died; its kernel compiles here
                    self._retire(worker)
                    continue
                status, stem, seconds, rss = line.rstrip("\n").split("\t")
                worker.kernels += 1
                worker.rss_bytes = int(rss)
                if status == "ok":
                    done[stem] = float(seconds)
                assign(worker)
        return done

    def close(self) -> None:
        for worker in self.procs:
            worker.close()
        self.procs = []


_pools: dict[int, CompileWorkers] = {}
_pools_lock = threading.Lock()


def workers(count: int) -> CompileWorkers:
    """The process's pool of ``count`` compile workers (one pool per count, made once)."""
    with _pools_lock:
        if count not in _pools:
            _pools[count] = CompileWorkers(count)
        return _pools[count]


def main() -> None:
    from .cache import _import

    for line in sys.stdin:
        stem, path = line.rstrip("\n").split("\t")
        start = time.perf_counter()
        try:
            _import(stem, Path(path))
            status = "ok"
        except Exception:
            status = "error"
        print(f"{status}\t{stem}\t{time.perf_counter() - start}\t{_rss_bytes()}", flush=True)


if __name__ == "__main__":
    main()
