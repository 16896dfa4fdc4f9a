"""Every op, as generated CPU kernels, against the float64 reference executor.

Each workload runs at the host's SIMD width and at the AVX2 width (8 lanes), so both code
paths are generated and checked on an AVX-512 machine. Kernels compile once per session
into a shared temporary cache. ``$CNNGEN_HOST`` narrows the host itself, so the whole suite
can also run as an AVX2 machine would see it.
"""
import numpy as np
import pytest

import cnngen
from cnngen import target as targets
from cnngen.errors import CnngenError
from cnngen.target import ISA_WIDTH, cpu, detected, host, narrow, resolve
from .workloads import CONV_LAYERS, OP_CASES, single

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


@pytest.fixture
def host_env(monkeypatch):
    """Sets ``$CNNGEN_HOST`` for one test and re-reads the host before and after."""
    def set_host(value):
        monkeypatch.setenv("CNNGEN_HOST", value)
        host.cache_clear()
    yield set_host
    host.cache_clear()
    monkeypatch.undo()
    host.cache_clear()


NARROWER = [isa for isa in ISA_WIDTH if ISA_WIDTH[isa] < detected().vector]


@pytest.mark.parametrize("isa", NARROWER)
def test_cnngen_host_narrows_width_features_and_fingerprint(isa, host_env):
    host_env(f"cpu-{isa}")
    t = host()
    assert (t.isa, t.vector) == (isa, ISA_WIDTH[isa])
    assert resolve("cpu") == resolve(f"cpu-{isa}") == t == narrow(detected(), isa)
    assert not [f for f in t.features if f.startswith("avx512")]
    assert isa != "sse" or not [f for f in t.features if f.startswith(("avx", "fma"))]
    assert t.fingerprint != detected().fingerprint
    with pytest.raises(CnngenError, match=rf"has no avx512; it supports up to {isa}") as raised:
        cpu("avx512")
    assert f"narrowed by CNNGEN_HOST=cpu-{isa}" in str(raised.value)


def test_cnngen_host_that_is_unknown_or_wider_than_the_machine_is_an_error(host_env,
                                                                           monkeypatch):
    host_env("avx2")
    with pytest.raises(CnngenError, match=r"environment variable CNNGEN_HOST: unknown target "
                       r"'avx2'; expected one of 'cpu-avx512', 'cpu-avx2', 'cpu-sse'"):
        host()
    avx2_machine = narrow(detected(), "avx2") if detected().vector > 8 else detected()
    monkeypatch.setattr(targets, "detected", lambda: avx2_machine)
    host_env("cpu-avx512")
    with pytest.raises(CnngenError, match=rf"CNNGEN_HOST=cpu-avx512: this CPU "
                       rf"\({avx2_machine.cpu_name}\) has no avx512; it supports up to avx2"):
        host()
    host_env("")
    assert host() == avx2_machine


@pytest.mark.skipif(not NARROWER, reason="the machine is SSE-only: nothing to narrow it to")
def test_a_net_compiled_on_the_narrowed_host_uses_its_width(host_env, kernel_cache):
    isa = NARROWER[0]
    host_env(f"cpu-{isa}")
    spec = single("conv2d", (5, 9, 9), filters=20, kernel=3)
    net = cnngen.compile(spec, cache_dir=kernel_cache)
    assert net.target.vector == ISA_WIDTH[isa]
    names = [step.call.kernel.name(net.target) for step in net.plan(3).steps]
    assert names and all(name.endswith(f"__{isa}") for name in names)
    check_against_reference(spec, 3, "cpu", kernel_cache)
