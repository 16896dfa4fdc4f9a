"""Training checkpoints: one file with the spec, weights, optimizer state and metadata
(epoch, step, RNG states, trainer settings), with no pickle anywhere.

    save_checkpoint("run.ckpt", spec=spec, weights=weights, optimizer=state,
                    meta={"epoch": 3, "step": 1200, "rng": rng_state(rng), "settings": {...}})
    ckpt = load_checkpoint("run.ckpt")    # Checkpoint(spec, weights, optimizer, meta)

The file is an npz (a zip of .npy members, as ``numpy.savez`` writes):
- ``__checkpoint__.npy``: a uint8 array holding one UTF-8 JSON document
  ``{"format": "cnngen-checkpoint", "version": 1, "cnngen": "0.1.0", "spec": ...,
  "meta": ..., "weights": {layer: [param, ...]}, "optimizer": tree}``;
- ``weights/<layer>/<param>.npy``: each weight array, dtype and bits as given;
- ``optimizer/<key>/<key>.npy``: each array (and float) in the optimizer state. ``tree``
  mirrors the state's nesting; each leaf names its kind: ``{"array": member}`` (an ndarray),
  ``{"scalar": member}`` (a numpy scalar), ``{"float": member}`` (a Python float, kept as a
  float64 so every bit survives), ``{"int": 5}``, ``{"bool": true}`` or ``{"none": null}``.
Arrays round-trip bitwise. ``spec`` and ``meta`` must be plain data (dicts with string keys,
lists, str, int, float, bool, None); numpy scalars and arrays in them become numbers and
lists, tuples become lists. Python's json keeps ints of any size (the 128-bit PCG64 state) and
floats exactly.

A save is atomic (files.write_atomic: a temporary file in the target's directory, fsynced,
then renamed over it), so a crash or kill mid-save leaves the previous checkpoint intact. A
truncated, corrupt or foreign file, or one from a newer format, raises WeightsError naming
the file and what is wrong.
"""
from __future__ import annotations

import json
import math
import os
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.lib import format as np_format

from ..errors import WeightsError
from ..files import cannot_save, write_atomic
from ..weights import _array_header

FORMAT = "cnngen-checkpoint"
VERSION = 1
DOC = "__checkpoint__"
BIT_GENERATORS = {cls.__name__: cls for cls in (np.random.PCG64, np.random.PCG64DXSM,
                                                np.random.MT19937, np.random.Philox,
                                                np.random.SFC64)}


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """What ``load_checkpoint`` read: the spec dict, ``{layer: {param: array}}``, the
    optimizer state (nested dict of arrays and numbers) and the metadata dict."""
    spec: dict
    weights: dict[str, dict[str, np.ndarray]]
    optimizer: dict
    meta: dict


def save_checkpoint(path: str | os.PathLike, *, spec: Mapping, weights: Mapping,
                    optimizer: Mapping, meta: Mapping) -> None:
    """Write a checkpoint to ``path`` atomically (see the module docstring)."""
    from .. import __version__

    arrays: dict[str, np.ndarray] = {}
    if not isinstance(weights, Mapping):
        raise WeightsError(f"checkpoint weights: expected {{layer: {{param: array}}}}; received "
                           f"{type(weights).__name__}.")
    listing: dict[str, list[str]] = {}
    for layer, params in weights.items():
        _check_name(layer, "checkpoint weights: layer")
        if not isinstance(params, Mapping):
            raise WeightsError(f"checkpoint weights[{layer!r}]: expected {{param: array}}; "
                               f"received {type(params).__name__}.")
        listing[layer] = []
        for param, array in params.items():
            _check_name(param, f"checkpoint weights[{layer!r}]: parameter")
            arrays[f"weights/{layer}/{param}"] = _numeric(array, f"weights[{layer!r}][{param!r}]")
            listing[layer].append(param)
    if not isinstance(optimizer, Mapping):
        raise WeightsError(f"checkpoint optimizer: expected a dict of arrays and numbers; "
                           f"received {type(optimizer).__name__}.")
    doc = {"format": FORMAT, "version": VERSION, "cnngen": __version__,
           "spec": _plain(spec, "spec"), "meta": _plain(meta, "meta"), "weights": listing,
           "optimizer": _encode(optimizer, (), arrays)}
    if not isinstance(doc["spec"], dict) or not isinstance(doc["meta"], dict):
        raise WeightsError("checkpoint: spec and meta must be dicts.")
    text = json.dumps(doc, separators=(",", ":"))
    members = {DOC: np.frombuffer(text.encode("utf-8"), np.uint8), **arrays}
    try:
        write_atomic(path, lambda f: _write_archive(f, members))
    except OSError as e:
        raise WeightsError(cannot_save("checkpoint", path, e, "run.ckpt")) from None


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """The checkpoint in ``path``, every member checked before it is read."""
    where = f"checkpoint '{path}'"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            if not head.startswith(b"PK"):
                what = ("it is empty" if not head else
                        f"it is not a zip archive (it starts with {head!r})")
                raise WeightsError(f"{where} is not a cnngen checkpoint: {what}; expected a file "
                                   f"written by save_checkpoint / Trainer.save.")
            f.seek(0)
            with zipfile.ZipFile(f) as archive:
                return _read(archive, os.fstat(f.fileno()).st_size, where)
    except FileNotFoundError:
        raise WeightsError(f"{where} not found.") from None
    except IsADirectoryError:
        raise WeightsError(f"{where} is a directory; expected a checkpoint file.") from None
    except WeightsError:
        raise
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError,
            NotImplementedError) as e:
        raise WeightsError(f"{where} is truncated or corrupt: {e}.") from None


