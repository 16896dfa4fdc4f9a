"""Training data: built-in and file data sets as float32 arrays (batches.py streams them
in mini-batches).

    ds = load_dataset("digits", seed=0, validation=0.1)     # or "mnist1d", "data.npz", a dict

Sources:
- ``"digits"``: scikit-learn's bundled 8x8 digits (1797 images, no download), scaled to
  [0, 1] as (N, 1, 8, 8), split 80/20 after a shuffle under ``seed``.
- ``"mnist1d"``: MNIST-1D built locally by the ``mnist1d`` package's generator with its
  default recipe (5000 signals of length 40, its own seed 42 and 4000/1000 split, so every run
  and the paper use the same data), as (N, 1, 40). Nothing is downloaded.
- a path to an ``.npz`` with ``x_train, y_train, x_test, y_test`` (the Keras convention;
  optional ``x_val, y_val``), read with ``allow_pickle=False``, or a dict with those keys.
  x must be float or uint8 (uint8 is scaled by 1/255). A channel axis is added when missing:
  (N, L) -> (N, 1, L), (N, H, W) -> (N, 1, H, W). With ``input_shape`` (the network's input,
  without the batch), the samples are fitted to it instead: kept when equal, given a channel
  axis, moved from channels-last (N, H, W, C) (the Keras image layout), or flattened when
  the input is flat (features,), as for a dense-only net.
Integer y are class labels (int64, ``n_classes = max + 1``); float y are regression targets
(float32, ``n_classes = None``). Every mistake raises InputError naming the file and key.
"""
from __future__ import annotations

import math
import os
import random
import threading
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CnngenError, InputError
from ..suggest import did_you_mean

KEYS = ("x_train", "y_train", "x_test", "y_test")
VAL_KEYS = ("x_val", "y_val")
EXTRA = 'pip install "cnngen[data]"'
# Tags keep the random streams (batch order, augmentation, validation and digits splits)
# apart for equal seeds.
ORDER_STREAM, AUGMENT_STREAM, VALIDATION_STREAM, DIGITS_STREAM = 0x0DE5, 0xA06, 0x7A1, 0xD161


@dataclass(frozen=True, eq=False)
class Dataset:
    """A data set split into train, test and (optionally) validation arrays.

    x: float32 (N, C, H, W) or (N, C, L), or (N, features) when fitted to a flat input.
    y: int64 labels (N,) when ``n_classes`` is set, else float32 regression targets.
    ``x_val``/``y_val`` are None without a validation split."""
    name: str
    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    x_val: np.ndarray | None = field(default=None, repr=False)
    y_val: np.ndarray | None = field(default=None, repr=False)
    n_classes: int | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one sample: (C, H, W) or (C, L)."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        val = f", val={len(self.x_val)}" if self.x_val is not None else ""
        task = f"{self.n_classes} classes" if self.n_classes else "regression"
        return (f"Dataset({self.name!r}: train={len(self.x_train)}, test={len(self.x_test)}"
                f"{val}, samples {self.input_shape}, {task})")


def load_dataset(source, *, seed: int = 0, validation: float = 0.0,
                 input_shape: tuple[int, ...] | None = None) -> Dataset:
    """The data set ``source`` names: ``"digits"``, ``"mnist1d"``, an .npz path or a dict of
    arrays (see the module docstring). ``validation`` is the fraction of the training set
    held out, shuffled under ``seed``; a source with ``x_val, y_val`` brings its own."""
    seed = check_seed(seed)
    if not isinstance(validation, (int, float)) or isinstance(validation, bool) or not (
            0 <= validation < 1):
        raise InputError(f"validation: expected a fraction of the training set in [0, 1); "
                         f"received {validation!r}.")
    if isinstance(source, Mapping):
        name, origin, arrays = "arrays", "data dict", _read_dict(source)
    elif isinstance(source, str) and source in BUILTIN:
        name, origin, arrays = source, f"data set {source!r}", BUILTIN[source](seed)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists() and isinstance(source, str) and not path.suffix and \
                os.sep not in source and "/" not in source:
            raise InputError(f"unknown data set {source!r}.{did_you_mean(source, BUILTIN)} "
                             f"Expected one of {', '.join(map(repr, BUILTIN))}, a path to an "
                             f".npz file with {', '.join(KEYS)}, or a dict of arrays.")
        name, origin, arrays = path.stem, f"data file '{path}'", _read_npz(path)
    else:
        raise InputError(f"data: expected 'digits', 'mnist1d', a path to an .npz file or a dict "
                         f"of arrays; received {type(source).__name__}.")
    return _build(name, origin, arrays, seed, validation, input_shape)


