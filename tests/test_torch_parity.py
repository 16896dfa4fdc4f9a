"""PyTorch parity: every op, and a few small networks, against ``torch.nn.functional``.

Each case is a spec. cnngen's float64 reference runs it forward and backward; the torch
peer (``torch_graph.run_graph``) runs the same graph with the same weights, dropout masks
and mode. Compared: the output, every activation, the loss, the input gradient, every
parameter gradient and, in train mode, the batch-norm running-statistic updates.

Weights are random (biases, gamma, beta and running statistics included), not cnngen's
initialisation, so a zero bias or an identity batch norm cannot hide a mistake.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed: PyTorch parity tests not run")

from cnngen import torch_graph  # noqa: E402  (imports torch)
from cnngen import Builder, ReferenceExecutor, build_graph  # noqa: E402
from cnngen.ops import REGISTRY  # noqa: E402

pytestmark = pytest.mark.torch

RTOL = ATOL = 1e-9


@dataclass(frozen=True)
class Case:
    """One parity check. ``target`` is ``"labels"`` or ``"probs"`` for cross-entropy
    (mse targets are always random arrays); without a loss a random dL/d(out) is used.
    ``x`` replaces the random input, for hand-picked values."""

    id: str
    spec: dict
    train: bool = False
    n_batch: int = 2
    target: str = "labels"
    x: tuple | None = None


def net(input_shape, *layers, loss=None, l2=0.0) -> dict:
    """A spec from ``(op, name, attrs)`` triples; layers read the previous one unless
    attrs name ``inputs``."""
    b = Builder("parity", input_shape)
    for op, name, attrs in layers:
        b.layer(op, name, **attrs)
    if loss:
        b.loss(loss, l2)
    return b.spec()


def one(op, input_shape, **attrs) -> dict:
    return net(input_shape, (op, "layer", attrs))


def case(id, spec, **kw):
    return pytest.param(Case(id, spec, **kw), id=id)


# -- single ops ---------------------------------------------------------------------------

CONV = [
    case("conv2d_3x3", one("conv2d", (3, 7, 7), filters=4, kernel=3, activation="relu")),
    case("conv2d_1x1_nobias", one("conv2d", (5, 6, 6), filters=3, kernel=1, bias=False)),
    case("conv2d_stride2_13x13", one("conv2d", (3, 13, 13), filters=5, kernel=3, stride=2,
                                     padding=1)),
    case("conv2d_same_stride2", one("conv2d", (2, 8, 7), filters=3, kernel=3, stride=2,
                                    padding="same", activation="tanh")),
    case("conv2d_same_k4", one("conv2d", (2, 6, 6), filters=2, kernel=4, padding="same")),
    case("conv2d_asym_pad", one("conv2d", (2, 6, 5), filters=3, kernel=[3, 2],
                                padding=[[0, 2], [1, 0]])),
    case("conv2d_dilation2", one("conv2d", (3, 9, 9), filters=4, kernel=3, dilation=2,
                                 padding=2, activation="swish")),
    case("conv2d_rect_stride", one("conv2d", (2, 9, 11), filters=3, kernel=[2, 3],
                                   stride=[1, 2], dilation=[2, 1])),
    case("conv2d_groups2", one("conv2d", (4, 6, 6), filters=6, kernel=3, groups=2, padding=1,
                               activation="leaky_relu")),
    case("conv2d_depthwise", one("conv2d", (5, 7, 7), filters=5, kernel=3, groups=5,
                                 stride=2, padding="same", activation="hardswish")),
    case("conv2d_depthwise_mult2", one("conv2d", (3, 5, 5), filters=6, kernel=3, groups=3)),
    case("conv1d", one("conv1d", (3, 11), filters=4, kernel=3, activation="sigmoid")),
    case("conv1d_stride2_dil2_asym", one("conv1d", (4, 12), filters=2, kernel=3, stride=2,
                                         dilation=2, padding=[[3, 1]], groups=2)),
    case("conv1d_same_stride2", one("conv1d", (2, 10), filters=3, kernel=4, stride=2,
                                    padding="same")),
    case("conv_t2d_stride2", one("conv_transpose2d", (3, 4, 4), filters=2, kernel=3,
                                 stride=2, padding=1)),
    case("conv_t2d_outpad_groups", one("conv_transpose2d", (4, 3, 5), filters=6, kernel=3,
                                       stride=2, padding=1, output_padding=1, groups=2,
                                       activation="relu")),
    case("conv_t2d_asym_pad", one("conv_transpose2d", (2, 4, 3), filters=3, kernel=[3, 4],
                                  stride=[2, 3], padding=[[0, 1], [2, 1]],
                                  output_padding=[1, 0])),
    case("conv_t2d_dilation2", one("conv_transpose2d", (3, 4, 4), filters=2, kernel=3,
                                   dilation=2, output_padding=1, stride=1, bias=False)),
    case("conv_t1d_outpad", one("conv_transpose1d", (4, 5), filters=3, kernel=4, stride=3,
                                padding=1, output_padding=2)),
    case("conv_t1d_depthwise", one("conv_transpose1d", (3, 6), filters=3, kernel=3,
                                   groups=3, stride=2)),
]

POOL = [
    case("maxpool2d_2x2", one("maxpool2d", (3, 8, 8), size=2)),
    case("maxpool2d_3s2_pad1", one("maxpool2d", (2, 7, 7), size=3, stride=2, padding=1)),
    case("maxpool2d_ceil", one("maxpool2d", (2, 7, 6), size=2, ceil_mode=True)),
    case("maxpool2d_ceil_pad", one("maxpool2d", (2, 6, 6), size=3, stride=2, padding=1,
                                   ceil_mode=True)),
    case("maxpool2d_asym_pad", one("maxpool2d", (2, 6, 5), size=[3, 2], stride=[2, 1],
                                   padding=[[0, 1], [1, 0]])),
    case("maxpool2d_same", one("maxpool2d", (2, 7, 7), size=3, stride=2, padding="same")),
    case("maxpool1d_ceil", one("maxpool1d", (3, 9), size=2, ceil_mode=True)),
    case("maxpool1d_overlap", one("maxpool1d", (2, 10), size=3, stride=2, padding=1)),
    case("avgpool2d_2x2", one("avgpool2d", (3, 8, 8), size=2)),
    case("avgpool2d_pad_incl", one("avgpool2d", (2, 7, 7), size=3, stride=2, padding=1)),
    case("avgpool2d_pad_excl", one("avgpool2d", (2, 7, 7), size=3, stride=2, padding=1,
                                   count_include_pad=False)),
    case("avgpool2d_ceil_incl", one("avgpool2d", (2, 6, 7), size=3, stride=2, padding=1,
                                    ceil_mode=True)),
    case("avgpool2d_ceil_excl", one("avgpool2d", (2, 6, 7), size=3, stride=2, padding=1,
                                    ceil_mode=True, count_include_pad=False)),
    case("avgpool2d_ceil_nopad", one("avgpool2d", (2, 7, 5), size=2, ceil_mode=True)),
    case("avgpool2d_asym_pad", one("avgpool2d", (2, 5, 6), size=[2, 3], stride=[2, 1],
                                   padding=[[1, 0], [0, 1]])),
    case("avgpool1d_ceil_excl", one("avgpool1d", (3, 10), size=3, stride=2, padding=1,
                                    ceil_mode=True, count_include_pad=False)),
    case("avgpool1d", one("avgpool1d", (2, 9), size=4, stride=3)),
    case("global_avgpool2d", one("global_avgpool", (4, 5, 7))),
    case("global_avgpool_keepdims", one("global_avgpool", (3, 4, 4), keepdims=True)),
    case("global_avgpool1d", one("global_avgpool", (3, 9))),
    case("global_maxpool2d", one("global_maxpool", (4, 5, 7))),
    case("global_maxpool1d_keepdims", one("global_maxpool", (3, 9), keepdims=True)),
    case("max_unpool2d", net((3, 6, 6), ("maxpool2d", "pool", dict(size=2, return_switches=True)),
                             ("max_unpool", "unpool", dict(switches="pool")))),
    case("max_unpool2d_ceil", net((2, 7, 5), ("maxpool2d", "pool", dict(
        size=2, ceil_mode=True, return_switches=True)),
        ("max_unpool", "unpool", dict(switches="pool")))),
    case("max_unpool2d_asym_pad", net((2, 6, 5), ("maxpool2d", "pool", dict(
        size=[3, 2], stride=[3, 2], padding=[[0, 1], [1, 0]], return_switches=True)),
        ("max_unpool", "unpool", dict(switches="pool")))),
    case("max_unpool1d", net((3, 8), ("maxpool1d", "pool", dict(size=2, return_switches=True)),
                             ("max_unpool", "unpool", dict(switches="pool")))),
]

NORM = [
    case("batchnorm2d_train", one("batchnorm", (3, 5, 4), momentum=0.3), train=True, n_batch=3),
    case("batchnorm2d_eval", one("batchnorm", (3, 5, 4), eps=1e-3)),
    case("batchnorm1d_train", one("batchnorm", (4, 7), eps=1e-3), train=True),
    case("batchnorm_flat_train", one("batchnorm", (6,), momentum=1.0), train=True, n_batch=5),
    case("batchnorm_flat_eval", one("batchnorm", (6,)), n_batch=3),
    case("dropout_inverted_train", one("dropout", (3, 4, 4), rate=0.3), train=True),
    case("dropout_inverted_eval", one("dropout", (3, 4, 4), rate=0.3)),
    case("dropout_scale_at_test_train", one("dropout", (8,), rate=0.5, mode="scale_at_test"),
         train=True, n_batch=4),
    case("dropout_scale_at_test_eval", one("dropout", (8,), rate=0.5, mode="scale_at_test")),
]

ACTIVATION = [case(name, one(name, (3, 4, 5))) for name in (
    "identity", "relu", "sigmoid", "tanh", "swish", "silu", "hardswish", "softmax")]
ACTIVATION += [
    case("leaky_relu_alpha0.2", one("leaky_relu", (3, 4, 5), alpha=0.2)),
    case("leaky_relu_default", one("leaky_relu", (7,))),
    case("softmax_1d", one("softmax", (5, 6))),
    case("softmax_flat", one("softmax", (10,)), n_batch=3),
]

# Activations at their kinks: which one-sided derivative each side picks must agree.
KINKS = (-3.0, -1.0, 0.0, 1.0, 3.0, -6.0, 6.0, 2.5)
ACTIVATION += [
    case(f"{name}_at_kinks", one(name, (8,)), n_batch=1, x=(KINKS,))
    for name in ("relu", "leaky_relu", "hardswish")]

DENSE = [
    case("dense", one("dense", (7,), units=5, activation="tanh"), n_batch=3),
    case("dense_nobias", one("dense", (4,), units=9, bias=False)),
    case("flatten", one("flatten", (3, 4, 5))),
    case("reshape", one("reshape", (12,), shape=[3, -1, 2])),
    case("reshape_1d", one("reshape", (2, 3, 4), shape=[6, 4])),
]

MERGE = [
    case("add3_relu", net((3, 4, 4), ("tanh", "a", {}), ("sigmoid", "b", {"inputs": "input"}),
                          ("add", "sum", dict(inputs=["a", "b", "input"], activation="relu")))),
    case("concat", net((2, 5, 5), ("conv2d", "a", dict(filters=3, kernel=1)),
                       ("concat", "cat", dict(inputs=["input", "a", "input"])))),
    case("multiply_broadcast", net((3, 4, 5), ("global_avgpool", "g", dict(keepdims=True)),
                                   ("multiply", "mul", dict(inputs=["input", "g"])))),
    case("multiply_same_shape", net((6,), ("tanh", "a", {}),
                                    ("multiply", "mul", dict(inputs=["a", "input", "a"])))),
]

LOSS = [
    case("mse", net((5,), ("dense", "fc", dict(units=3)), loss="mse")),
    case("mse_l2", net((2, 6, 6), ("conv2d", "c", dict(filters=3, kernel=3)),
                       ("conv_transpose2d", "d", dict(filters=2, kernel=3)),
                       loss="mse", l2=0.05)),
    case("xent_labels", net((6,), ("dense", "fc", dict(units=4)),
                            loss="softmax_cross_entropy"), n_batch=5),
    case("xent_probs_l2", net((6,), ("dense", "fc", dict(units=4)), ("dense", "fc2",
                              dict(units=3, bias=False)),
                              loss="softmax_cross_entropy", l2=0.01),
         n_batch=4, target="probs"),
    case("xent_spatial_labels", net((2, 5, 4), ("conv2d", "c", dict(filters=4, kernel=1)),
                                    loss="softmax_cross_entropy"), n_batch=3),
    case("xent_spatial_probs", net((2, 5, 4), ("conv2d", "c", dict(filters=4, kernel=1)),
                                   loss="softmax_cross_entropy"), n_batch=3, target="probs"),
]

# -- small networks -----------------------------------------------------------------------

RESIDUAL = net(
    (4, 9, 9),
    ("conv2d", "c1", dict(filters=6, kernel=3, stride=2, padding="same", bias=False)),
    ("batchnorm", "bn1", {}),
    ("relu", "r1", {}),
    ("conv2d", "c2", dict(filters=6, kernel=3, padding=1, bias=False)),
    ("batchnorm", "bn2", dict(momentum=0.2)),
    ("conv2d", "proj", dict(inputs="input", filters=6, kernel=1, stride=2, bias=False)),
    ("batchnorm", "bn_proj", {}),
    ("add", "res", dict(inputs=["bn2", "bn_proj"], activation="relu")),
    ("global_avgpool", "gap", {}),
    ("dense", "fc", dict(units=3)),
    loss="softmax_cross_entropy", l2=1e-3)

INCEPTION = net(
    (3, 8, 8),
    ("conv2d", "b1", dict(filters=2, kernel=1, activation="relu")),
    ("conv2d", "b3r", dict(inputs="input", filters=2, kernel=1, activation="relu")),
    ("conv2d", "b3", dict(filters=3, kernel=3, padding="same", activation="relu")),
    ("conv2d", "b5", dict(inputs="input", filters=2, kernel=3, dilation=2, padding="same")),
    ("maxpool2d", "bp", dict(inputs="input", size=3, stride=1, padding=1)),
    ("conv2d", "bpp", dict(filters=2, kernel=1)),
    ("concat", "cat", dict(inputs=["b1", "b3", "b5", "bpp"])),
    ("conv2d", "head", dict(filters=4, kernel=1)),
    loss="softmax_cross_entropy")

SQUEEZE_EXCITE = net(
    (6, 5, 5),
    ("conv2d", "c", dict(filters=8, kernel=3, padding=1, activation="swish")),
    ("global_avgpool", "squeeze", dict(keepdims=True)),
    ("conv2d", "fc1", dict(filters=2, kernel=1, activation="relu")),
    ("conv2d", "fc2", dict(filters=8, kernel=1, activation="sigmoid")),
    ("multiply", "excite", dict(inputs=["c", "fc2"])),
    ("global_maxpool", "gmp", {}),
    loss="mse")

CONV_BN_POOL_UNPOOL = net(
    (3, 8, 7),
    ("conv2d", "c", dict(filters=4, kernel=3, padding=1)),
    ("batchnorm", "bn", dict(momentum=0.5)),
    ("relu", "r", {}),
    ("maxpool2d", "pool", dict(size=2, ceil_mode=True, return_switches=True)),
    ("conv2d", "mid", dict(filters=4, kernel=3, padding=1, activation="leaky_relu")),
    ("max_unpool", "unpool", dict(switches="pool")),
    ("conv_transpose2d", "up", dict(filters=2, kernel=3, padding=1)),
    loss="mse")

CLASSIFIER = net(
    (1, 12, 12),
    ("conv2d", "c1", dict(filters=4, kernel=5, activation="relu")),
    ("avgpool2d", "s2", dict(size=2)),
    ("conv2d", "c3", dict(filters=6, kernel=3, activation="tanh")),
    ("maxpool2d", "s4", dict(size=2, ceil_mode=True)),
    ("flatten", "flat", {}),
    ("dense", "f5", dict(units=10, activation="relu")),
    ("dropout", "drop", dict(rate=0.4)),
    ("batchnorm", "bn", {}),
    ("dense", "f6", dict(units=5)),
    loss="softmax_cross_entropy", l2=5e-4)

SEQUENCE_1D = net(
    (3, 16),
    ("conv1d", "c1", dict(filters=4, kernel=5, padding="same", activation="hardswish")),
    ("batchnorm", "bn", {}),
    ("dropout", "drop", dict(rate=0.25, mode="scale_at_test")),
    ("maxpool1d", "pool", dict(size=3, stride=2, ceil_mode=True)),
    ("conv_transpose1d", "up", dict(filters=3, kernel=4, stride=2, padding=1)),
    ("avgpool1d", "smooth", dict(size=3, stride=1, padding=1, count_include_pad=False)),
    loss="mse")

DECODER = net(
    (12,),
    ("dense", "fc", dict(units=18, activation="relu")),
    ("reshape", "grid", dict(shape=[2, 3, 3])),
    ("conv_transpose2d", "up", dict(filters=4, kernel=3, stride=2, output_padding=1,
                                    groups=2, activation="silu")),
    ("batchnorm", "bn", {}),
    ("conv2d", "out", dict(filters=3, kernel=3, padding=1)),
    ("softmax", "prob", {}),
    loss="mse")

NETWORKS = [
    case("residual_block_train", RESIDUAL, train=True, n_batch=3),
    case("residual_block_eval", RESIDUAL, n_batch=3),
    case("inception_concat", INCEPTION, n_batch=2),
    case("squeeze_excite", SQUEEZE_EXCITE, n_batch=2),
    case("conv_bn_pool_unpool_train", CONV_BN_POOL_UNPOOL, train=True, n_batch=2),
    case("classifier_train_dropout", CLASSIFIER, train=True, n_batch=4),
    case("classifier_eval", CLASSIFIER, n_batch=4),
    case("sequence_1d_train", SEQUENCE_1D, train=True, n_batch=3),
    case("sequence_1d_eval", SEQUENCE_1D, n_batch=3),
    case("decoder_train", DECODER, train=True, n_batch=3),
]

CASES = CONV + POOL + NORM + ACTIVATION + DENSE + MERGE + LOSS + NETWORKS


# -- the comparison -----------------------------------------------------------------------

def random_weights(graph, rng) -> dict:
    """Every parameter random; running variances positive and away from zero."""
    weights = {}
    for node in graph.nodes:
        shapes = {**node.params, **node.state}
        if not shapes:
            continue
        weights[node.name] = {
            name: rng.uniform(0.5, 1.5, shape) if name == "running_var"
            else rng.normal(0.0, 0.5, shape) for name, shape in shapes.items()}
    return weights


def random_target(graph, out_shape, kind, rng) -> np.ndarray:
    if graph.loss.op == "mse":
        return rng.normal(size=out_shape)
    if kind == "probs":
        p = rng.uniform(0.05, 1.0, out_shape)
        return p / p.sum(axis=1, keepdims=True)
    return rng.integers(0, out_shape[1], (out_shape[0], *out_shape[2:]))


def close(got, expected, what):
    got = got.detach().numpy() if isinstance(got, torch.Tensor) else got
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL, err_msg=what)


@pytest.mark.parametrize("case", CASES)
def test_matches_torch(case: Case):
    graph = build_graph(case.spec)
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    weights = random_weights(graph, rng)
    x = (np.array(case.x, dtype=np.float64) if case.x is not None
         else rng.normal(size=(case.n_batch, *graph.input.shape)))
    masks = {node.name: rng.random((x.shape[0], *node.out.shape)) >= node.attrs["rate"]
             for node in graph.nodes if node.op == "dropout"} if case.train else {}

    ref = ReferenceExecutor(case.spec, weights=weights)
    fwd = ref.forward(x, train=case.train, masks=masks)
    run = torch_graph.run_graph(graph, weights, x, train=case.train, masks=masks)

    # forward
    for name, act in fwd.activations.items():
        close(run.activations[name], act, f"activation of {name!r}")
    if graph.loss:
        target = random_target(graph, fwd.out.shape, case.target, rng)
        value, dout = ref.loss(fwd.out, target)
        t_value = torch_graph.loss(graph, run, target)
        close(t_value, value, "loss")
        t_value.backward()
    else:
        dout = rng.normal(size=fwd.out.shape)
        run.out.backward(torch.from_numpy(dout))
    grads = ref.backward(fwd, dout)

    for name, (idx, _) in run.switches.items():
        np.testing.assert_array_equal(idx.numpy(), fwd.context.saved[name],
                                      err_msg=f"max-pool switches of {name!r}")

    # backward
    close(run.x.grad, grads.input, "input gradient")
    assert set(grads.weights) == set(run.params)
    for layer, ps in run.params.items():
        assert set(grads.weights[layer]) == set(ps), layer
        for name, t in ps.items():
            close(t.grad, grads.weights[layer][name], f"gradient of {layer}/{name}")

    # batch-norm running statistics: torch updated its buffers in place
    torch_updates = run.state if case.train else {}
    assert set(fwd.state_updates) == set(torch_updates)
    for layer, stats in torch_updates.items():
        for name, t in stats.items():
            close(t, fwd.state_updates[layer][name], f"running statistic {layer}/{name}")
    if not case.train:
        for layer, stats in run.state.items():
            for name, t in stats.items():
                close(t, weights[layer][name], f"eval mode changed {layer}/{name}")


def test_max_unpool_overlapping_windows_add_where_torch_keeps_one():
    """Documented divergence: where overlapping windows pick the same element, cnngen's
    unpool sums their values (the adjoint of max-pool's gradient) and torch keeps one.
    Elsewhere, and in the gradient (a gather at the switches), the two agree."""
    spec = net((2, 9), ("maxpool1d", "pool", dict(size=3, stride=1, return_switches=True)),
               ("max_unpool", "unpool", dict(switches="pool")))
    graph = build_graph(spec)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3, 2, 9))
    fwd = ReferenceExecutor(spec).forward(x)
    run = torch_graph.run_graph(graph, {}, x)
    switches = fwd.context.saved["pool"]
    np.testing.assert_array_equal(run.switches["pool"][0].numpy(), switches)
    counts = np.stack([np.bincount(s, minlength=9) for s in switches.reshape(-1, 7)])
    counts = counts.reshape(fwd.out.shape)
    assert (counts > 1).any(), "the case must have shared switches"
    ours, theirs = fwd.out, run.out.detach().numpy()
    close(theirs[counts <= 1], ours[counts <= 1], "unpool where switches are unique")
    close(theirs[counts > 1] * counts[counts > 1], ours[counts > 1],
          "unpool where switches are shared (all shared values equal the max)")
    dout = rng.normal(size=fwd.out.shape)
    run.out.backward(torch.from_numpy(dout))
    close(run.x.grad, ReferenceExecutor(spec).backward(fwd, dout).input, "input gradient")


def ops_in(params) -> set[str]:
    return {node.op for p in params for node in build_graph(p.values[0].spec).nodes}


def test_every_op_has_a_parity_case():
    missing = set(REGISTRY) - ops_in(CASES)
    assert not missing, f"ops without a torch parity case: {sorted(missing)}"


def test_every_op_has_a_torch_lowering():
    assert set(REGISTRY) <= set(torch_graph.LOWER), sorted(set(REGISTRY) - set(torch_graph.LOWER))