def rng_state(rng: np.random.Generator | np.random.BitGenerator) -> dict:
    """The JSON-able state of a numpy Generator (its bit generator's ``state``)."""
    bit_generator = rng.bit_generator if isinstance(rng, np.random.Generator) else rng
    return _plain(bit_generator.state, "rng state")


def rng_from_state(state: Mapping) -> np.random.Generator:
    """A Generator in exactly ``state`` (from ``rng_state``), or WeightsError."""
    name = state.get("bit_generator") if isinstance(state, Mapping) else None
    if name not in BIT_GENERATORS:
        raise WeightsError(f"rng state: expected a dict with 'bit_generator' one of "
                           f"{', '.join(BIT_GENERATORS)}; received {name!r}.")
    bit_generator = BIT_GENERATORS[name]()
    try:
        bit_generator.state = dict(state)
    except (TypeError, ValueError, KeyError) as e:
        raise WeightsError(f"rng state: not a valid {name} state: {e!r}.") from None
    return np.random.Generator(bit_generator)


def _write_archive(f, arrays: dict[str, np.ndarray]) -> None:
    """The npz bytes; a seam so tests can make a save fail half way."""
    np.savez(f, **arrays)


def _read(archive: zipfile.ZipFile, archive_bytes: int, where: str) -> Checkpoint:
    members = {info.filename: info for info in archive.infolist()}
    if f"{DOC}.npy" not in members:
        names = sorted(members)
        if names and all(n.endswith(".npy") and n.count("/") == 1 for n in names):
            raise WeightsError(f"{where} is a weights file (keys '<layer>/<param>', as "
                               f"net.save_weights writes), not a checkpoint; load it with "
                               f"net.load_weights or cnngen.load_npz.")
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise WeightsError(f"{where} is not a cnngen checkpoint: it has no '{DOC}.npy' member "
                           f"(members: {shown or 'none'}).")
    raw = _member(archive, members[f"{DOC}.npy"], archive_bytes, where)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise WeightsError(f"{where}: member '{DOC}.npy' must be a 1-D uint8 array (the JSON "
                           f"document); received {raw.dtype} of shape {raw.shape}.")
    try:
        doc = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise WeightsError(f"{where}: the JSON document is corrupt: {e}.") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise WeightsError(f"{where} is not a cnngen checkpoint: its document's format is "
                           f"{got!r}; expected {FORMAT!r}.")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise WeightsError(f"{where}: the format version must be an integer >= 1; received "
                           f"{version!r}.")
    if version > VERSION:
        raise WeightsError(f"{where} has checkpoint format version {version} (written by "
                           f"cnngen {doc.get('cnngen', '?')}); this cnngen reads version "
                           f"{VERSION} and older. Upgrade cnngen to load it.")
    for key, kind in (("spec", dict), ("meta", dict), ("weights", dict), ("optimizer", dict)):
        if not isinstance(doc.get(key), kind):
            raise WeightsError(f"{where}: the document's {key!r} must be a {kind.__name__}; "
                               f"received {type(doc.get(key)).__name__}.")

    def array(name: str) -> np.ndarray:
        if not isinstance(name, str) or f"{name}.npy" not in members:
            raise WeightsError(f"{where}: member '{name}.npy' is listed but missing; the file "
                               f"is corrupt.")
        return _member(archive, members[f"{name}.npy"], archive_bytes, where)

    weights = {}
    for layer, params in doc["weights"].items():
        if not isinstance(params, list):
            raise WeightsError(f"{where}: the document lists {layer!r} with {params!r}; "
                               f"expected a list of parameter names.")
        weights[layer] = {param: array(f"weights/{layer}/{param}") for param in params}
    optimizer = _decode(doc["optimizer"], array, where)
    return Checkpoint(doc["spec"], weights, optimizer, doc["meta"])


