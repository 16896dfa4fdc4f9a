"""pytest-benchmark timings of the conv rows in ``shapes.json``: cnngen, and PyTorch in each layout.

Run them explicitly; the normal suite (``testpaths = ["tests"]``) never collects them:

    pytest benchmarks/                                  # every row
    pytest benchmarks/ -k resnet_l3_b1                  # one row, cnngen and torch
    pytest benchmarks/ --benchmark-json out.json

Each row is its own benchmark group, so pytest-benchmark prints cnngen and torch side by
side. Here cnngen and torch share one process and run one after the other (all cnngen rows,
then all torch rows), so their thread pools never run at the same time, but noise on a busy
machine hits whichever runs then. For the interleaved, separate-process comparison use
``python benchmarks/conv_table.py``.

cnngen times the conv as the network runs it (the non-edge steps, on the blocked layout),
after checking its output against the float64 reference executor.
"""
from __future__ import annotations

import importlib.util

import pytest

from conv_table import CnngenRunner, CnngenUnavailable, reference_output, rel_err
from peers import TorchPeer, load_rows

RTOL = 1e-3
ROWS = load_rows()
HAS_TORCH = importlib.util.find_spec("torch") is not None
LAYOUTS = {1: ("ncl",), 2: ("nchw", "channels_last")}
TORCH_CASES = [pytest.param(row, layout, id=f"{row.name}-{layout}")
               for row in ROWS for layout in LAYOUTS[row.nd]]


def _record(benchmark, row, **info) -> None:
    benchmark.group = row.name
    benchmark.extra_info.update(gflop=row.flops / 1e9, **info)


def _record_gflops(benchmark, row) -> None:
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    if stats is not None:
        benchmark.extra_info["gflops"] = row.flops / 1e9 / stats.stats.median


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_cnngen(benchmark, row):
    try:
        conv = CnngenRunner(row)
    except CnngenUnavailable as e:
        pytest.skip(f"cnngen side not benchmarked: {e}")
    err = rel_err(conv.output(), reference_output(row))
    assert err <= RTOL, (f"{row.name}: cnngen output differs from the float64 reference: max "
                         f"abs error {err:.3g} relative to max |ref| (tolerance {RTOL:g}); "
                         f"kernels {conv.kernel_names}")
    _record(benchmark, row, kernels=conv.kernel_names)
    benchmark(conv.calls["conv"])
    _record_gflops(benchmark, row)


@pytest.fixture(scope="module")
def torch_conv():
    if not HAS_TORCH:
        pytest.skip("torch not installed: PyTorch side of the conv benchmarks not run "
                    "(pip install torch)")
    return TorchPeer()


@pytest.mark.torch
@pytest.mark.parametrize("row,layout", TORCH_CASES)
def test_torch(benchmark, torch_conv, row, layout):
    torch_conv.prepare(row)
    _record(benchmark, row, layout=layout, threads=torch_conv.info()["threads"])
    benchmark(torch_conv.calls[layout])
    _record_gflops(benchmark, row)
