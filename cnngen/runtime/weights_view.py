"""``net.weights``: a compiled net's parameters as a mapping that writes through.

    net.weights["c1"]["w"]              # read-only float64 array, PyTorch layout
    net.weights["c1"]["w"] = w          # validated, then repacked into the kernels' layouts
    net.weights["c1"] = {"w": w, "b": b}
    net.weights = {...}                 # every layer at once (validated)
    net.weights["c1"]["w"][...] = w     # ValueError: assignment destination is read-only

An edit either takes effect or raises: the arrays handed out are read-only views, so a
slice assignment cannot change a copy that the kernels never see.
"""
from __future__ import annotations

from collections.abc import Mapping, MutableMapping

import numpy as np

from ..errors import WeightsError


def read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


def plain(weights) -> dict:
    """``{layer: {param: array}}`` as plain dicts (from any nested mapping)."""
    if not isinstance(weights, Mapping):
        return weights
    return {layer: dict(params) if isinstance(params, Mapping) else params
            for layer, params in weights.items()}


class LayerWeights(MutableMapping):
    """One layer's ``{param: read-only array}``; assigning a parameter updates the net."""

    def __init__(self, net, layer: str):
        self._net, self._layer = net, layer

    def __getitem__(self, param: str) -> np.ndarray:
        return read_only(self._net._weights[self._layer][param])

    def __setitem__(self, param: str, value) -> None:
        self._net.set_weights({self._layer: {**self._net._weights[self._layer], param: value}})

    def __delitem__(self, param: str) -> None:
        raise WeightsError(f"weights: {self._layer}/{param} cannot be removed; assign a new "
                           f"array to replace it.")

    def __iter__(self):
        return iter(self._net._weights[self._layer])

    def __len__(self) -> int:
        return len(self._net._weights[self._layer])

    def __repr__(self) -> str:
        return repr({k: v.shape for k, v in self._net._weights[self._layer].items()})


class NetWeights(MutableMapping):
    """``{layer: LayerWeights}`` of a compiled net; assigning a layer's dict updates it."""

    def __init__(self, net):
        self._net = net

    def __getitem__(self, layer: str) -> LayerWeights:
        if layer not in self._net._weights:
            raise KeyError(layer)
        return LayerWeights(self._net, layer)

    def __setitem__(self, layer: str, params) -> None:
        self._net.set_weights({layer: plain({layer: params})[layer]})

    def __delitem__(self, layer: str) -> None:
        raise WeightsError(f"weights: layer {layer!r} cannot be removed; assign new "
                           f"parameters to replace them.")

    def __iter__(self):
        return iter(self._net._weights)

    def __len__(self) -> int:
        return len(self._net._weights)

    def __repr__(self) -> str:
        return f"NetWeights({', '.join(self._net._weights)})"
