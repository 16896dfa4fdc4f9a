"""The kernel cache: rendered source as files, compiled code by Numba, kernels shared in-process.

Numba cannot cache ``exec``'d source, so each kernel is written to
``<cache>/<name>_<key>.py``, imported as a module registered in ``sys.modules`` under its
file stem, and compiled at import (each kernel is a ``cfunc(TASK, cache=True)`` task body, see
parallel.py). Numba keeps the machine code beside it in ``<cache>/__pycache__`` (locator.py
keeps it there whatever ``$NUMBA_CACHE_DIR`` says, and reads it from a read-only cache); a
fresh process loads it in a fraction of the compile time. Within a process each kernel is
imported once, by its resolved path, and shared by every KernelCache and CompiledNet.

The key hashes the source (template, schedule, shapes and target are all in it), the
numba and llvmlite versions, the target fingerprint and the kernel runtime modules
(simd, tile, vecmath, parallel), which Numba's own cache does not track. A file whose text is not
exactly the source is rewritten (a directory in its place is removed); a Numba cache entry that
fails to load is deleted and rebuilt. Files are written to a temporary name and renamed, so an
interrupted write never leaves a half file under the real name. A complete cache is only read,
so it may be read-only; file-system faults (a full disk, a read-only or misplaced directory)
are CnngenErrors that name the path and the fix.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import importlib.util
import json
import operator
import os
import shutil
import stat
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import llvmlite
import numba

from ..errors import CnngenError
from ..files import write_atomic
from ..target import Target
from .kernel import isa_of
from .locator import (claim, clear_machine_code, has_machine_code, machine_code_dir,
                      spill_report_path)
from .spills import kernel_spills
from .workers import workers

RUNTIME_MODULES = ("simd.py", "tile.py", "vecmath.py", "parallel.py", "spills.py")
# Below this many new kernels, starting worker processes costs more than it saves.
PARALLEL_FROM = 3
MOVE_IT = "point CNNGEN_CACHE_DIR (or cache_dir=, --cache-dir) at a writable directory"
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)
NO_WRITE = (errno.EACCES, errno.EPERM, errno.EROFS)


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
    """A compiled kernel function and how this process obtained it, the one time it did.

    ``cache_hit``: loaded from Numba's on-disk code in ``seconds``; otherwise compiled, here or
    in a worker (``seconds`` then counts the compile and the load). Every later load in the
    process, from any KernelCache, returns one shared copy that says ``from_memory`` (a hit
    that cost nothing: ``cache_hit``, 0 s), with the same ``fn``.
    """

    name: str
    fn: object
    task_count: Callable[[int], int]     # tasks for a batch of n images
    path: Path
    seconds: float
    cache_hit: bool
    spills: int | None = None       # vector spills/reloads in its reduction loops (spills.py)
    from_memory: bool = False


def task_counter(module) -> Callable[[int], int]:
    """A kernel module's ``task_count(n_batch)``, or ``n_batch * TASKS`` (tasks per image)."""
    return getattr(module, "task_count", None) or functools.partial(operator.mul, module.TASKS)


# Every kernel this process has loaded, by resolved file path (directory and stem, like the
# disk), as later loads see it: from memory.
_LOADED: dict[Path, LoadedKernel] = {}
# One import at a time: Numba compiles under a process-wide lock anyway, and a module sits in
# sys.modules under its stem while it compiles. Worker batches, too, go one at a time.
_IMPORT_LOCK = threading.Lock()
_COMPILE_LOCK = threading.Lock()


def kernel_key(source: str, target: Target) -> str:
    text = "\n".join((source, numba.__version__, llvmlite.__version__, target.fingerprint,
                      RUNTIME_HASH))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _import(module_name: str, path: Path):
    """Import the kernel file ``path`` (compiling it, or loading its machine code); a fresh
    compile also writes the spill report of its code beside the code."""
    claim(path.parent)
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    if module.task.cache_hits == 0:
        report = json.dumps(_spill_report(module.task, path))
        write_atomic(spill_report_path(path), lambda f: f.write(report.encode("utf-8")))
    return module


def _spill_report(fn, path: Path) -> dict:
    try:
        report = kernel_spills(fn, isa_of(path.stem))
    except Exception as error:      # the kernel works; only the check is unknown
        return {"in_loops": None, "error": f"{type(error).__name__}: {error}"}
    return {"in_loops": report.in_loops, "anywhere": report.anywhere, "loops": report.loops}