def _build(name, origin, arrays, seed, validation, input_shape) -> Dataset:
    """Checked, converted arrays with the validation split made."""
    has_val = all(k in arrays for k in VAL_KEYS)
    if any(k in arrays for k in VAL_KEYS) and not has_val:
        missing = next(k for k in VAL_KEYS if k not in arrays)
        raise InputError(f"{origin}: has {VAL_KEYS[VAL_KEYS.index(missing) - 1]!r} but no "
                         f"{missing!r}; give both or neither.")
    if has_val and validation:
        raise InputError(f"{origin}: already has x_val and y_val; received validation="
                         f"{validation} as well. Use one or the other.")
    splits = ("train", "test", "val") if has_val else ("train", "test")
    xs = {s: _x(arrays[f"x_{s}"], f"{origin}, key 'x_{s}'", input_shape) for s in splits}
    ys = {s: _y(arrays[f"y_{s}"], f"{origin}, key 'y_{s}'") for s in splits}
    for s in splits:
        if len(xs[s]) != len(ys[s]):
            raise InputError(f"{origin}: 'x_{s}' and 'y_{s}' must have the same length; "
                             f"received {len(xs[s])} samples and {len(ys[s])} targets.")
        if xs[s].shape[1:] != xs["train"].shape[1:]:
            raise InputError(f"{origin}: samples of 'x_{s}' have shape {xs[s].shape[1:]}, those "
                             f"of 'x_train' {xs['train'].shape[1:]}; they must be equal.")
        if ys[s].dtype != ys["train"].dtype or ys[s].shape[1:] != ys["train"].shape[1:]:
            raise InputError(f"{origin}: 'y_{s}' must be the same kind as 'y_train' (class labels "
                             f"or regression targets of one shape); received {_kind(ys[s])}, "
                             f"and {_kind(ys['train'])} in 'y_train'.")
    if validation:
        n = len(xs["train"])
        n_val = max(1, round(validation * n))
        if n_val >= n:
            raise InputError(f"validation={validation} of {n} training samples leaves none to "
                             f"train on; use a smaller fraction.")
        order = np.random.default_rng([VALIDATION_STREAM, seed]).permutation(n)
        val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
        xs["val"], ys["val"] = xs["train"][val], ys["train"][val]
        xs["train"], ys["train"] = xs["train"][train], ys["train"][train]
    n_classes = None
    if ys["train"].dtype == np.int64:
        n_classes = int(max(y.max() for y in ys.values())) + 1
    return Dataset(name, xs["train"], ys["train"], xs["test"], ys["test"], xs.get("val"),
                   ys.get("val"), n_classes)


def _x(x, where: str, input_shape) -> np.ndarray:
    """Inputs as float32 (N, C, ...) fitted to ``input_shape``, or InputError."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / np.float32(255)
    elif x.dtype.kind == "f":
        with np.errstate(over="ignore"):  # a value beyond float32 becomes Inf, reported below
            x = np.ascontiguousarray(x, dtype=np.float32)
    else:
        raise InputError(f"{where}: expected float or uint8 inputs; received dtype {x.dtype}. "
                         f"Convert it, e.g. x.astype(np.float32) scaled as you want.")
    if x.ndim < 2 or len(x) == 0:
        raise InputError(f"{where}: expected a non-empty batch of samples (N, L), (N, H, W), "
                         f"(N, C, L) or (N, C, H, W); received shape {x.shape}.")
    x = _fit(x, where, input_shape)
    bad = ~np.isfinite(x)
    if bad.any():
        first = np.unravel_index(np.argmax(bad), x.shape)
        raise InputError(f"{where}: holds {int(bad.sum())} NaN or Inf value(s) (as float32), "
                         f"the first at index {tuple(int(i) for i in first)}; expected finite "
                         f"numbers.")
    return x


def _fit(x: np.ndarray, where: str, input_shape) -> np.ndarray:
    """``x`` arranged as (N, C, H, W) or (N, C, L): see the module docstring."""
    sample = x.shape[1:]
    if input_shape is None:
        if x.ndim in (2, 3):
            return x[:, None]
        if x.ndim == 4:
            return x
        raise InputError(f"{where}: expected samples of 1 to 3 dimensions ((L), (H, W), (C, L) "
                         f"or (C, H, W)); received shape {x.shape}.")
    try:
        want = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        want = ()
    if not want or any(d < 1 for d in want):
        raise InputError(f"input_shape: expected the network's input shape without the batch, "
                         f"such as (1, 28, 28); received {input_shape!r}.")
    if sample == want:
        return x
    if (1, *sample) == want:
        return x[:, None]
    if x.ndim == 4 and (sample[2], *sample[:2]) == want:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if len(want) == 1 and math.prod(sample) == want[0]:
        return x.reshape(len(x), -1)
    raise InputError(f"{where}: samples of shape {sample} do not fit the network's input shape "
                     f"{want} (as they are, with a channel axis added, from channels-last, or "
                     f"flattened for a flat input).")


def _y(y, where: str) -> np.ndarray:
    """Labels as int64 (N,) or regression targets as float32, or InputError."""
    y = np.asarray(y)
    if y.ndim == 0 or len(y) == 0:
        raise InputError(f"{where}: expected one target per sample; received shape {y.shape}.")
    if y.dtype.kind in "iu":
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise InputError(f"{where}: integer targets are class labels and must have shape "
                             f"(N,) or (N, 1); received {y.shape}. For regression use float "
                             f"targets; for one-hot labels pass y.argmax(1).")
        if y.min() < 0:
            raise InputError(f"{where}: class labels must be >= 0; received {y.min()} (at index "
                             f"{int(np.argmin(y))}).")
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        with np.errstate(over="ignore"):
            y = np.ascontiguousarray(y, dtype=np.float32)
        bad = ~np.isfinite(y)
        if bad.any():
            raise InputError(f"{where}: holds {int(bad.sum())} NaN or Inf regression target(s), "
                             f"the first at index {int(np.argmax(bad.reshape(len(y), -1).any(1)))}"
                             f"; expected finite numbers.")
        return y
    raise InputError(f"{where}: expected integer class labels or float regression targets; "
                     f"received dtype {y.dtype}.")


def _kind(y: np.ndarray) -> str:
    what = "class labels" if y.dtype == np.int64 else "regression targets"
    return f"{what} of shape {y.shape[1:] or '()'} per sample"


def _read_dict(source: Mapping) -> dict[str, np.ndarray]:
    _require_keys(source.keys(), "data dict")
    arrays = {}
    for key in (*KEYS, *VAL_KEYS):
        if key in source:
            try:
                arrays[key] = np.asarray(source[key])
            except (ValueError, TypeError) as e:
                raise InputError(f"data dict, key {key!r}: not an array: {e}") from None
            if arrays[key].dtype.hasobject:
                raise InputError(f"data dict, key {key!r}: expected a numeric array; received "
                                 f"Python objects (ragged lists?).")
    return arrays


def _require_keys(present, origin: str) -> None:
    present = list(present)
    others = [k for k in present if k not in (*KEYS, *VAL_KEYS)]  # typos of the missing key
    for key in KEYS:
        if key not in present:
            raise InputError(f"{origin}: missing key {key!r}.{did_you_mean(key, others)} "
                             f"Expected the keys {', '.join(KEYS)} (the Keras convention); "
                             f"found {', '.join(map(repr, present)) or 'none'}.")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file, read without pickle, or InputError naming the file."""
    origin = f"data file '{path}'"
    if path.is_dir():
        raise InputError(f"{origin} is a directory; expected an .npz file with "
                         f"{', '.join(KEYS)}.")
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{origin} not found.") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"{origin} is not a readable .npz archive ({e}); expected an .npz "
                         f"file (numpy.savez) with {', '.join(KEYS)}.") from None
    if isinstance(archive, np.ndarray):
        raise InputError(f"{origin} holds a single array of shape {archive.shape} (an .npy "
                         f"file); expected an .npz archive (numpy.savez) with "
                         f"{', '.join(KEYS)}.")
    with archive:
        _require_keys(archive.files, origin)
        arrays = {}
        for key in (*KEYS, *VAL_KEYS):
            if key not in archive.files:
                continue
            try:
                arrays[key] = archive[key]
            except ValueError as e:
                raise InputError(f"{origin}, key {key!r}: cannot be read without pickle ({e}); "
                                 f"expected a numeric array.") from None
            except (OSError, EOFError, zipfile.BadZipFile) as e:
                raise InputError(f"{origin}, key {key!r}: truncated or corrupt ({e}).") from None
    return arrays


