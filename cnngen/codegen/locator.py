"""Where Numba keeps a kernel's machine code: always ``<cache>/__pycache__``, beside its source.

Numba picks the directory for each source file from a list of locators. Left to choose, it
puts the code under ``$NUMBA_CACHE_DIR`` when that is set, and when ``__pycache__`` is not
writable (a pre-built read-only cache) it ignores the code there, compiles again and writes
into ``~/.cache/numba``. Either way cnngen would look for the code in one place while Numba
keeps it in another: no kernel would count as a hit, workers would start on every run, and
the clean-up after a corrupt entry would miss it. So cnngen puts one locator first in Numba's
list. It answers only for source files in a kernel cache directory that this process has
``claim``-ed, always with ``<cache>/__pycache__``, and it reads from there even when it
cannot write; every other function Numba compiles keeps Numba's own choice.
"""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from numba.core import caching, config

MACHINE_CODE_DIR = "__pycache__"
# Numba names a function's index "<module>.<function>-<line>.py<major><minor><abiflags>.nbi".
INDEX_SUFFIX = f".py{sys.version_info[0]}{sys.version_info[1]}{getattr(sys, 'abiflags', '')}.nbi"

_claimed: set[str] = set()      # absolute kernel cache directories
_claim_lock = threading.Lock()


class KernelLocator(caching.InTreeCacheLocator):
    """Numba's in-tree locator for kernel files, without its "can I write here?" probe.

    Numba probes only to choose a location; loading needs no write, and a save into a
    read-only cache never starts, because KernelCache refuses to compile there first.
    """

    @classmethod
    def from_function(cls, py_func, py_file):
        if os.path.dirname(os.path.abspath(py_file)) in _claimed:
            return cls(py_func, py_file)
        return None


LOCATOR_NAME = f"{KernelLocator.__module__}.{KernelLocator.__qualname__}"


def claim(directory: Path) -> None:
    """Make Numba keep the machine code of kernel files in ``directory`` beside them."""
    directory = os.path.abspath(directory)
    with _claim_lock:
        _claimed.add(directory)
        impl = caching.CompileResultCacheImpl          # the cache behind cfunc(cache=True)
        if KernelLocator not in impl._locator_classes:
            impl._locator_classes = [KernelLocator, *impl._locator_classes]
        # $NUMBA_CACHE_LOCATOR_CLASSES replaces Numba's list; ours still goes first.
        if config.CACHE_LOCATOR_CLASSES and LOCATOR_NAME not in config.CACHE_LOCATOR_CLASSES:
            config.CACHE_LOCATOR_CLASSES = f"{LOCATOR_NAME},{config.CACHE_LOCATOR_CLASSES}"


def machine_code_dir(path: Path) -> Path:
    return path.parent / MACHINE_CODE_DIR


def spill_report_path(path: Path) -> Path:
    """Where the spill report of the kernel file ``path`` is kept: beside its machine code."""
    return machine_code_dir(path) / f"{path.stem}.spills.json"


def has_machine_code(path: Path) -> bool:
    """Whether Numba has saved code for the kernel file ``path`` for this Python, and the
    spill report of that code is beside it (without it, the kernel compiles again)."""
    return (spill_report_path(path).is_file()
            and any(machine_code_dir(path).glob(f"{path.stem}.*{INDEX_SUFFIX}")))


def clear_machine_code(path: Path) -> None:
    """Delete every Numba cache entry (and bytecode) saved for the kernel file ``path``."""
    for stale in machine_code_dir(path).glob(f"{path.stem}.*"):
        stale.unlink(missing_ok=True)
