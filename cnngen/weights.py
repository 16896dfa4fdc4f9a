"""Network weights: ``{layer: {param: array}}``, their initialisation, validation, and
npz files with keys ``"<layer>/<param>"`` (PyTorch layouts, so weights map one to one).

Batch-norm running statistics travel with the parameters, as in a PyTorch state dict.
Writes are atomic: a crash mid-save leaves the previous file intact.
"""
from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib import format as np_format

from .errors import WeightsError
from .files import cannot_save, write_atomic
from .ir import Graph
from .ops import REGISTRY

Weights = dict[str, dict[str, np.ndarray]]


INIT_SCHEMES = ("he", "pytorch")


def init_weights(graph: Graph, seed: int = 0, scheme: str = "he") -> Weights:
    """Initial weights, float64, identity batch norm. ``scheme`` "he": He-normal conv and
    dense weights, zero biases. "pytorch": PyTorch's defaults for conv, transposed conv and
    dense (``kaiming_uniform_(a=sqrt(5))``): weights and biases uniform in
    +-1/sqrt(fan_in), fan_in = prod(w.shape[1:]); published training recipes assume it."""
    if scheme not in INIT_SCHEMES:
        raise WeightsError(f"init: expected one of {', '.join(INIT_SCHEMES)}; received "
                           f"{scheme!r}.")
    rng = np.random.default_rng(seed)
    weights = {node.name: REGISTRY[node.op].init(node, rng)
               for node in graph.nodes if node.params or node.state}
    if scheme == "pytorch":
        for params in weights.values():
            if "w" in params:
                bound = 1.0 / math.sqrt(max(1, int(np.prod(params["w"].shape[1:]))))
                for name in ("w", "b"):
                    if name in params:
                        params[name] = rng.uniform(-bound, bound, size=params[name].shape)
    return weights


def check_weights(graph: Graph, weights, dtype=np.float64) -> Weights:
    """Validated copies of ``weights`` in ``dtype``; every parameter and buffer present
    with its expected shape, nothing unknown."""
    if not isinstance(weights, Mapping):
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
        if not isinstance(given, Mapping):
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
    """Write ``weights`` to ``path`` atomically (files.write_atomic)."""
    path = Path(path)
    arrays = {f"{layer}/{param}": np.asarray(a) for layer, ps in weights.items()
              for param, a in ps.items()}
    try:
        write_atomic(path, lambda f: np.savez(f, **arrays))
    except OSError as e:
        raise WeightsError(cannot_save("weights", path, e, "weights.npz")) from None


NPZ_EXPECTED = ("expected an .npz archive with one '<layer>/<param>' key per parameter, such as "
                "'c1/w' (cnngen.save_npz and net.save_weights write one)")


def load_npz(path: str | os.PathLike, graph: Graph | None = None) -> Weights:
    """Read an npz written by ``save_npz`` (or by hand with ``"<layer>/<param>"`` keys).

    Each member's .npy header is checked before its data is read: the dtype must be numeric
    and the data must be as long as the header says and as the archive declares. With
    ``graph``, every key must be one of its parameters and every shape the expected one, so
    nothing larger than the network's own weights is ever allocated.
    """
    expected = None if graph is None else {node.name: {**node.params, **node.state}
                                           for node in graph.nodes if node.params or node.state}
    try:
        with open(path, "rb") as f:
            first = f.read(6)
            if first == b"\x93NUMPY":
                f.seek(0)
                shape, dtype = _array_header(f, f"weights file '{path}'")
                raise WeightsError(f"weights file '{path}' is a single .npy array (shape "
                                   f"{shape}, dtype {dtype}); {NPZ_EXPECTED}.")
            if not first.startswith(b"PK"):
                raise WeightsError(f"weights file '{path}' is corrupt or not an npz file: "
                                   f"found neither a zip archive nor an .npy array ("
                                   f"{f'it starts with {first!r}' if first else 'it is empty'}"
                                   f"); {NPZ_EXPECTED}.")
            f.seek(0)
            with zipfile.ZipFile(f) as archive:
                return _read_members(archive, os.fstat(f.fileno()).st_size, path, expected)
    except FileNotFoundError:
        raise WeightsError(f"weights file '{path}' not found.") from None
    except IsADirectoryError:
        raise WeightsError(f"weights file '{path}' is a directory; {NPZ_EXPECTED}.") from None
    except WeightsError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError) as e:
        raise WeightsError(f"weights file '{path}' is corrupt or not an npz file: {e}") from None


