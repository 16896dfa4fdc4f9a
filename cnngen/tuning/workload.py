"""What a tuning record is about, and applying records when a net is compiled.

A workload is what one fused kernel computes, without the layers' names: the op chain with
its attributes and the tensor types in and out; a weight gradient's (``describe_grad``) is
its forward's, marked as a gradient. Two layers with equal workloads (the four
3x3 convs of ResNet-18's first stage) share their records. The template hash covers every
file that decides what source a schedule produces (templates, lowerings, the kernel
runtime), so a record measured before any of them changed is stale and never applied.
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from .. import schedule as sched
from ..codegen.cache import RUNTIME_HASH
from ..codegen.render import templates_dir
from ..ir import Node
from ..passes import origin
from ..target import Target
from .db import Context, TuningDB

CODEGEN = Path(__file__).resolve().parent.parent / "codegen"


@functools.cache
def template_hash() -> str:
    """A hash of the CPU templates, the CPU lowerings and the kernel runtime modules."""
    digest = hashlib.sha256(RUNTIME_HASH.encode())
    for path in sorted([*(templates_dir() / "cpu").glob("*.tmpl"), *(CODEGEN / "cpu").glob("*.py")]):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _plain(value):
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in sorted(value.items())}
    return value


def describe(node: Node) -> dict:
    """The workload of a (fused) plan node: op chain, attributes and types, no names."""
    return {"ops": [{"op": n.op, "attrs": _plain(dict(n.attrs))} for n in origin(node)],
            "in": [list(t.shape) for t in node.in_types], "out": list(node.out.shape)}


def workload_key(node: Node) -> str:
    text = json.dumps(describe(node), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def kernel_family(node: Node) -> str:
    return origin(node)[0].op


def describe_grad(node: Node) -> dict:
    """The workload of a training node's weight gradient: its forward's, marked as the
    gradient (so its records never mix with the forward's), with the activation left out
    (its derivative is a kernel of its own; the weight gradient is the same without it)."""
    work = describe(node)
    for op in work["ops"]:
        if "activation" in op["attrs"]:
            op["attrs"]["activation"] = "identity"
    return {**work, "grad": "weight"}


def grad_workload_key(node: Node) -> str:
    text = json.dumps(describe_grad(node), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def grad_kernel_family(node: Node) -> str:
    return f"{origin(node)[0].op}_wgrad"


class Records:
    """Records of one tuning database, applied to the nodes of plans for one target.

    ``schedule_for`` gives the recorded schedule or None, and a sentence for ``explain``:
    which record was applied, or why none was."""

    def __init__(self, path, target: Target):
        self.path = Path(path)
        self.db = TuningDB(self.path, readonly=True)
        self.context = Context.current(target, template_hash())

    def schedule_for(self, node: Node, n_batch: int) -> tuple[sched.Schedule | None, str]:
        return self._lookup(workload_key(node), n_batch)

    def grad_schedule_for(self, node: Node, n_batch: int) -> tuple[sched.Schedule | None, str]:
        """The recorded schedule of a training node's weight gradient (``tune_training``)."""
        return self._lookup(grad_workload_key(node), n_batch)

    def _lookup(self, key: str, n_batch: int) -> tuple[sched.Schedule | None, str]:
        lookup = self.db.best(key, n_batch, self.context)
        if lookup.record is None:
            where = "" if lookup.reason.startswith("no tuning database") else f"{self.path}: "
            return None, f"heuristic ({where}{lookup.reason})"
        return (sched.from_dict(lookup.record.schedule),
                f"tuning database {self.path} ({lookup.reason})")

    def close(self) -> None:
        self.db.close()