def _digits(seed: int) -> dict[str, np.ndarray]:
    """scikit-learn's bundled digits, scaled to [0, 1] and split 80/20 under ``seed``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise CnngenError(f"data set 'digits' needs scikit-learn, which is not installed: "
                          f"{EXTRA}") from None
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng([DIGITS_STREAM, seed]).permutation(len(y))
    n_test = round(0.2 * len(y))
    test, train = order[:n_test], order[n_test:]
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}


_MNIST1D_LOCK = threading.Lock()
_MNIST1D_CACHE: dict[str, np.ndarray] = {}


def _mnist1d(seed: int) -> dict[str, np.ndarray]:
    """MNIST-1D from the ``mnist1d`` package's own generator and default recipe.

    ``mnist1d.get_dataset`` would download a pickle; ``make_dataset`` builds the same kind of
    data locally (about 1 s, cached for the process). It seeds the global ``random`` and
    ``np.random`` states, which are restored afterwards. ``seed`` is not used: the recipe's
    own seed keeps the data equal across runs, as in the paper."""
    with _MNIST1D_LOCK:
        if not _MNIST1D_CACHE:
            try:
                from mnist1d.data import get_dataset_args, make_dataset
            except ImportError as e:
                raise CnngenError(f"data set 'mnist1d' needs the mnist1d package, which is not "
                                  f"installed or too old ({e}): {EXTRA}") from None
            py_state, np_state = random.getstate(), np.random.get_state()
            try:
                data = make_dataset(get_dataset_args())
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
            _MNIST1D_CACHE.update(
                x_train=np.asarray(data["x"], np.float32), y_train=np.asarray(data["y"], np.int64),
                x_test=np.asarray(data["x_test"], np.float32),
                y_test=np.asarray(data["y_test"], np.int64))
        return {k: v.copy() for k, v in _MNIST1D_CACHE.items()}


BUILTIN = {"digits": _digits, "mnist1d": _mnist1d}


def check_seed(seed) -> int:
    """``seed`` as an int, or InputError unless it is an integer >= 0."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0:
        return int(seed)
    raise InputError(f"seed: expected an integer >= 0; received {seed!r}.")
