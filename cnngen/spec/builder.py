"""Build a spec in Python: the same plain dict a YAML file holds, one layer per call.

    b = Builder("lenet5", input_shape=(1, 32, 32))
    b.conv2d("c1", filters=6, kernel=5, activation="relu")
    b.maxpool2d("s2", size=2)
    ...
    b.loss("softmax_cross_entropy", l2=5e-4)
    spec = b.spec()

Every op in the registry is a method (``b.conv2d``, ``b.add``, ...); each returns the
layer's name, so branches read naturally: ``b.add("res", inputs=[shortcut, x])``.
Validation happens when the spec is checked or compiled, exactly as for a YAML file.
"""
from __future__ import annotations

import copy
from functools import partial
from typing import Any, Sequence

from ..ops import REGISTRY
from ..suggest import did_you_mean


def plain(value: Any) -> Any:
    """Tuples become lists, so the dict equals what YAML or JSON would give."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


class Builder:
    def __init__(self, name: str, input_shape: Sequence[int], input_name: str = "input",
                 description: str | None = None):
        self._doc: dict[str, Any] = {"cnngen": 1, "name": name,
                                     "input": {"shape": plain(input_shape)}, "layers": []}
        if input_name != "input":
            self._doc["input"]["name"] = input_name
        if description:
            self._doc["description"] = description

    def layer(self, op: str, name: str, inputs: str | Sequence[str] | None = None,
              **attrs: Any) -> str:
        """Append a layer; returns its name."""
        raw: dict[str, Any] = {"name": name, "op": op}
        if inputs is not None:
            raw["inputs"] = [inputs] if isinstance(inputs, str) else list(inputs)
        raw.update({k: plain(v) for k, v in attrs.items()})
        self._doc["layers"].append(raw)
        return name

    def __getattr__(self, op: str):
        if op.startswith("_") or op not in REGISTRY:
            raise AttributeError(f"Builder has no op {op!r}.{did_you_mean(op, REGISTRY)}")
        return partial(self.layer, op)

    @property
    def last(self) -> str:
        """The name of the most recent layer (the input's name before any layer)."""
        layers = self._doc["layers"]
        return layers[-1]["name"] if layers else self._doc["input"].get("name", "input")

    def loss(self, op: str, l2: float = 0.0) -> None:
        self._doc["loss"] = {"op": op, "l2": l2} if l2 else {"op": op}

    def spec(self) -> dict:
        """A copy of the document built so far."""
        return copy.deepcopy(self._doc)
