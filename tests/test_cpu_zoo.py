"""Every zoo architecture compiles for the CPU and its batch-1 inference matches the float64
reference executor, at the smallest input size each architecture accepts (the kernels are
the same code at 224x224, specialised to other shapes; benchmarks run the full sizes)."""
import numpy as np
import pytest

import cnngen
from cnngen import zoo

# AlexNet and ZF Net need 64x64 to keep a spatial map before their classifier.
INPUT_SIZE = {"alexnet": 64, "zfnet": 64}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_zoo_model_inference_matches_reference(name, kernel_cache):
    spec = zoo.get(name, num_classes=10, input_size=INPUT_SIZE.get(name, 32))
    net = cnngen.compile(spec, cache_dir=kernel_cache, seed=1)
    weights = net.weights
    rng = np.random.default_rng(2)
    for layer, params in weights.items():   # non-trivial batch-norm statistics
        if "running_var" in params:
            params["running_mean"] = rng.normal(0, 0.1, params["running_mean"].shape)
            params["running_var"] = rng.uniform(0.5, 1.5, params["running_var"].shape)
            params["gamma"] = rng.uniform(0.5, 1.5, params["gamma"].shape)
            params["beta"] = rng.normal(0, 0.1, params["beta"].shape)
    net.weights = weights
    x = rng.standard_normal((1, *net.graph.input.shape)).astype(np.float32)
    ref = cnngen.ReferenceExecutor(spec, net.weights).forward(x.astype(np.float64)).out
    got = net(x)
    scale = float(np.abs(ref).max())
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4 * scale)