def _read_spills(path: Path) -> int | None:
    try:
        value = json.loads(spill_report_path(path).read_text()).get("in_loops")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def _disk_error(error: OSError, path: Path, doing: str) -> CnngenError:
    """A CnngenError for a failed file-system operation on the cache: what, where, the fix."""
    reason = error.strerror or str(error)
    if error.errno in FULL_DISK:
        return CnngenError(
            f"kernel cache: the disk is full: {doing} {path} failed ({reason}); nothing was "
            f"left half-written. Free some space there, or {MOVE_IT} on another disk.")
    if error.errno in NO_WRITE:
        return CnngenError(f"kernel cache: {doing} {path} failed ({reason}): expected a "
                           f"directory cnngen can write. To fix, {MOVE_IT}.")
    return CnngenError(f"kernel cache: {doing} {path} failed ({reason}). To fix, {MOVE_IT}.")


def _writable(directory: Path) -> bool:
    """Whether this process may create files in ``directory``, or create it."""
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    return directory.is_dir() and os.access(directory, os.W_OK | os.X_OK)


def _clear_way(path: Path, *, for_dir: bool) -> None:
    """Remove an entry of the wrong kind where the cache's own file or ``__pycache__`` goes.

    Both names belong to the cache, so nothing of the user's is lost, and a run after a
    stray ``mkdir`` or ``touch`` repairs the cache instead of failing until someone cleans up.
    """
    if for_dir:
        if _wrong_kind_for_dir(path):
            path.unlink()
    elif path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)


def _wrong_kind_for_dir(path: Path) -> bool:
    return (path.exists() or path.is_symlink()) and not path.is_dir()


def check_dir(directory: str | os.PathLike) -> Path:
    """The absolute, resolved cache directory; a CnngenError unless it is or can be a directory."""
    if os.fspath(directory) == "":
        raise CnngenError(
            "kernel cache directory: expected a directory path; received an empty string, which "
            f"would put kernels in the current directory. Leave it out for the default "
            f"({default_dir()}) or name a directory.")
    path = Path(os.path.abspath(os.path.expanduser(directory)))
    try:
        for parent in (path, *path.parents):
            if parent.is_dir():
                break
            if parent.exists():
                where = ("which is a file" if parent == path
                         else f"which lies under the file {parent}")
                raise CnngenError(
                    f"kernel cache directory: expected a directory; received {path}, {where}. "
                    f"Name another directory (cache_dir=, --cache-dir, CNNGEN_CACHE_DIR), or "
                    f"move the file away.")
    except OSError as error:
        raise _disk_error(error, path, "checking") from error
    return Path(os.path.realpath(path))


