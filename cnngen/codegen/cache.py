"""The on-disk kernel cache: rendered source as importable files, compiled code by Numba.

Numba cannot cache ``exec``'d source, so each kernel is written to
``<cache>/<name>_<key>.py``, imported as a module registered in ``sys.modules`` under its
file stem, and compiled with ``njit(signature, cache=True)`` at import. Numba then keeps
the machine code beside it in ``__pycache__``; a fresh process loads it in a fraction of
the compile time.

The key hashes the source (template, schedule, shapes and target are all in it), the
numba and llvmlite versions, the target fingerprint and the kernel runtime modules
(simd, tile, vecmath), which Numba's own cache does not track. A file whose text is not
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

RUNTIME_MODULES = ("simd.py", "tile.py", "vecmath.py")


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


def _clear_numba_cache(path: Path) -> None:
    for stale in (path.parent / "__pycache__").glob(f"{path.stem}.*"):
        stale.unlink(missing_ok=True)


class KernelCache:
    """Kernels by name and source, compiled once per process and once per machine."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.dir = Path(directory) if directory is not None else default_dir()
        self._loaded: dict[str, LoadedKernel] = {}

    def load(self, name: str, source: str, target: Target) -> LoadedKernel:
        """The kernel ``kernel`` defined by ``source``: from this process, disk, or compiled."""
        stem = f"{name}_{kernel_key(source, target)}"
        if stem in self._loaded:
            return self._loaded[stem]
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{stem}.py"
        try:
            current = path.read_text()
        except (OSError, UnicodeDecodeError):
            current = None
        if current != source:
            _clear_numba_cache(path)
            _write_atomic(path, source)
        start = time.perf_counter()
        try:
            module = _import(stem, path)
        except Exception:
            # A damaged Numba index or object file: throw it away and compile afresh.
            _clear_numba_cache(path)
            start = time.perf_counter()
            module = _import(stem, path)
        seconds = time.perf_counter() - start
        fn = module.kernel
        hit = sum(fn.stats.cache_hits.values()) > 0
        loaded = LoadedKernel(name, fn, path, seconds, hit)
        self._loaded[stem] = loaded
        return loaded
