"""The YAML dialect specs are read in: YAML 1.2's core schema, duplicate keys refused.

PyYAML implements YAML 1.1, whose implicit types surprise in a spec: ``filters: 010`` is
8 (octal), ``bias: no`` is False, ``1:30`` is 90 (base 60), ``2001-02-03`` is a date and
``l2: 5e-4`` is text. ``SpecLoader`` resolves plain (unquoted) scalars as YAML 1.2's core
schema does, which is also what JSON means:

- booleans: only ``true`` and ``false`` (also ``True``/``TRUE``/``False``/``FALSE``);
  ``yes``, ``no``, ``on`` and ``off`` are text (a boolean attribute given one says so);
- null: ``null``, ``Null``, ``NULL``, ``~`` and the empty value;
- integers: plain decimal only, ``[-+]?(0|[1-9][0-9]*)``;
- floats: decimal with a point or an exponent (``0.5``, ``.5``, ``5e-4``, ``1.5E+3``),
  and ``.inf``, ``-.inf``, ``.nan``;
- everything else is text: no timestamps, no ``=`` value key. ``<<`` merge keys still work.

Numbers in any other notation are refused with a ``SpecError`` instead of being guessed,
because YAML 1.1, YAML 1.2 and JSON disagree on them: a leading zero on an integer
(``010``: 8 in 1.1, 10 in 1.2), a base prefix (``0x10``, ``0o10``, ``0b10``), digit
separators (``1_000``, ``1_000.5``) and base 60 (``1:30``). The message gives the line
and the decimal to write. Quoting (``"010"``) makes any of them text.

A key that appears twice in one mapping is refused too (YAML and PyYAML let the last one
win silently), with the lines of both.
"""
from __future__ import annotations

import re

import yaml
from yaml.constructor import SafeConstructor

NUMBER_CHARS = list("-+.0123456789")
MERGE_TAG = "tag:yaml.org,2002:merge"
REFUSED_TAG = "tag:cnngen,2024:refused-number"

BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
INT = re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$")
FLOAT = re.compile(r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?
                       |[-+]?[0-9]+[eE][-+]?[0-9]+
                       |[-+]?\.(?:inf|Inf|INF)
                       |\.(?:nan|NaN|NAN))$""", re.X)
# What YAML 1.1 (or 1.2's 0o) reads as a number and the two rules above do not: refused.
OTHER_NUMBER = re.compile(r"""^(?:[-+]?0[0-9_]+
                              |[-+]?0x[0-9a-fA-F_]+|[-+]?0o[0-7_]+|[-+]?0b[01_]+
                              |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?
                              |[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][-+][0-9]+)?
                              |[-+]?\.[0-9_]+(?:[eE][-+][0-9]+)?)$""", re.X)


class Refused(yaml.MarkedYAMLError):
    """A value or key the spec dialect refuses; ``problem`` says why and what to write."""

    def __init__(self, problem: str, mark):
        super().__init__(problem=problem, problem_mark=mark)


def yaml11_value(text: str):
    """What YAML 1.1 reads ``text`` as (an int, a float, or the text itself)."""
    loader = yaml.SafeLoader("")
    try:
        tag = loader.resolve(yaml.ScalarNode, text, (True, False))
        node = yaml.ScalarNode(tag, text)
        if tag.endswith(":int"):
            return SafeConstructor.construct_yaml_int(loader, node)
        if tag.endswith(":float"):
            return SafeConstructor.construct_yaml_float(loader, node)
        return text
    except (ValueError, OverflowError):
        return text
    finally:
        loader.dispose()


def refusal(text: str) -> str:
    """Why a number in ``text``'s notation is refused, and the decimal to write instead."""
    old = yaml11_value(text)
    if re.fullmatch(r"[-+]?0[0-9]+", text):
        new = int(text, 10)
        if isinstance(old, int) and old != new:
            return (f"{text} has a leading zero, which is ambiguous: YAML 1.1 reads it as "
                    f"octal {old}, YAML 1.2 as {new}. Write {new} (or {old}) without the "
                    f"leading zero.")
        read = "octal" if isinstance(old, int) else "text"
        return (f"{text} has a leading zero, which is ambiguous: YAML 1.1 reads such numbers "
                f"as {read}, YAML 1.2 as decimal. Write {new} without the leading zero.")
    if re.fullmatch(r"[-+]?0o[0-7_]+", text):
        old = int(text.replace("0o", "", 1).replace("_", ""), 8)
    fix = "Write it in decimal" if isinstance(old, str) else f"Write {old}"
    return (f"{text} is not a plain decimal number: YAML 1.1, YAML 1.2 and JSON read base "
            f"prefixes, '_' separators and base-60 ':' differently. {fix}, or quote it if "
            f"you meant text.")


class SpecLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with the implicit types above and duplicate keys refused."""

    yaml_implicit_resolvers: dict = {}

    def construct_refused(self, node):
        raise Refused(refusal(node.value), node.start_mark)

    def construct_mapping(self, node, deep=False):
        """The mapping, or ``Refused`` naming a key that appears twice (merge keys aside:
        the mapping's own keys override merged ones, as YAML intends)."""
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # unhashable: SafeConstructor says so below
                    continue
                if first is not key_node:
                    raise Refused(
                        f"duplicate key {key!r} (first at line {first.start_mark.line + 1}): "
                        f"the last one would silently replace the first. Keep one of them.",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


SpecLoader.add_implicit_resolver("tag:yaml.org,2002:bool", BOOL, list("tTfF"))
SpecLoader.add_implicit_resolver("tag:yaml.org,2002:null", NULL, ["~", "n", "N", ""])
SpecLoader.add_implicit_resolver("tag:yaml.org,2002:int", INT, NUMBER_CHARS)
SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", FLOAT, NUMBER_CHARS)
SpecLoader.add_implicit_resolver(REFUSED_TAG, OTHER_NUMBER, NUMBER_CHARS)
SpecLoader.add_implicit_resolver(MERGE_TAG, re.compile(r"^(?:<<)$"), ["<"])
SpecLoader.add_constructor(REFUSED_TAG, SpecLoader.construct_refused)


def load_yaml(text: str):
    """The document in ``text`` read with ``SpecLoader``; YAML errors propagate."""
    loader = SpecLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
