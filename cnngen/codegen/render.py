"""Kernel source from a template: strict ``${hole}`` substitution, checked values only.

A template names its holes; ``render`` fills every one and refuses both a missing value and
an unused one, so a typo fails at generation time rather than as a broken kernel. Values
are ints, floats, identifiers or tuples of ints: nothing from a spec reaches the source
unless it passed through one of these checks.
"""
from __future__ import annotations

import functools
import re
import string
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def templates_dir() -> Path:
    """templates/ beside the package in a checkout, or cnngen/templates in an installed wheel."""
    for candidate in (PACKAGE / "templates", PACKAGE.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"cnngen templates not found beside {PACKAGE}")


@functools.cache
def template_text(target_kind: str, name: str) -> str:
    return (templates_dir() / target_kind / f"{name}.py.tmpl").read_text()


def literal(value) -> str:
    """Source text of a checked value: int, float, bool, identifier or tuple of ints."""
    if isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        text = repr(float(value))
        if text in ("inf", "-inf", "nan"):
            raise ValueError(f"non-finite constant {text} cannot be a kernel literal")
        return text
    if isinstance(value, str) and IDENTIFIER.match(value):
        return value
    if isinstance(value, tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return "(" + "".join(f"{int(v)}, " for v in value) + ")"
    raise ValueError(f"{value!r} is not a valid kernel literal")


@functools.cache
def holes(text: str) -> frozenset[str]:
    """The names of a template's ``${holes}`` (a template's text is read once, so cached)."""
    return frozenset(m.group("named") or m.group("braced")
            for m in string.Template.pattern.finditer(text)
            if m.group("named") or m.group("braced"))


def render(target_kind: str, name: str, values: dict, header: dict[str, str]) -> str:
    """The template ``templates/<target_kind>/<name>.py.tmpl`` with every hole filled.

    ``header`` holds free text for the comment header (kernel name, op chain, schedule,
    target); it is flattened to one line each and never reaches code.
    """
    text = template_text(target_kind, name)
    wanted = holes(text) - set(header)
    missing, unused = wanted - set(values), set(values) - wanted
    if missing or unused:
        raise KeyError(f"template {target_kind}/{name}: missing holes {sorted(missing)}, "
                       f"unused values {sorted(unused)}")
    filled = {key: literal(value) for key, value in values.items()}
    filled.update({key: " ".join(str(v).split()) for key, v in header.items()})
    return string.Template(text).substitute(filled)
