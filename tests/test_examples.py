"""Examples are tests: every spec in examples/ checks, every program runs."""
import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

import cnngen

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SPECS = sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
PROGRAMS = sorted(EXAMPLES.glob("*.py"))


def test_examples_exist():
    assert SPECS and PROGRAMS


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_spec_checks(path):
    assert cnngen.check(path).params > 0


@functools.cache
def run(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                          timeout=600, cwd=EXAMPLES)


@pytest.mark.parametrize("path", PROGRAMS, ids=[p.name for p in PROGRAMS])
def test_program_runs(path):
    result = run(path)
    assert result.returncode == 0, result.stderr


def test_reference_training_learns_the_shapes():
    result = run(EXAMPLES / "train_reference.py")
    accuracy = float(re.search(r"test accuracy: ([\d.]+)", result.stdout).group(1))
    assert accuracy > 0.9, result.stdout


def test_compiled_kernels_serve_the_trained_network():
    result = run(EXAMPLES / "train_reference.py")
    found = re.search(r"compiled kernels .*test accuracy ([\d.]+), same class as the reference "
                      r"for ([\d.]+)% of images", result.stdout)
    assert found, result.stdout
    assert float(found.group(1)) > 0.9 and float(found.group(2)) >= 99.0
    timing = re.search(r"serving \d+ images: ([\d.]+) ms per call \(median of 20 warm calls, "
                       r"[\d.]+-[\d.]+\); the first, cold call took ([\d.]+) ms", result.stdout)
    assert timing, result.stdout


def test_training_on_generated_kernels_learns_the_digits():
    result = run(EXAMPLES / "train_digits.py")
    assert float(re.search(r"test accuracy: ([\d.]+)", result.stdout).group(1)) >= 0.97, result.stdout
    assert re.search(r"training step, batch 32: [\d.]+ ms \(median of 30, IQR [\d.]+-[\d.]+\)",
                     result.stdout), result.stdout
    served = float(re.search(r"served by the inference kernels: test accuracy ([\d.]+)",
                             result.stdout).group(1))
    assert served >= 0.97, result.stdout


def test_the_mnist1d_recipe_reaches_the_papers_accuracy_band():
    result = run(EXAMPLES / "train_mnist1d.py")
    assert float(re.search(r"test accuracy: ([\d.]+)", result.stdout).group(1)) >= 0.9, result.stdout


def test_the_regression_beats_predicting_the_mean_tenfold():
    result = run(EXAMPLES / "regression_1d.py")
    found = re.search(r"test MSE: ([\d.]+) \(predicting the mean: ([\d.]+)\)", result.stdout)
    assert found and float(found.group(1)) * 10 < float(found.group(2)), result.stdout


def test_fine_tuning_reuses_the_features():
    result = run(EXAMPLES / "finetune.py")
    assert "loaded 3 layers: c1, c2, f1" in result.stdout
    accuracy = re.search(r"digits 5-9 .*: test accuracy ([\d.]+)", result.stdout).group(1)
    assert float(accuracy) >= 0.9, result.stdout