class KernelCache:
    """Kernels by name and source, compiled once per machine and imported once per process."""

    def __init__(self, directory: str | os.PathLike | None = None):
        directory = default_dir() if directory is None else directory
        self._root = check_dir(directory)
        self.dir = Path(directory).expanduser()

    def _path(self, name: str, source: str, target: Target) -> Path:
        return self._root / f"{name}_{kernel_key(source, target)}.py"

    def _read_only(self, paths: list[Path], what: str) -> CnngenError:
        """The error for kernels a read-only cache lacks: say so, and what to do."""
        if not any(self._root.glob("*.py")):
            state = (f"is read-only and holds no kernels: there is nothing to load, and the "
                     f"{len(paths)} kernel(s) needed cannot be written there")
        else:
            state = (f"is read-only and lacks {what} for {len(paths)} kernel(s) needed "
                     f"(first: {paths[0].name}), which cannot be written there")
        return CnngenError(
            f"kernel cache {self._root} {state}. A read-only cache must be complete: built by "
            f"the same cnngen, Numba and Python, on this CPU (`cnngen compile SPEC --cache-dir "
            f"DIR` for each net and batch size). To compile instead, {MOVE_IT}.")

    def _file(self, path: Path, source: str) -> None:
        """Make ``path`` hold exactly ``source``: kept if it does, else written (atomically)."""
        try:
            if stat.S_ISREG(os.stat(path).st_mode) and path.read_text("utf-8") == source:
                return
        except (OSError, UnicodeDecodeError):
            pass
        if not _writable(self._root):
            raise self._read_only([path], "the source file")
        try:
            self._root.mkdir(parents=True, exist_ok=True)
            _clear_way(path, for_dir=False)
            clear_machine_code(path)
            write_atomic(path, lambda f: f.write(source.encode("utf-8")))
        except OSError as error:
            raise _disk_error(error, path, "writing") from error

    def _ready_to_compile(self, paths: list[Path]) -> None:
        """Check that Numba can save code for ``paths`` (all in this cache) before compiling."""
        code_dir = machine_code_dir(paths[0])
        if not _writable(self._root if _wrong_kind_for_dir(code_dir) else code_dir):
            raise self._read_only(paths, "compiled code (for this Python and Numba)")
        try:
            _clear_way(code_dir, for_dir=True)
        except OSError as error:
            raise _disk_error(error, code_dir, "removing the stray file") from error

    def load(self, name: str, source: str, target: Target,
             compiled_seconds: float | None = None) -> LoadedKernel:
        """The kernel ``name`` defined by ``source``: from this process, disk, or compiled.

        ``compiled_seconds`` says that another process has just compiled it (load_all).
        """
        return self._load(name, self._path(name, source, target), source, compiled_seconds)

    def _load(self, name: str, path: Path, source: str, compiled_seconds: float | None = None,
              written: bool = False) -> LoadedKernel:
        loaded = _LOADED.get(path)
        if loaded is not None:
            return loaded
        with _IMPORT_LOCK:
            loaded = _LOADED.get(path)
            if loaded is None:
                if not written:
                    self._file(path, source)
                if not has_machine_code(path):
                    self._ready_to_compile([path])
                module, seconds = self._import_kernel(path)
                fn = module.task
                hit = fn.cache_hits > 0
                if compiled_seconds is not None and hit:
                    seconds, hit = compiled_seconds + seconds, False
                loaded = LoadedKernel(name, fn, task_counter(module), path, seconds, hit,
                                      _read_spills(path))
                _LOADED[path] = replace(loaded, seconds=0.0, cache_hit=True, from_memory=True)
        return loaded

    def _import_kernel(self, path: Path):
        """The kernel module at ``path`` and the seconds its import took (compile or load)."""
        start = time.perf_counter()
        try:
            try:
                module = _import(path.stem, path)
            except OSError:
                raise
            except Exception as error:
                # A damaged Numba index or object file: throw it away and compile afresh.
                if not _writable(machine_code_dir(path)):
                    raise CnngenError(
                        f"kernel cache {self._root} is read-only and its compiled code for "
                        f"{path.name} does not load ({type(error).__name__}: {error}). Rebuild "
                        f"the cache, or {MOVE_IT}.") from error
                clear_machine_code(path)
                start = time.perf_counter()
                module = _import(path.stem, path)
        except OSError as error:
            if error.errno in FULL_DISK:
                try:     # the index may name an object file that was never written
                    clear_machine_code(path)
                except OSError:
                    pass
            raise _disk_error(error, path, "compiling") from error
        return module, time.perf_counter() - start

    def load_all(self, kernels: list[tuple[str, str]], target: Target) -> list[LoadedKernel]:
        """``load`` for many (name, source) pairs; kernels not yet on disk compile in parallel.

        Numba compiles under a process-wide lock, so the parallelism is one worker process
        per core (workers.py). Each compiles into the on-disk cache; this process then loads.
        """
        paths = [self._path(name, source, target) for name, source in kernels]
        new = {path: source for path, (_, source) in zip(paths, kernels) if path not in _LOADED}
        for path, source in new.items():
            self._file(path, source)
        todo = sorted(p for p in new if not has_machine_code(p))
        seconds: dict[str, float] = {}
        if todo:
            self._ready_to_compile(todo)
        if target.cores >= 2 and len(todo) >= PARALLEL_FROM:
            with _COMPILE_LOCK:
                # Another thread may have compiled some while this one waited.
                todo = [p for p in todo if not has_machine_code(p)]
                if len(todo) >= PARALLEL_FROM:
                    # A kernel that failed or whose worker died compiles below, in this
                    # process, where its error (if any) reaches the caller with a traceback.
                    seconds = workers(target.cores).compile(todo)
        return [self._load(name, path, source, seconds.get(path.stem), written=path in new)
                for (name, source), path in zip(kernels, paths)]