def _read_members(archive: zipfile.ZipFile, archive_bytes: int, path, expected) -> Weights:
    """Every ``"<layer>/<param>.npy"`` member, each header checked before its data is read."""
    weights: Weights = {}
    for info in archive.infolist():
        where = f"weights file '{path}', member {info.filename!r}"
        key, npy, tail = info.filename.rpartition(".npy")
        layer, sep, param = key.partition("/")
        if not npy or tail or not sep or not param:
            raise WeightsError(f"{where}: expected '<layer>/<param>.npy' (key "
                               f"'<layer>/<param>'); {NPZ_EXPECTED}.")
        if param in weights.get(layer, {}):
            raise WeightsError(f"{where}: key {key!r} appears twice.")
        want = None
        if expected is not None:
            if layer not in expected or param not in expected[layer]:
                known = ", ".join(f"{n}/{q}" for n, ps in expected.items() for q in ps)
                raise WeightsError(f"{where}: {key!r} is not a parameter of this network; "
                                   f"expected keys: {known or 'none'}.")
            want = tuple(expected[layer][param])
        # Declared sizes bound what can be read: a stored member is no larger than the
        # archive, and deflate expands at most 1032:1.
        ratio = {zipfile.ZIP_STORED: 1, zipfile.ZIP_DEFLATED: 1032}.get(info.compress_type)
        if ratio is None:
            raise WeightsError(f"{where}: compression method {info.compress_type} is not "
                               f"supported; expected stored or deflated (numpy.savez, "
                               f"numpy.savez_compressed).")
        if info.file_size > ratio * min(info.compress_size, archive_bytes) + 1024:
            raise WeightsError(f"{where}: declares {info.file_size} bytes, more than its "
                               f"{info.compress_size} compressed bytes can hold; the archive "
                               f"is corrupt.")
        with archive.open(info) as member:
            shape, dtype = _array_header(member, where)
            if dtype.hasobject or dtype.kind not in "fiu":
                raise WeightsError(f"{where}: must hold numbers (float or int); the header "
                                   f"claims dtype {dtype}.")
            data_bytes = math.prod(shape) * dtype.itemsize
            if want is not None and shape != want:
                raise WeightsError(f"{where}: {layer}/{param} must have shape {want}; the "
                                   f"file holds shape {shape} ({dtype}).")
            if data_bytes != info.file_size - member.tell():
                raise WeightsError(f"{where}: the header claims shape {shape} ({dtype}, "
                                   f"{data_bytes} bytes) but the member holds "
                                   f"{info.file_size - member.tell()} bytes of data.")
        with archive.open(info) as member:
            weights.setdefault(layer, {})[param] = np_format.read_array(member, allow_pickle=False)
    return weights


def _array_header(f, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from an .npy header, without reading the data."""
    try:
        version = np_format.read_magic(f)
        read = {(1, 0): np_format.read_array_header_1_0,
                (2, 0): np_format.read_array_header_2_0}.get(version)
        if read is None:
            raise WeightsError(f"{where}: .npy format version {version[0]}.{version[1]} is not "
                               f"supported; expected 1.0 or 2.0 (numpy.savez writes 1.0).")
        shape, _, dtype = read(f)
    except (ValueError, EOFError) as e:
        if isinstance(e, WeightsError):
            raise
        raise WeightsError(f"{where}: unreadable .npy header: {e}") from None
    if any(d < 0 for d in shape):
        raise WeightsError(f"{where}: the .npy header claims a negative shape {shape}.")
    return tuple(shape), dtype


@dataclass(frozen=True)
class TransferReport:
    """What ``transfer`` took from the source weights, layer by layer."""

    matched: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]      # (layer, why)
    unused: tuple[str, ...]                   # source layers the graph has no place for

    def __str__(self) -> str:
        lines = [f"loaded {len(self.matched)} layers: {', '.join(self.matched) or 'none'}"]
        lines += [f"kept the initial weights of {layer}: {why}" for layer, why in self.skipped]
        if self.unused:
            lines.append(f"not used from the source: {', '.join(self.unused)}")
        return "\n".join(lines)


def transfer(graph: Graph, source, seed: int = 0,
             scheme: str = "he") -> tuple[Weights, TransferReport]:
    """Weights for ``graph``: each layer's from ``source`` (a weights dict or an npz path)
    where the name and every parameter's shape match, else its initial weights. The report
    says what matched, what was skipped and why (missing, shape mismatch): the way to reuse
    a trained network's features under a new head."""
    if isinstance(source, (str, os.PathLike)):
        source = load_npz(source)
    if not isinstance(source, Mapping):
        raise WeightsError(f"weights: expected a dict {{layer: {{param: array}}}} or an .npz "
                           f"path; received {type(source).__name__}.")
    weights = init_weights(graph, seed, scheme)
    matched, skipped = [], []
    for node in graph.nodes:
        if node.name not in weights:
            continue
        given = source.get(node.name)
        expected = {**node.params, **node.state}
        if given is None:
            skipped.append((node.name, "not in the source"))
            continue
        given = {p: np.asarray(a) for p, a in given.items()}
        missing = [p for p in expected if p not in given]
        if missing:
            skipped.append((node.name, f"the source has no {', '.join(missing)}"))
            continue
        wrong = [f"{p} is {given[p].shape}, expected {tuple(s)}"
                 for p, s in expected.items() if given[p].shape != tuple(s)]
        if wrong:
            skipped.append((node.name, "shape mismatch: " + "; ".join(wrong)))
            continue
        weights[node.name] = {p: given[p].astype(np.float64) for p in expected}
        matched.append(node.name)
    unused = tuple(layer for layer in source if layer not in weights)
    return weights, TransferReport(tuple(matched), tuple(skipped), unused)
