"""The on-disk kernel cache: rendered source as importable files, compiled code by Numba.

Numba cannot cache ``exec``'d source, so each kernel is written to
``<cache>/<name>_<key>.py``, imported as a module registered in ``sys.modules`` under its
file stem, and compiled at import (each kernel is a ``cfunc(TASK, cache=True)`` task body, see parallel.py). Numba then keeps
the machine code beside it in ``__pycache__``; a fresh process loads it in a fraction of
the compile time.

The key hashes the source (template, schedule, shapes and target are all in it), the
numba and llvmlite versions, the target fingerprint and the kernel runtime modules
(simd, tile, vecmath, parallel), which Numba's own cache does not track. A file whose text is not
exactly the source is rewritten; a Numba cache entry that fails to load is deleted and
rebuilt. Files are written to a temporary name and renamed, so an interrupted write never
leaves a half file under the real name.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import llvmlite
import numba

from ..target import Target
from .workers import workers

RUNTIME_MODULES = ("simd.py", "tile.py", "vecmath.py", "parallel.py")
# Below this many new kernels, starting worker processes costs more than it saves.
PARALLEL_FROM = 3


def default_dir() -> Path:
    """$CNNGEN_CACHE_DIR, else $XDG_CACHE_HOME/cnngen, else ~/.cache/cnngen."""
    if os.environ.get("CNNGEN_CACHE_DIR"):
        return Path(os.environ["CNNGEN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cnngen"


def _runtime_hash() -> str:
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in RUNTIME_MODULES:
        path = here / name
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()


RUNTIME_HASH = _runtime_hash()


@dataclass(frozen=True)
class LoadedKernel:
    """A compiled kernel function and how it was obtained."""

    name: str
    fn: object
    tasks: int
    path: Path
    seconds: float
    cache_hit: bool


def kernel_key(source: str, target: Target) -> str:
    text = "\n".join((source, numba.__version__, llvmlite.__version__, target.fingerprint,
                      RUNTIME_HASH))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _import(module_name: str, path: Path):
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def _has_machine_code(path: Path) -> bool:
    return any((path.parent / "__pycache__").glob(f"{path.stem}.*.nbi"))


def _clear_numba_cache(path: Path) -> None:
    for stale in (path.parent / "__pycache__").glob(f"{path.stem}.*"):
        stale.unlink(missing_ok=True)


class KernelCache:
    """Kernels by name and source, compiled once per process and once per machine."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.dir = Path(directory) if directory is not None else default_dir()
        self._loaded: dict[str, LoadedKernel] = {}

    def _file(self, stem: str, source: str) -> Path:
        """The kernel's source file, written (atomically) unless it holds exactly ``source``."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{stem}.py"
        try:
            current = path.read_text()
        except (OSError, UnicodeDecodeError):
            current = None
        if current != source:
            _clear_numba_cache(path)
            _write_atomic(path, source)
        return path

    def load(self, name: str, source: str, target: Target,
             compiled_seconds: float | None = None) -> LoadedKernel:
        """The kernel ``kernel`` defined by ``source``: from this process, disk, or compiled.

        ``compiled_seconds`` says that another process has just compiled it (load_all).
        """
        stem = f"{name}_{kernel_key(source, target)}"
        if stem in self._loaded:
            return self._loaded[stem]
        path = self._file(stem, source)
        start = time.perf_counter()
        try:
            module = _import(path.stem, path)
        except Exception:
            # A damaged Numba index or object file: throw it away and compile afresh.
            _clear_numba_cache(path)
            start = time.perf_counter()
            module = _import(path.stem, path)
        seconds = time.perf_counter() - start
        fn = module.task
        hit = fn.cache_hits > 0
        if compiled_seconds is not None and hit:
            seconds, hit = compiled_seconds + seconds, False
        loaded = LoadedKernel(name, fn, module.TASKS, path, seconds, hit)
        self._loaded[path.stem] = loaded
        return loaded

    def load_all(self, kernels: list[tuple[str, str]], target: Target) -> list[LoadedKernel]:
        """``load`` for many (name, source) pairs; kernels not yet on disk compile in parallel.

        Numba compiles under a process-wide lock, so the parallelism is one worker process
        per core (workers.py). Each compiles into the on-disk cache; this process then loads.
        """
        new = {f"{name}_{kernel_key(source, target)}": source for name, source in kernels}
        paths = [self._file(stem, source) for stem, source in new.items() if stem not in self._loaded]
        todo = sorted(p for p in paths if not _has_machine_code(p))
        seconds: dict[str, float] = {}
        if target.cores >= 2 and len(todo) >= PARALLEL_FROM:
            # A kernel that failed or whose worker died compiles below, in this process,
            # where its error (if any) reaches the caller with a traceback.
            seconds = workers(target.cores).compile(todo)
        return [self.load(name, source, target,
                          seconds.get(f"{name}_{kernel_key(source, target)}"))
                for name, source in kernels]
