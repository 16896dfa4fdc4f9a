"""cnngen: a hardware-aware code generator for convolutional networks."""
from . import zoo
from .errors import CnngenError, InputError, SpecError, TrainingError, WeightsError
from .reference import ReferenceExecutor
from .runtime.compiled import CompiledNet, compile
from .runtime.data import load_dataset
from .runtime.trainer import Trainer
from .spec import Builder, build_graph, load_spec
from .summary import Summary, check
from .tuning.tuner import tune, tune_training
from .weights import init_weights, load_npz, save_npz

__version__ = "0.1.0"

__all__ = [
    "Builder", "CnngenError", "CompiledNet", "InputError", "ReferenceExecutor", "SpecError", "Summary",
    "Trainer", "TrainingError", "WeightsError", "build_graph", "check", "compile", "init_weights",
    "load_dataset", "load_npz", "load_spec", "save_npz", "tune", "tune_training", "zoo",
]