def _member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, archive_bytes: int,
            where: str) -> np.ndarray:
    """One .npy member, its header checked before any data is read: numeric dtype, and as
    many bytes as the header says and the archive can hold (so nothing huge is allocated
    on a corrupt header), then read whole so the zip's CRC is checked."""
    where = f"{where}, member {info.filename!r}"
    ratio = {zipfile.ZIP_STORED: 1, zipfile.ZIP_DEFLATED: 1032}.get(info.compress_type)
    if ratio is None:
        raise WeightsError(f"{where}: compression method {info.compress_type} is not supported.")
    if info.file_size > ratio * min(info.compress_size, archive_bytes) + 1024:
        raise WeightsError(f"{where}: declares {info.file_size} bytes, more than its "
                           f"{info.compress_size} compressed bytes can hold; the file is corrupt.")
    with archive.open(info) as member:
        shape, dtype = _array_header(member, where)
        if dtype.hasobject or dtype.kind not in "biuf":
            raise WeightsError(f"{where}: must hold numbers; the header claims dtype {dtype}.")
        data_bytes = math.prod(shape) * dtype.itemsize
        if data_bytes != info.file_size - member.tell():
            raise WeightsError(f"{where}: the header claims shape {shape} ({dtype}, {data_bytes} "
                               f"bytes) but the member holds {info.file_size - member.tell()} "
                               f"bytes; the file is corrupt.")
    with archive.open(info) as member:
        array = np_format.read_array(member, allow_pickle=False)
        member.read()  # reach the end, where zipfile checks the CRC
    return array


def _decode(node, array, where: str, path: str = "optimizer"):
    """The optimizer state from its tree (see the module docstring)."""
    if not isinstance(node, dict) or len(node) != 1:
        raise WeightsError(f"{where}: {path} is stored as {node!r}; expected one of "
                           f"{{'dict'|'array'|'scalar'|'float'|'int'|'bool'|'none': ...}}.")
    (kind, value), = node.items()
    if kind == "dict" and isinstance(value, dict):
        return {k: _decode(v, array, where, f"{path}[{k!r}]") for k, v in value.items()}
    if kind == "array":
        return array(value)
    if kind == "scalar":
        return array(value)[()]
    if kind == "float":
        return float(array(value)[()])
    if (kind == "int" and isinstance(value, int) and not isinstance(value, bool)) or (
            kind == "bool" and isinstance(value, bool)) or (kind == "none" and value is None):
        return value
    raise WeightsError(f"{where}: {path} is stored as {node!r}, which this cnngen cannot read.")


def _encode(value, path: tuple[str, ...], arrays: dict) -> dict:
    """The tree node for ``value``; arrays and floats go into ``arrays`` under their path."""
    where = "optimizer" + "".join(f"[{k!r}]" for k in path)
    member = "/".join(("optimizer", *path))
    if isinstance(value, Mapping):
        for key in value:
            _check_name(key, f"checkpoint {where}: key")
        return {"dict": {k: _encode(v, (*path, k), arrays) for k, v in value.items()}}
    if value is None:
        return {"none": None}
    if isinstance(value, bool):
        return {"bool": value}
    if isinstance(value, int):
        return {"int": value}
    if isinstance(value, float):
        arrays[member] = np.array(value, np.float64)
        return {"float": member}
    if isinstance(value, np.generic):
        arrays[member] = _numeric(np.asarray(value), where)
        return {"scalar": member}
    if isinstance(value, np.ndarray):
        arrays[member] = _numeric(value, where)
        return {"array": member}
    raise WeightsError(f"checkpoint {where}: cannot store a {type(value).__name__}; expected an "
                       f"array, a number, a bool, None or a dict of those.")


def _numeric(array, where: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.hasobject or array.dtype.kind not in "biuf":
        raise WeightsError(f"checkpoint {where}: must be a numeric array; received dtype "
                           f"{array.dtype}.")
    return array


def _check_name(name, what: str) -> None:
    if not isinstance(name, str) or not name or "/" in name:
        raise WeightsError(f"{what} names must be non-empty strings without '/'; received "
                           f"{name!r}.")


def _plain(value, where: str):
    """``value`` as JSON data, or WeightsError naming where the first bad value is."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return value.tolist()
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise WeightsError(f"checkpoint {where}: keys must be strings (JSON); received "
                                   f"{key!r}.")
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise WeightsError(f"checkpoint {where}: cannot store a {type(value).__name__}; expected "
                       f"plain data (dict, list, str, int, float, bool, None).")
