"""Every op, as generated CPU kernels, against the float64 reference executor.

Each workload runs at the host's SIMD width and at the AVX2 width (8 lanes), so both code
paths are generated and checked on an AVX-512 machine. Kernels compile once per session
into a shared temporary cache.
"""
import numpy as np
import pytest

import cnngen
from cnngen.target import ISA_WIDTH, host
from .workloads import CONV_LAYERS, OP_CASES

TARGETS = [f"cpu-{isa}" for isa in ("avx512", "avx2") if ISA_WIDTH[isa] <= host().vector]


def check_against_reference(spec, batch, target, cache_dir, seed=0):
    net = cnngen.compile(spec, target=target, cache_dir=cache_dir, seed=seed)
    x = np.random.default_rng(seed).standard_normal((batch, *net.graph.input.shape)).astype(np.float32)
    ref = cnngen.ReferenceExecutor(spec, net.weights).forward(x.astype(np.float64)).out
    got = net(x)
    assert got.shape == ref.shape and got.dtype == np.float32
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-5 * scale)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", [c for c in OP_CASES if not c[3]], ids=lambda c: c[0])
def test_op_matches_reference(case, target, kernel_cache):
    _, spec, batch, _ = case
    check_against_reference(spec, batch, target, kernel_cache)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", CONV_LAYERS, ids=lambda c: c[0])
def test_conv_layer_matches_reference(case, target, kernel_cache):
    _, spec, batch = case
    check_against_reference(spec, batch, target, kernel_cache)
