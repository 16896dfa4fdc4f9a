"""User descriptions of networks: YAML/JSON files, dicts and the Python builder, and
their validation into an ``ir.Graph``."""
from ..errors import SpecError
from .build import build_graph
from .builder import Builder
from .load import load_spec

__all__ = ["Builder", "SpecError", "build_graph", "load_spec"]
