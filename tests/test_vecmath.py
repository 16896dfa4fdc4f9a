"""vecmath against the float64 references in ops/activation.py, at SIMD widths 16, 8 and 4.

Each function runs inside a small @njit kernel (fastmath, numpy error model, as generated
kernels are compiled) that loads V floats, applies it and stores V floats.

Tolerance: |y - ref| <= ATOL + RTOL*|ref|, with ref computed in float64 from the float32 input.
RTOL = 1e-6 is about 8 float32 epsilons. ATOL = 64 * 2^-149 only matters for results in the
denormal range (|y| < 1.2e-38), whose spacing is 2^-149 = 1.4e-45: swish(-100) = -100*sigmoid(-100)
scales that quantisation by 100.

The reference sigmoid is 0.5*(1 + tanh(x/2)) in float64. Its absolute error is up to 2^-54, so
its relative error grows for x < -10, and it is exactly 0 for x < -37.4 where float32 still has
sigmoid(-88) = 6e-39. For sigmoid, swish and silu the comparison with it adds REF_ATOL*max(1, |x|),
and test_sigmoid_tail checks the tail against exp(x)/(1 + exp(x)) with the plain tolerance.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from numba import njit

from cnngen.codegen import simd, vecmath
from cnngen.ops import activation

WIDTHS = (16, 8, 4)
RTOL = 1e-6
ATOL = 64 * 2.0 ** -149
EXP_RTOL = 5e-7
REF_ATOL = 2.0 ** -52
SIGMOID_BASED = ("sigmoid", "swish", "silu")

EDGES = [0.0, -0.0, 2.0 ** -149, 1e-40, 1.1754944e-38, 1e-30, 1e-20, 1e-7, 1e-4, 0.1, 0.5,
         0.62, 0.625, 0.63, 1.0, 2.0, 2.9999, 3.0, 3.0001, np.nextafter(np.float32(3), 0),
         np.nextafter(np.float32(3), 9), 5.0, 9.0, 15.0, 20.0, 40.0, 87.3, 88.0, 88.7, 100.0,
         1e30, 3e38]


def _inputs() -> np.ndarray:
    """±EDGES, then normal*10 samples: a float32 array whose length is a multiple of 16."""
    edges = np.array(EDGES, dtype=np.float32)
    rng = np.random.default_rng(0)
    x = np.concatenate([edges, -edges, (rng.standard_normal(4096) * 10).astype(np.float32)])
    pad = -len(x) % 16
    return np.concatenate([x, rng.uniform(-6, 6, pad).astype(np.float32)])


INPUTS = _inputs()


def _kernel(fn, width: int):
    """An @njit ``apply(x, out)`` that writes ``fn`` of each width-float vector of x to out."""
    @njit(fastmath=True, error_model="numpy")
    def apply(x, out):
        for i in range(0, x.size, width):
            simd.store(out, i, fn(simd.load(x, i, width)))
    return apply


def _leaky(alpha: float):
    """``v -> leaky_relu(v, alpha)`` with alpha a constant, as a rendered template has it."""
    @njit(inline="always")
    def leaky(v):
        return vecmath.leaky_relu(v, alpha)
    return leaky


def _run(fn, width: int, x: np.ndarray) -> np.ndarray:
    """``fn`` applied to x by the kernel; x holds whole vectors (the kernel has no tail)."""
    assert len(x) % width == 0, f"test input of {len(x)} floats is not whole width-{width} vectors"
    out = np.full_like(x, np.nan)
    _kernel(fn, width)(x, out)
    return out


def _assert_close(name: str, x, y, ref, rtol=RTOL, atol=ATOL):
    err = np.abs(y.astype(np.float64) - ref)
    bad = ~(err <= atol + rtol * np.abs(ref))          # NaN counts as bad
    if bad.any():
        i = np.flatnonzero(bad)[np.argmax(np.nan_to_num(err[bad], nan=np.inf))]
        raise AssertionError(f"{name}: {bad.sum()} of {len(x)} lanes out of tolerance; worst "
                             f"x={x[i]!r}: got {y[i]!r}, reference {ref[i]!r}")


def test_table_covers_every_activation():
    assert set(vecmath.ACTIVATIONS) == set(activation.NAMES)
    for fn_name in vecmath.ACTIVATIONS.values():
        assert callable(getattr(vecmath, fn_name))


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", activation.NAMES)
def test_activation_matches_reference(name, width):
    fn_name = vecmath.ACTIVATIONS[name]
    fn = _leaky(activation.LEAKY_ALPHA) if name == "leaky_relu" else getattr(vecmath, fn_name)
    y = _run(fn, width, INPUTS)
    atol = ATOL + (REF_ATOL * np.maximum(1.0, np.abs(INPUTS)) if name in SIGMOID_BASED else 0.0)
    _assert_close(f"{name} (width {width})", INPUTS, y,
                  activation.forward(name, INPUTS.astype(np.float64)), atol=atol)


@pytest.mark.parametrize("width", WIDTHS)
def test_sigmoid_tail(width):
    x = np.concatenate([np.linspace(-103, -5, 4092), [-1e30, -200, -104, -0.0]]).astype(np.float32)
    e = np.exp(x.astype(np.float64))
    _assert_close(f"sigmoid tail (width {width})", x, _run(vecmath.sigmoid, width, x), e / (1 + e))
    _assert_close(f"swish tail (width {width})", x, _run(vecmath.swish, width, x),
                  x * e / (1 + e))


@pytest.mark.parametrize("alpha", [0.0, 0.2, 1.0])
def test_leaky_relu_alpha(alpha):
    y = _run(_leaky(alpha), 8, INPUTS)
    _assert_close(f"leaky_relu alpha={alpha}", INPUTS, y,
                  activation.forward("leaky_relu", INPUTS.astype(np.float64), alpha))


def test_tanh_near_zero_and_saturation():
    x = np.concatenate([np.linspace(-1, 1, 4092), [-1e30, -20, 20, 1e30]]).astype(np.float32)
    y = _run(vecmath.tanh, 16, x)
    assert np.abs(y - np.tanh(x.astype(np.float64))).max() <= 1e-6
    assert list(y[-4:]) == [-1.0, -1.0, 1.0, 1.0]


@pytest.mark.parametrize("width", WIDTHS)
def test_vexp_accuracy(width):
    x = np.linspace(-87.3, 88.7, 1 << 16, dtype=np.float32)
    y = _run(vecmath.vexp, width, x)
    _assert_close(f"vexp (width {width})", x, y, np.exp(x.astype(np.float64)), EXP_RTOL, 0.0)


def test_vexp_extremes():
    x = np.array([-1e30, -200, -104, -100, -88, 0, 88.72, 89, 100, 1e30] + [0] * 6, np.float32)
    y = _run(vecmath.vexp, 16, x)
    assert np.isfinite(y).all()                # clamped: at most 3.39e38, never inf or NaN
    assert (y >= 0).all()
    assert y[0] == y[1] == 0.0
    assert y[3] <= 1e-43                       # exp(-100) = 3.7e-44, a denormal
    assert np.isclose(y[4], np.exp(-88.0), rtol=1e-4)
    assert (y[6:10] > 3e38).all()
    assert y[5] == 1.0


def test_vexp_stays_vectorised():
    kernel = _kernel(vecmath.vexp, 16)
    x = np.zeros(16, np.float32)
    kernel(x, np.empty_like(x))
    sig = kernel.signatures[0]
    llvm, asm = kernel.inspect_llvm(sig), kernel.inspect_asm(sig)
    assert "llvm.exp." not in llvm
    assert not re.search(r"call[^\n]*@(exp|expf|__expf\w*)\b", llvm)
    assert not re.search(r"\bcall\w*\s+[^\n]*\bexpf?\b", asm)
    assert "llvm.fma.v16f32" in llvm
