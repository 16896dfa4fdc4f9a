"""Read a spec document from a path, a YAML/JSON string or a dict.

Syntax errors carry the line and column; a missing file names the path.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..errors import SpecError


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
        return parse_text(source, "<string>", json_only=False)
    if not isinstance(source, (str, os.PathLike)):
        raise SpecError(f"load_spec expects a path, YAML/JSON text or a dict; received "
                        f"{type(source).__name__}.")
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"spec file '{path}' not found.") from None
    except IsADirectoryError:
        raise SpecError(f"spec path '{path}' is a directory; expected a .yaml or .json file.") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SpecError(f"cannot read spec file '{path}': {e}") from None
    return parse_text(text, str(path), json_only=path.suffix.lower() == ".json")


def parse_text(text: str, origin: str, json_only: bool) -> dict:
    if json_only:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"{origin}: JSON syntax error at line {e.lineno}, column {e.colno}: "
                            f"{e.msg}.") from None
        except ValueError as e:
            raise SpecError(f"{origin}: invalid JSON value: {e}") from None
        except RecursionError:
            raise SpecError(f"{origin}: the document is nested too deeply.") from None
    else:
        try:
            doc = yaml.safe_load(text)
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
