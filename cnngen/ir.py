"""The graph a spec becomes: named, typed nodes in topological order. Immutable.

Shapes never include the batch dimension, which stays free: ``(C,)``, ``(C, L)`` or
``(C, H, W)``. ``str()`` of any of these types prints something a person can read.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Any, Mapping


@dataclass(frozen=True)
class TensorType:
    """A float32 activation shape without the batch dimension."""

    shape: tuple[int, ...]

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def spatial(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def __str__(self) -> str:
        return "(" + ", ".join(["N", *map(str, self.shape)]) + ")"


def frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Node:
    """One layer after validation and shape inference.

    ``attrs`` are normalised (tuples per spatial dimension, padding resolved to explicit
    ``(begin, end)`` pairs). ``params`` are the trainable parameter shapes, ``state`` the
    non-trainable buffers (batch-norm running statistics). ``refs`` are layers read by an
    attribute rather than as data (max_unpool's switches). ``fused`` is set by the
    inference passes: the spec's own nodes that this one computes, in order (the node is
    named after the last of them, so its readers are unchanged).
    """

    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: Mapping[str, Any]
    in_types: tuple[TensorType, ...]
    out: TensorType
    params: Mapping[str, tuple[int, ...]]
    state: Mapping[str, tuple[int, ...]]
    macs: int
    refs: tuple[str, ...] = ()
    fused: tuple[Node, ...] = ()

    @property
    def deps(self) -> tuple[str, ...]:
        """Every layer this one reads: its inputs and its refs."""
        return self.inputs + self.refs

    @property
    def n_params(self) -> int:
        return sum(TensorType(s).size for s in self.params.values())

    def __str__(self) -> str:
        attrs = ", ".join(f"{k}={v}" for k, v in self.attrs.items())
        return f"{self.name} = {self.op}({', '.join(self.inputs)}; {attrs}) -> {self.out}"


@dataclass(frozen=True)
class Loss:
    """The training objective applied to the graph's output, plus ``0.5*l2*sum(w**2)``."""

    op: str
    l2: float = 0.0


@dataclass(frozen=True)
class Graph:
    name: str
    input_name: str
    input: TensorType
    nodes: tuple[Node, ...]
    loss: Loss | None = None

    @property
    def output(self) -> Node:
        return self.nodes[-1]

    @cached_property
    def _by_name(self) -> dict[str, Node]:
        return {node.name: node for node in self.nodes}

    def node(self, name: str) -> Node:
        """The node called ``name`` (KeyError if none): a dict lookup, so passes and plans
        that look up every layer stay linear in the number of layers."""
        return self._by_name[name]

    def type_of(self, name: str) -> TensorType:
        return self.input if name == self.input_name else self.node(name).out

    @property
    def n_params(self) -> int:
        return sum(node.n_params for node in self.nodes)

    @property
    def macs(self) -> int:
        return sum(node.macs for node in self.nodes)

    def __str__(self) -> str:
        lines = [f"graph {self.name}({self.input_name}: {self.input})"]
        lines += [f"  {node}" for node in self.nodes]
        if self.loss:
            lines.append(f"  loss {self.loss.op}(l2={self.loss.l2})")
        return "\n".join(lines)
