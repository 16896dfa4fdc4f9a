"""The machine kernels are generated for: CPU name, SIMD width, features, cores, caches.

``host()`` reads this machine once. ``cpu("avx2")`` narrows it, so the 8-wide (and 4-wide)
code paths are generated and tested on an AVX-512 machine too. ``$CNNGEN_HOST`` narrows the
host itself, so that a whole run (the test suite included) sees this machine as an AVX2 or
SSE one. ``fingerprint`` is stable across processes and goes into every kernel cache key and
tuning record.
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
# Feature-name prefixes that only an instruction set at least this wide has: narrowing below
# it drops them, so a narrowed target's fingerprint differs from the wider machine's.
ISA_ONLY_FEATURES = {"avx512": ("avx512", "evex512", "avx10", "amx"),
                     "avx2": ("avx", "fma", "f16c", "vaes", "vpclmulqdq", "xop")}
HOST_VARIABLE = "CNNGEN_HOST"


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
def detected() -> Target:
    """This machine as llvmlite reports it, read once per process; ``$CNNGEN_HOST`` aside."""
    from llvmlite import binding as llvm

    llvm.initialize_native_target()
    cpu_name = llvm.get_host_cpu_name()
    features = tuple(sorted(f[1:] for f in llvm.get_host_cpu_features().flatten().split(",")
                            if f.startswith("+")))
    isa = next((isa for isa, feature in ISA_FEATURE.items() if feature in features), "sse")
    return Target("cpu", cpu_name, isa, features, _cores(), _cache_bytes(1, "Data", 32 << 10),
                  _cache_bytes(2, "Data", 1 << 20), _cache_bytes(3, "Data", 8 << 20))


@functools.cache
def host() -> Target:
    """This machine, narrowed to ``$CNNGEN_HOST`` when it is set; read once per process.

    ``CNNGEN_HOST=cpu-avx2`` (or ``cpu-sse``) makes an AVX-512 machine report the narrower
    instruction set, its vector width and its features (the wider ISA's features dropped, so
    kernel cache keys differ from the full host's), and a request for a wider target is
    refused, as on a real AVX2 machine. It narrows what cnngen generates (every kernel is
    written for ``vector`` lanes), not the machine code: Numba still compiles for the real
    CPU and may use its wider instructions inside a kernel. Set ``NUMBA_CPU_NAME`` as well
    (e.g. ``haswell``) to keep those out too.
    """
    target = detected()
    value = os.environ.get(HOST_VARIABLE, "")
    if value in ("", "cpu"):
        return target
    names = tuple(f"cpu-{isa}" for isa in ISA_WIDTH)
    if value not in names:
        raise CnngenError(f"environment variable {HOST_VARIABLE}: unknown target {value!r}; "
                          f"expected one of {', '.join(map(repr, names))}, or unset for this "
                          f"machine as it is.")
    isa = value[4:]
    if ISA_WIDTH[isa] > target.vector:
        raise CnngenError(f"environment variable {HOST_VARIABLE}={value}: this CPU "
                          f"({target.cpu_name}) has no {isa}; it supports up to {target.isa}. "
                          f"{HOST_VARIABLE} can only narrow the host; unset it or use a "
                          f"narrower target.")
    return narrow(target, isa)


def narrow(target: Target, isa: str) -> Target:
    """``target`` limited to the narrower ``isa``: its width, and without wider features."""
    dropped = tuple(prefix for wider, prefixes in ISA_ONLY_FEATURES.items()
                    if ISA_WIDTH[wider] > ISA_WIDTH[isa] for prefix in prefixes)
    features = tuple(f for f in target.features if not f.startswith(dropped))
    return replace(target, isa=isa, features=features)


def cpu(isa: str | None = None) -> Target:
    """The host CPU, optionally narrowed to an older instruction set ("avx2", "sse")."""
    target = host()
    if isa is None or isa == target.isa:
        return target
    if isa not in ISA_WIDTH:
        raise CnngenError(f"unknown instruction set {isa!r}; expected one of {tuple(ISA_WIDTH)}")
    if ISA_WIDTH[isa] > target.vector:
        narrowed = (f", narrowed by {HOST_VARIABLE}={os.environ.get(HOST_VARIABLE)}"
                    if target.isa != detected().isa else "")
        raise CnngenError(f"this CPU ({target.cpu_name}{narrowed}) has no {isa}; it supports "
                          f"up to {target.isa}")
    return narrow(target, isa)


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
