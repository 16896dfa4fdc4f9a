"""A training run's parameters: one flat float32 buffer for the optimizer, views per layer.

    params = Parameters(graph, weights, frozen={"c1"})
    params.flat, params.grads         # every trainable parameter (then one zero), and gradients
    params.views["f5"]["w"]            # float32 (units, in) view into ``flat``
    params.grad_views["f5"]["w"]       # the same slot of ``grads``
    params.weights()                   # {layer: {param: float64}}, frozen and state included

The decayed parameters (every ``w``, which the spec's L2 term applies to) come first, so the
optimizer applies L2 to ``flat[:n_decayed]``. Frozen layers' parameters and the batch-norm
running statistics stay outside the flat buffer, as float32 arrays of their own.
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph
from ..ops.loss import DECAYED
from ..passes.autodiff import trainable


class Parameters:
    def __init__(self, graph: Graph, weights: dict, frozen: set[str] = frozenset()):
        slots = [(node.name, param, shape) for node in graph.nodes
                 if trainable(node, frozen) for param, shape in node.params.items()]
        slots.sort(key=lambda s: s[1] != DECAYED)        # stable: layer order within each
        self.n_decayed = sum(int(np.prod(shape)) for _, p, shape in slots if p == DECAYED)
        size = sum(int(np.prod(shape)) for _, _, shape in slots)
        # one slot past the parameters stays zero: packed layouts copy their padding from it
        self.flat = np.zeros(size + 1, np.float32)
        self.grads = np.zeros_like(self.flat)
        self.size = size
        self.views: dict[str, dict[str, np.ndarray]] = {}
        self.grad_views: dict[str, dict[str, np.ndarray]] = {}
        self.offsets: dict[tuple[str, str], int] = {}
        offset = 0
        for layer, param, shape in slots:
            n = int(np.prod(shape))
            self.offsets[layer, param] = offset
            self.views.setdefault(layer, {})[param] = self.flat[offset:offset + n].reshape(shape)
            self.grad_views.setdefault(layer, {})[param] = self.grads[offset:offset + n]
            offset += n
        self.fixed: dict[str, dict[str, np.ndarray]] = {}   # frozen parameters and state
        for node in graph.nodes:
            for param in (*node.params, *node.state):
                value = np.asarray(weights[node.name][param])
                if param in self.views.get(node.name, {}):
                    self.views[node.name][param][...] = value
                else:
                    self.fixed.setdefault(node.name, {})[param] = value.astype(np.float32)

    def offset(self, layer: str, param: str) -> int | None:
        """Where a trainable parameter starts in ``flat`` (None: frozen, or state)."""
        return self.offsets.get((layer, param))

    @property
    def trainable_layers(self) -> set[str]:
        return set(self.views)

    def layer(self, name: str) -> dict[str, np.ndarray]:
        """Every parameter and state array of layer ``name`` (float32, PyTorch layouts)."""
        return {**self.fixed.get(name, {}), **self.views.get(name, {})}

    def by_layer(self) -> dict[str, dict[str, np.ndarray]]:
        return {name: self.layer(name) for name in {*self.views, *self.fixed}}

    def weights(self) -> dict[str, dict[str, np.ndarray]]:
        """A float64 copy of every parameter and state array: ``{layer: {param: array}}``."""
        return {layer: {p: a.astype(np.float64) for p, a in params.items()}
                for layer, params in self.by_layer().items()}
