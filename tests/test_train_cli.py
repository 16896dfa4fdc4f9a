"""``cnngen train`` run as a user would: a subprocess per call, killed and resumed."""
import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SPEC = str(EXAMPLES / "digits_cnn.yaml")


def train(*args, cache, timeout=300):
    return subprocess.run([sys.executable, "-m", "cnngen", "train", *args, "--cache-dir", str(cache)],
                          capture_output=True, text=True, timeout=timeout)


def test_train_writes_checkpoint_metrics_plot_and_weights(kernel_cache, tmp_path):
    result = train(SPEC, "--data", "digits", "--epochs", "2", "--batch-size", "32",
                   "--lr", "2e-3", "--checkpoint", str(tmp_path / "run"),
                   "--metrics", str(tmp_path / "m.csv"), "--plot", str(tmp_path / "curves.png"),
                   "--save", str(tmp_path / "w.npz"), "--quiet", cache=kernel_cache)
    assert result.returncode == 0, result.stderr
    assert "epoch 2  loss" in result.stdout and "val_accuracy" in result.stdout
    rows = list(csv.DictReader(open(tmp_path / "m.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[-1]["val_accuracy"]) > 0.8
    assert (tmp_path / "run" / "last.ckpt").stat().st_size > 0
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(np.load(tmp_path / "w.npz")) >= {"c1/w", "c2/b", "out/w"}


def test_a_run_killed_at_a_random_moment_resumes_to_the_same_weights(kernel_cache, tmp_path):
    common = ("--data", "digits", "--epochs", "20", "--batch-size", "16", "--seed", "5",
              "--augment", "translate=0.1", "--quiet")
    straight = train(SPEC, *common, "--checkpoint", str(tmp_path / "a"),
                     "--save", str(tmp_path / "a.npz"), cache=kernel_cache)
    assert straight.returncode == 0, straight.stderr
    checkpoint = tmp_path / "b" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "cnngen", "train", SPEC, *common,
                             "--checkpoint", str(tmp_path / "b"), "--cache-dir", str(kernel_cache)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(np.random.default_rng().uniform(0, 0.3))     # anywhere in the next epochs
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it was killed"
    resumed = train("--resume", *common, "--checkpoint", str(tmp_path / "b"),
                    "--save", str(tmp_path / "b.npz"), cache=kernel_cache)
    assert resumed.returncode == 0, resumed.stderr
    resumed_at = int(resumed.stdout.split(" at epoch ")[1].split(",")[0])
    assert resumed.stdout.startswith(f"resumed {checkpoint} at epoch ") and 1 <= resumed_at < 20
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert set(a) == set(b)
    for key in a:
        assert np.array_equal(a[key], b[key]), key


@pytest.mark.parametrize("args, message", [
    (("--resume", "--data", "digits", "--checkpoint", "nowhere"),
     "cnngen train --resume: no checkpoint at nowhere/last.ckpt"),
    ((SPEC, "--data", "missing.npz", "--epochs", "1"), "missing.npz"),
    ((SPEC, "--data", "digits", "--epochs", "1", "--optimizer", "adamm"), "adamm"),
    ((SPEC, "--data", "mnist1d", "--epochs", "1"), "samples of shape (40,) do not fit the network's input shape (1, 8, 8)"),
])
def test_train_mistakes_exit_1_with_one_line(args, message, kernel_cache):
    result = train(*args, cache=kernel_cache)
    assert result.returncode == 1, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
