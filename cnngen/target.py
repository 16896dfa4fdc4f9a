"""The machine kernels are generated for: CPU name, SIMD width, features, cores, caches.

``host()`` reads this machine once. ``cpu("avx2")`` narrows it, so the 8-wide (and 4-wide)
code paths are generated and tested on an AVX-512 machine too. ``fingerprint`` is stable
across processes and goes into every kernel cache key and tuning record.
"""
from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import CnngenError

# Widest float32 vector of each instruction set, widest first.
ISA_WIDTH = {"avx512": 16, "avx2": 8, "sse": 4}
ISA_FEATURE = {"avx512": "avx512f", "avx2": "avx2", "sse": "sse2"}


@dataclass(frozen=True)
class Target:
    """A CPU as the code generator sees it. ``vector`` is the SIMD width in float32 lanes."""

    kind: str
    cpu_name: str
    isa: str
    features: tuple[str, ...]
    cores: int
    l1d_bytes: int
    l2_bytes: int
    l3_bytes: int

    @property
    def vector(self) -> int:
        return ISA_WIDTH[self.isa]

    @property
    def vector_registers(self) -> int:
        """Architectural SIMD registers: 32 zmm with AVX-512, 16 ymm/xmm otherwise."""
        return 32 if self.isa == "avx512" else 16

    @property
    def fingerprint(self) -> str:
        text = repr((self.kind, self.cpu_name, self.isa, self.features, self.cores,
                     self.l1d_bytes, self.l2_bytes, self.l3_bytes))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def __str__(self) -> str:
        return (f"{self.kind} {self.cpu_name} {self.isa} ({self.vector} x float32), "
                f"{self.cores} cores, L1d {self.l1d_bytes >> 10} KiB, L2 {self.l2_bytes >> 10} KiB, "
                f"L3 {self.l3_bytes >> 20} MiB")


def _cache_bytes(level: int, kind: str, default: int) -> int:
    """Per-core size of one cache level from sysfs (Linux), else ``default``."""
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(root.glob("index*")):
        try:
            if (int((index / "level").read_text()) == level
                    and (index / "type").read_text().strip() in (kind, "Unified")):
                text = (index / "size").read_text().strip().upper()
                scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
                return int(text.rstrip("KMG")) * scale
        except (OSError, ValueError):
            continue
    return default


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@functools.cache
def host() -> Target:
    """This machine, read once per process."""
    from llvmlite import binding as llvm

    llvm.initialize_native_target()
    cpu_name = llvm.get_host_cpu_name()
    features = tuple(sorted(f[1:] for f in llvm.get_host_cpu_features().flatten().split(",")
                            if f.startswith("+")))
    isa = next((isa for isa, feature in ISA_FEATURE.items() if feature in features), "sse")
    return Target("cpu", cpu_name, isa, features, _cores(), _cache_bytes(1, "Data", 32 << 10),
                  _cache_bytes(2, "Data", 1 << 20), _cache_bytes(3, "Data", 8 << 20))


def cpu(isa: str | None = None) -> Target:
    """The host CPU, optionally narrowed to an older instruction set ("avx2", "sse")."""
    target = host()
    if isa is None or isa == target.isa:
        return target
    if isa not in ISA_WIDTH:
        raise CnngenError(f"unknown instruction set {isa!r}; expected one of {tuple(ISA_WIDTH)}")
    if ISA_WIDTH[isa] > target.vector:
        raise CnngenError(f"this CPU ({target.cpu_name}) has no {isa}; it supports up to "
                          f"{target.isa}")
    return replace(target, isa=isa)


def resolve(target: str | Target | None) -> Target:
    """A Target from what a user passes: None or "cpu" (the host), "cpu-avx2", or a Target."""
    if isinstance(target, Target):
        return target
    if target in (None, "cpu"):
        return cpu()
    if isinstance(target, str) and target.startswith("cpu-"):
        return cpu(target[4:])
    if target == "cuda":
        raise CnngenError("target 'cuda' is not available yet; use 'cpu'")
    raise CnngenError(f"unknown target {target!r}; expected 'cpu', 'cpu-avx512', 'cpu-avx2', "
                      f"'cpu-sse' or a cnngen.target.Target")
