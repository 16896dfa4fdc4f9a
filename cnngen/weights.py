"""Network weights: ``{layer: {param: array}}``, their initialisation, validation, and
npz files with keys ``"<layer>/<param>"`` (PyTorch layouts, so weights map one to one).

Batch-norm running statistics travel with the parameters, as in a PyTorch state dict.
Writes are atomic: a crash mid-save leaves the previous file intact.
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .errors import WeightsError
from .ir import Graph
from .ops import REGISTRY

Weights = dict[str, dict[str, np.ndarray]]


def init_weights(graph: Graph, seed: int = 0) -> Weights:
    """He-normal conv/dense weights, zero biases, identity batch norm; float64."""
    rng = np.random.default_rng(seed)
    return {node.name: REGISTRY[node.op].init(node, rng)
            for node in graph.nodes if node.params or node.state}


def check_weights(graph: Graph, weights, dtype=np.float64) -> Weights:
    """Validated copies of ``weights`` in ``dtype``; every parameter and buffer present
    with its expected shape, nothing unknown."""
    if not isinstance(weights, dict):
        raise WeightsError(f"weights: expected a dict {{layer: {{param: array}}}}; received "
                           f"{type(weights).__name__}.")
    expected = {node.name: {**node.params, **node.state} for node in graph.nodes
                if node.params or node.state}
    for layer in weights:
        if layer not in expected:
            raise WeightsError(f"weights: {layer!r} is not a layer with parameters in "
                               f"{graph.name!r}; layers with parameters: "
                               f"{', '.join(expected) or 'none'}.")
    checked: Weights = {}
    for layer, shapes in expected.items():
        given = weights.get(layer)
        if not isinstance(given, dict):
            raise WeightsError(f"weights: missing layer {layer!r} (needs "
                               f"{', '.join(shapes)}).")
        for param in given:
            if param not in shapes:
                raise WeightsError(f"weights: layer {layer!r} has no parameter {param!r}; "
                                   f"expected {', '.join(shapes)}.")
        checked[layer] = {}
        for param, shape in shapes.items():
            if param not in given:
                raise WeightsError(f"weights: layer {layer!r} is missing {param!r} of shape "
                                   f"{shape}.")
            array = np.asarray(given[param])
            if array.shape != tuple(shape):
                raise WeightsError(f"weights: {layer}/{param} must have shape {tuple(shape)}; "
                                   f"received {array.shape}.")
            if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(
                    array.dtype, np.integer):
                raise WeightsError(f"weights: {layer}/{param} must be numeric; received "
                                   f"dtype {array.dtype}.")
            checked[layer][param] = array.astype(dtype, copy=True)
    return checked


def save_npz(weights: Weights, path: str | os.PathLike) -> None:
    """Write ``weights`` to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    arrays = {f"{layer}/{param}": np.asarray(a) for layer, ps in weights.items()
              for param, a in ps.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_npz(path: str | os.PathLike) -> Weights:
    """Read an npz written by ``save_npz`` (or by hand with ``"<layer>/<param>"`` keys)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            weights: Weights = {}
            for key in data.files:
                layer, sep, param = key.partition("/")
                if not sep or not param:
                    raise WeightsError(f"weights file '{path}': key {key!r} is not "
                                       f"'<layer>/<param>'.")
                weights.setdefault(layer, {})[param] = data[key]
            return weights
    except FileNotFoundError:
        raise WeightsError(f"weights file '{path}' not found.") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        if isinstance(e, WeightsError):
            raise
        raise WeightsError(f"weights file '{path}' is corrupt or not an npz file: {e}") from None
