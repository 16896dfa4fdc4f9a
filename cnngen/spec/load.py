"""Read a spec document from a path, a YAML/JSON string or a dict.

Syntax errors carry the line and column; a missing file names the path. YAML is read in
the dialect of ``spec.schema`` (YAML 1.2's core types; ambiguous numbers and duplicate
keys refused); JSON objects must not repeat a key either. A spec file must be a regular
file of at most ``MAX_SPEC_BYTES``: a FIFO, a device such as ``/dev/zero`` or a directory
is refused before anything is read, so nothing reads without limit.
"""
from __future__ import annotations

import copy
import json
import os
import stat
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..errors import SpecError
from .schema import Refused, load_yaml

# A spec is a few KiB (ResNet-50 in YAML: about 20 KiB); 16 MiB holds some 10**5 layers.
MAX_SPEC_BYTES = 16 * 2**20
FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
              (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
              (stat.S_ISSOCK, "a socket"))


class DuplicateKey(Exception):
    """A JSON object repeats a key."""


def load_spec(source: str | os.PathLike | Mapping[str, Any]) -> dict:
    """The spec document as a plain dict. ``source`` is a path to a ``.yaml``, ``.yml`` or
    ``.json`` file, YAML/JSON text (anything with a newline or starting with ``{``), or a
    dict, which is deep-copied. Validation happens in ``build_graph``/``check``."""
    if isinstance(source, Mapping):
        try:
            return copy.deepcopy(dict(source))
        except RecursionError:
            raise SpecError("spec: the document is nested too deeply.") from None
        except (TypeError, copy.Error) as e:
            raise SpecError(f"spec: expected plain data (dicts, lists, numbers, strings); "
                            f"{e}.") from None
    if isinstance(source, str) and ("\n" in source or source.lstrip().startswith("{")):
        if len(source) > MAX_SPEC_BYTES:
            raise SpecError(f"spec text: {len(source):,} characters is more than the limit of "
                            f"{MAX_SPEC_BYTES:,} (MAX_SPEC_BYTES, 16 MiB).")
        return parse_text(source, "<string>", json_only=False)
    if not isinstance(source, (str, os.PathLike)):
        raise SpecError(f"load_spec expects a path, YAML/JSON text or a dict; received "
                        f"{type(source).__name__}.")
    path = Path(source)
    try:
        text = read_spec_file(path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"cannot read spec file '{path}': {e}") from None
    return parse_text(text, str(path), json_only=path.suffix.lower() == ".json")


def read_spec_file(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_SPEC_BYTES, or SpecError naming the path.

    The file is opened without blocking (a FIFO with no writer would wait forever) and
    checked on the open descriptor, so it cannot be swapped between check and read."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise SpecError(f"spec file '{path}' not found.") from None
    except IsADirectoryError:
        raise SpecError(f"spec path '{path}' is a directory; expected a .yaml or .json file.") from None
    except (OSError, ValueError) as e:
        raise SpecError(f"cannot read spec file '{path}': {e}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = next((kind for is_kind, kind in FILE_KINDS if is_kind(mode)), "special")
        raise SpecError(f"spec path '{path}' is {kind}, not a regular file; expected a "
                        f".yaml or .json file.")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(MAX_SPEC_BYTES + 1)
        except OSError as e:
            raise SpecError(f"cannot read spec file '{path}': {e}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"spec file '{path}' is larger than the limit of {MAX_SPEC_BYTES:,} "
                        f"bytes (MAX_SPEC_BYTES, 16 MiB); a spec is a few KiB.")
    return data


def unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object as a dict, or DuplicateKey when a key repeats."""
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise DuplicateKey(key)
        obj[key] = value
    return obj


def parse_text(text: str, origin: str, json_only: bool) -> dict:
    if json_only:
        try:
            doc = json.loads(text, object_pairs_hook=unique_keys)
        except DuplicateKey as e:
            raise SpecError(f"{origin}: duplicate key {e.args[0]!r} in a JSON object: the last "
                            f"one would silently replace the first. Keep one of them.") from None
        except json.JSONDecodeError as e:
            raise SpecError(f"{origin}: JSON syntax error at line {e.lineno}, column {e.colno}: "
                            f"{e.msg}.") from None
        except ValueError as e:
            raise SpecError(f"{origin}: invalid JSON value: {e}") from None
        except RecursionError:
            raise SpecError(f"{origin}: the document is nested too deeply.") from None
    else:
        try:
            doc = load_yaml(text)
        except Refused as e:
            mark = e.problem_mark
            raise SpecError(f"{origin}: line {mark.line + 1}, column {mark.column + 1}: "
                            f"{e.problem}") from None
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = e.problem or e.context or "invalid syntax"
            raise SpecError(f"{origin}: YAML syntax error{where}: {problem}.") from None
        except yaml.YAMLError as e:
            raise SpecError(f"{origin}: YAML error: {e}") from None
        except RecursionError:
            raise SpecError(f"{origin}: the document is nested too deeply.") from None
        except (ValueError, TypeError, KeyError, IndexError, AttributeError,
                OverflowError) as e:  # PyYAML raises these for bad tagged values
            raise SpecError(f"{origin}: invalid YAML value: {e!r}") from None
    if not isinstance(doc, dict):
        raise SpecError(f"{origin}: expected a mapping with the keys cnngen, input and layers; "
                        f"received {type(doc).__name__}.")
    return doc
