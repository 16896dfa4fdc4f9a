"""A kernel to generate and a call of it: what lowering produces and the runtime runs.

``KernelSpec`` is everything needed to render one kernel's source: the template, its
values, and what it is for (op chain, schedule, FLOPs, bytes). ``Call`` binds a kernel's
arguments: activation buffers by name, and constants packed from the layer's parameters.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..schedule import Schedule
from ..target import Target
from .render import render


def kernel_name(ops: tuple[str, ...], layout: str, schedule: Schedule | None,
                target: Target) -> str:
    """``conv2d_relu__nchw16c__oc2_ow14_ic4_rows1__avx512``: greppable, and part of the cache key."""
    parts = ["_".join(ops), layout]
    if schedule is not None:
        parts.append(str(schedule))
    parts.append(target.isa)
    return "__".join(parts)


def isa_of(kernel_file_stem: str) -> str:
    """The instruction set a kernel was generated for, from its file stem (``<name>_<key>``)."""
    return kernel_file_stem.rsplit("__", 1)[1].rsplit("_", 1)[0]


@dataclass(frozen=True)
class KernelSpec:
    template: str
    ops: tuple[str, ...]
    layout: str
    values: tuple[tuple[str, object], ...]
    schedule: Schedule | None = None
    flops: int = 0
    bytes: int = 0

    def name(self, target: Target) -> str:
        return kernel_name(self.ops, self.layout, self.schedule, target)

    def source(self, target: Target) -> str:
        return _source(self, target)


@functools.lru_cache(maxsize=1024)
def _source(kernel: KernelSpec, target: Target) -> str:
    """A kernel's source, rendered once per process (a plan of a deep network holds many
    calls of one kernel)."""
    header = {"kernel_name": kernel.name(target), "op_chain": " -> ".join(kernel.ops),
              "schedule": str(kernel.schedule) if kernel.schedule else "-", "target": str(target)}
    values = dict(kernel.values, vector=target.vector)
    return render(target.kind, kernel.template, values, header)


@dataclass(frozen=True)
class Buffer:
    """An activation buffer of the plan, by tensor name (a layer, the input, or a temporary)."""

    name: str


@dataclass(frozen=True)
class Const:
    """A constant argument packed from the layer's parameters: ``pack(params) -> float32[:]``."""

    layer: str
    what: str
    pack: Callable[[dict[str, np.ndarray]], np.ndarray] = field(compare=False)


@dataclass(frozen=True)
class ParamGrad:
    """The gradient of one trainable parameter: a flat float32 array in the parameter's own
    (PyTorch) layout, which a backward kernel overwrites whole (the L2 term is the
    optimizer's)."""

    layer: str
    param: str


@dataclass(frozen=True)
class Call:
    """One kernel launch of a layer: ``kernel(*args)``; ``layer`` names the spec layer."""

    layer: str
    kernel: KernelSpec
    args: tuple[Buffer | Const | ParamGrad, ...]
    edge: bool = False


def spec(template: str, ops, layout: str, schedule=None, flops=0, bytes=0, **values) -> KernelSpec:
    """A KernelSpec with its template values given as keywords."""
    return KernelSpec(template, tuple(ops), layout, tuple(sorted(values.items())), schedule,
                      flops, bytes)
