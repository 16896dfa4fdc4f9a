"""Every zoo architecture compiles for the CPU and its batch-1 inference matches the float64
reference executor, at the smallest input size each architecture accepts (the kernels are
the same code at 224x224, specialised to other shapes; benchmarks run the full sizes).

Two checks per model. Layer by layer: each layer's kernels, fed the float32 activations
the compiled net actually produced, agree with the reference op on those same inputs; this
holds at any depth. End to end: the output agrees with the reference run in float64. Deep
nets amplify float32 rounding (EfficientNet-B7 has over 700 layers), so the end-to-end
tolerance is looser than the per-layer one, and uses batch norm statistics drawn close
to identity; the per-layer check uses wide ones. A weighted sum whose terms cancel (a
squeeze-excite expansion: terms summing to 3000 for a result of 0.1) rounds in proportion
to sum |w x|, not to its result, and the summation order follows the vector width; the
per-layer check allows for that, carried through the rest of the kernel's chain.
"""
import numpy as np
import pytest

import cnngen
from cnngen import zoo
from cnngen.ops import REGISTRY, activation
from cnngen.reference import RunContext

from .plan_checks import assert_live_tensors_never_share

# AlexNet and ZF Net need 64x64 to keep a spatial map before their classifier.
INPUT_SIZE = {"alexnet": 64, "zfnet": 64}
# Rounding of a float32 weighted sum (weights rounded to float32, batch norm folded into
# them, fused multiply-adds in any order), in units of sum |w x|; measured: at most 0.3.
SUM_ROUNDING = 8 * 2.0 ** -24


def randomise_batchnorm(net, rng, spread):
    weights = net.weights
    for params in weights.values():
        if "running_var" in params:
            shape = params["running_var"].shape
            params["running_mean"] = rng.normal(0, spread, shape)
            params["running_var"] = rng.uniform(1 - spread, 1 + spread, shape)
            params["gamma"] = rng.uniform(1 - spread, 1 + spread, shape)
            params["beta"] = rng.normal(0, spread, shape)
    net.weights = weights


def assert_layers_match(net, x):
    """Each kernel's output against the reference ops it computes (a fused node runs its
    spec layers in turn), applied to the kernels' own inputs."""
    plan = net.plan(x.shape[0], reuse=False)       # keep every layer's activation
    plan.set_input(x)
    plan.run()
    acts = {net.graph.input_name: x.astype(np.float64)}
    ctx = RunContext(False, np.random.default_rng(0))
    weights = net.weights
    kept = {n.name for n in plan.graph.nodes}
    dropped = {n.name: n.inputs[0] for n in net.graph.nodes if n.op == "dropout"
               and n.name not in kept}

    def value(name):  # a dropped dropout reads as its input
        while name in dropped:
            name = dropped[name]
        return acts[name]

    def run_rest(chain, first):  # the chain's layers after the first, on its output
        ref = first
        for i, layer in enumerate(chain[1:], 1):
            xs = [ref if src == chain[i - 1].name else value(src) for src in layer.inputs]
            ref, _ = REGISTRY[layer.op].forward(layer, weights.get(layer.name, {}), xs, ctx)
        return ref

    for node in plan.graph.nodes:
        chain = node.fused or (node,)
        first, params = chain[0], weights.get(chain[0].name, {})
        xs = [value(src) for src in first.inputs]
        y, z = REGISTRY[first.op].forward(first, params, xs, ctx)
        ref = run_rest(chain, y)
        allowance = 0.0
        if "w" in params:  # conv, dense: z's rounding, moved through the rest of the chain
            _, magnitude = REGISTRY[first.op].forward(
                first, {k: np.abs(v) for k, v in params.items()}, [np.abs(x) for x in xs], ctx)
            act, e = first.attrs["activation"], SUM_ROUNDING * magnitude
            allowance = np.maximum(*(np.abs(run_rest(chain, activation.forward(act, z + d)) - ref)
                                     for d in (e, -e)))
        got = acts[node.name] = plan.tensor(node.name).astype(np.float64)
        scale = max(1.0, float(np.abs(ref).max()))
        assert got.shape == ref.shape, f"layer {node.name} ({node.op})"
        err, allowed = np.abs(got - ref), 1e-4 * np.abs(ref) + 1e-5 * scale + allowance
        if not (err <= allowed).all():
            i = np.unravel_index(np.argmax(np.where(err <= allowed, -np.inf, err - allowed)),
                                 err.shape)
            raise AssertionError(
                f"layer {node.name} ({node.op}): {(~(err <= allowed)).sum()} of {err.size} "
                f"values differ from the reference; worst at {tuple(map(int, i))}: got "
                f"{got[i]:.7g}, expected {ref[i]:.7g}, difference {err[i]:.3g}, allowed "
                f"{allowed[i]:.3g} (rounding of the weighted sum: "
                f"{np.broadcast_to(allowance, err.shape)[i]:.3g})")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_zoo_model_inference_matches_reference(name, kernel_cache):
    spec = zoo.get(name, num_classes=10, input_size=INPUT_SIZE.get(name, 32))
    net = cnngen.compile(spec, cache_dir=kernel_cache, seed=1)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, *net.graph.input.shape)).astype(np.float32)

    randomise_batchnorm(net, rng, spread=0.5)
    net(x)
    assert_layers_match(net, x)

    assert_live_tensors_never_share(net.plan(1))
    randomise_batchnorm(net, rng, spread=0.1)
    ref = cnngen.ReferenceExecutor(spec, net.weights).forward(x.astype(np.float64)).out
    got = net(x)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * float(np.abs(ref).max()))


def kernel_chains(net, n_batch=1):
    return [s.kernel.name.split("__")[0] for s in net.plan(n_batch).steps if not s.edge]


@pytest.mark.slow
def test_resnet18_runs_two_kernels_per_block(kernel_cache):
    net = cnngen.compile(zoo.resnet18(num_classes=10, input_size=32), cache_dir=kernel_cache)
    chains = kernel_chains(net)
    # stem (conv-bn-relu-maxpool), 8 basic blocks of 2, 3 downsampling shortcuts, head
    assert chains[0] == "conv2d_bn_relu_maxpool2d"
    assert chains.count("conv2d_bn_relu") == 8 and chains.count("conv2d_bn_add_relu") == 8
    assert chains.count("conv2d_bn") == 3
    assert chains[-2:] == ["global_avgpool", "dense"] and len(chains) == 22


@pytest.mark.slow
def test_googlenet_inception_modules_copy_nothing(kernel_cache):
    net = cnngen.compile(zoo.googlenet(num_classes=10, input_size=32), cache_dir=kernel_cache)
    assert not any("concat" in c for c in kernel_chains(net))
    concats = [n for n in net.plan(1).graph.nodes if n.op == "concat"]
    assert len(concats) == 9 and all(n.name in net.plan(1).written_in_place for n in concats)
