"""Helper processes that compile kernels in parallel.

Numba compiles under a process-wide lock, so parallel compilation needs processes. The
workers are plain ``python -m cnngen.codegen.workers`` children that read one kernel file
per line on stdin, import it (which compiles it into the on-disk cache) and answer with
the seconds it took. They never import the user's ``__main__`` (unlike multiprocessing's
spawn), start once per process, and exit when their stdin closes.
"""
from __future__ import annotations

import atexit
import functools
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path

PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def _start() -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (PACKAGE_ROOT, env.get("PYTHONPATH"))))
    return subprocess.Popen([sys.executable, "-m", "cnngen.codegen.workers"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            bufsize=1, env=env)


class CompileWorkers:
    def __init__(self, count: int):
        self.procs = [_start() for _ in range(count)]
        atexit.register(self.close)

    def compile(self, files: list[Path]) -> dict[str, float]:
        """Compile each kernel file in some worker; {stem: seconds} for those that succeeded."""
        todo, done = list(files), {}
        selector = selectors.DefaultSelector()

        def assign(proc):
            if todo:
                path = todo.pop()
                proc.stdin.write(f"{path.stem}\t{path}\n")
                selector.register(proc.stdout, selectors.EVENT_READ, proc)

        for proc in list(self.procs):
            try:
                assign(proc)
            except OSError:
                self.procs.remove(proc)
        while selector.get_map():
            for key, _ in selector.select():
                proc = key.data
                selector.unregister(proc.stdout)
                line = proc.stdout.readline()
                if not line:                       # the worker died; its kernel compiles here
                    self.procs.remove(proc)
                    continue
                status, stem, seconds = line.rstrip("\n").split("\t")
                if status == "ok":
                    done[stem] = float(seconds)
                assign(proc)
        return done

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin and not proc.stdin.closed:
                proc.stdin.close()
        self.procs = []


@functools.cache
def workers(count: int) -> CompileWorkers:
    return CompileWorkers(count)


def main() -> None:
    from .cache import _import

    for line in sys.stdin:
        stem, path = line.rstrip("\n").split("\t")
        start = time.perf_counter()
        try:
            _import(stem, Path(path))
            print(f"ok\t{stem}\t{time.perf_counter() - start}", flush=True)
        except Exception:
            print(f"error\t{stem}\t0", flush=True)


if __name__ == "__main__":
    main()
