"""Training kernels of the pools against the float64 reference executor: the training
forward (max pools always keep their switches; global max its argmax) and the backward of
max and average pools (1-D and 2-D; overlapping windows, padding, ceil_mode,
count_include_pad both ways), global pools (keepdims both ways) and max_unpool.

Each case runs a small spec through the lowerings, layer by layer, on the CPU kernels
(``tests/kernel_harness.run_calls``): the training forward of every layer, then the backward
of every layer from a random dy, summing the contributions of a tensor's readers. Every
activation, the input's gradient and every parameter gradient is compared with
``ReferenceExecutor.forward(x, train=True)`` and ``backward(fwd, dy)``. Every tensor and
gradient carries a halo (a gradient's differs from its tensor's), and every gradient a
kernel writes must leave its halo at zero,
overwrite its interior (it starts as garbage) and keep its pad lanes finite. Cases run on
AVX-512 (V = 16) where the host has it and on AVX2 (V = 8).
"""
from __future__ import annotations

import numpy as np
import pytest

import cnngen
from cnngen.errors import SpecError
from cnngen.codegen.cpu import LOWER, GradLowering, Lowering, grad_name
from cnngen.codegen.cpu import elementwise_grad, norm_grad, pool_grad
from cnngen.codegen.kernel import ParamGrad
from cnngen.codegen.layout import Blocked
from cnngen.spec import Builder, build_graph
from cnngen.target import resolve

from .kernel_harness import run_calls
from .test_cpu_ops import TARGETS
from .workloads import unpool

TRAIN = {**pool_grad.TRAIN, **elementwise_grad.TRAIN, **norm_grad.TRAIN}
BACKWARD = {**pool_grad.BACKWARD, **elementwise_grad.BACKWARD, **norm_grad.BACKWARD}
HALO = (1, 1, 1, 1)          # every activation's, unless a case names another
GRAD_HALO = (2, 0, 0, 1)     # every gradient's: other strides than the activation's
GARBAGE = 7.0           # what a gradient buffer's interior holds before its kernel runs


def rtol_atol(ref, rtol=1e-4, atol=2e-5):
    """Tolerances as in test_cpu_ops: relative, plus absolute on the reference's scale."""
    return dict(rtol=rtol, atol=atol * max(1.0, float(np.abs(ref).max())))


class Step:
    """One training step of ``spec`` on the generated kernels, layer by layer.

    ``acts``: every buffer the forward wrote (activations and the layers' temps), NCHW
    float64; ``grads``: every tensor's gradient (its readers' contributions summed);
    ``weight_grads``: ``{layer: {param: array}}``."""

    def __init__(self, spec, n, target, cache, x=None, dy=None, weights=None, seed=0,
                 values=None, halos=None, x_scale=1.0, x_mean=0.0, weight_grads=True):
        self.graph = build_graph(spec)
        self.target = resolve(target)
        self.n, self.cache, self.halos = n, cache, halos or {}
        self.weight_grads_wanted = weight_grads
        self.ref = cnngen.ReferenceExecutor(spec, weights, seed=seed)
        rng = np.random.default_rng(seed)
        if x is None:
            x = rng.standard_normal((n, *self.graph.input.shape)) * x_scale + x_mean
        self.x = np.asarray(x, np.float32).astype(np.float64)
        self.acts = {self.graph.input_name: self.x, **(values or {})}
        self.layouts = {}
        for node in self.graph.nodes:
            self.forward(node)
        if dy is None:
            dy = rng.standard_normal((n, *self.graph.output.out.shape))
        self.dy = np.asarray(dy, np.float32).astype(np.float64)
        self.grads = {self.graph.output.name: self.dy}
        self.weight_grads = {}
        for node in reversed(self.graph.nodes):
            if node.name in self.grads:
                self.backward(node)

    def layout(self, name: str) -> Blocked:
        """A tensor's layout: HALO unless ``halos`` names another."""
        return Blocked.of(self.graph.type_of(name), self.target.vector,
                          self.halos.get(name, HALO))

    def grad_layout(self, name: str) -> Blocked:
        return Blocked.of(self.graph.type_of(name), self.target.vector, GRAD_HALO)

    def forward(self, node):
        ins = tuple(self.layout(i) for i in node.inputs)
        refs = tuple(self.layout(r) for r in node.refs)
        low = Lowering(node, ins, self.layout(node.name), self.n, self.target, refs=refs)
        calls = (TRAIN.get(node.op) or LOWER[node.op])(low)
        self.layouts.update(zip(node.inputs, ins))
        self.layouts.update({node.name: low.out, **low.temps})
        out = run_calls(calls, self.layouts, self.acts, self.ref.weights, self.n, self.target,
                        self.cache)
        self.acts.update({k: v for k, v in out.items() if str(k).startswith(node.name + ":")})
        self.acts[node.name] = out[node.name].reshape(self.n, *node.out.shape)

    def backward(self, node):
        ins = tuple(self.layout(i) for i in node.inputs)
        refs = tuple(self.layout(r) for r in node.refs)
        g = GradLowering(node, ins, self.layout(node.name), self.grad_layout(node.name),
                         tuple(self.grad_layout(i) for i in node.inputs),
                         self.weight_grads_wanted, self.n, self.target, refs=refs)
        calls = BACKWARD[node.op](g)
        layouts = {**self.layouts, grad_name(node.name): g.d_out}
        raw = {}
        for i, d_in in enumerate(g.d_ins):
            buffer = np.zeros(d_in.size(self.n), np.float32)
            d_in.interior(buffer, self.n)[...] = GARBAGE
            raw[g.grad_input(i).name] = buffer
        layouts.update(g.temps)
        out = run_calls(calls, layouts, {**self.acts, grad_name(node.name): self.grads[node.name]},
                        self.ref.weights, self.n, self.target, self.cache, flat=raw)
        for i, (name, d_in) in enumerate(zip(node.inputs, g.d_ins)):
            buffer = out[g.grad_input(i).name].astype(np.float32)
            check_written(buffer, d_in, self.n, f"{node.name}:grad_in{i}")
            dx = d_in.to_nchw(buffer, self.n).astype(np.float64).reshape(
                self.n, *self.graph.type_of(name).shape)
            self.grads[name] = self.grads[name] + dx if name in self.grads else dx
        for key, value in out.items():
            if isinstance(key, ParamGrad):
                self.weight_grads.setdefault(key.layer, {})[key.param] = value

    def check(self, masks=None, layers=None, rtol=1e-4, atol=2e-5):
        """Compare every activation (or ``layers``), the input's gradient and every
        parameter gradient with the reference; returns the reference forward pass."""
        fwd = self.ref.forward(self.x, train=True, masks=masks)
        for name in layers or [node.name for node in self.graph.nodes]:
            ref = fwd.activations[name]
            np.testing.assert_allclose(self.acts[name], ref, **rtol_atol(ref, rtol, atol),
                                       err_msg=f"forward {name}")
        grads = self.ref.backward(fwd, self.dy)
        if self.graph.input_name in self.grads:
            np.testing.assert_allclose(self.grads[self.graph.input_name], grads.input,
                                       **rtol_atol(grads.input, rtol, atol), err_msg="dx")
        for layer, params in grads.weights.items():
            for param, ref in params.items():
                np.testing.assert_allclose(self.weight_grads[layer][param], ref,
                                           **rtol_atol(ref, rtol, atol),
                                           err_msg=f"d{layer}/{param}")
        return fwd


def check_written(buffer, layout: Blocked, n: int, name: str):
    """A gradient buffer after its kernel: halo zero, every value finite, and every real
    channel of the interior overwritten (none still holds exactly GARBAGE)."""
    view = layout.view(buffer, n)
    top, bottom, left, right = layout.halo
    assert np.isfinite(view).all(), f"{name}: non-finite values (pad lanes included)"
    for part in (view[:, :, :top], view[:, :, layout.rows - bottom:],
                 view[:, :, :, :left], view[:, :, :, layout.cols - right:]):
        assert not part.any(), f"{name}: halo {layout.halo} was written"
    assert not (layout.to_nchw(buffer, n) == GARBAGE).any(), f"{name}: interior not overwritten"


def single(op, shape, **attrs):
    b = Builder(f"t_{op}", shape)
    b.layer(op, "y", **attrs)
    return b.spec()


# (id, spec, batch): real layers (LeNet, ResNet stem, VGG) and odd ones
POOL_CASES = [
    ("max2x2_lenet", single("maxpool2d", (6, 28, 28), size=2), 3),
    ("max3s2_pad1_resnet_c64", single("maxpool2d", (64, 9, 11), size=3, stride=2, padding=1), 2),
    ("max3s2_ceil_c17", single("maxpool2d", (17, 7, 7), size=3, stride=2, ceil_mode=True), 3),
    ("max3s1_pad2_c3", single("maxpool2d", (3, 9, 11), size=3, stride=1, padding=2), 1),
    ("max_rect_asym_c1", single("maxpool2d", (1, 7, 9), size=[2, 3], stride=[1, 2],
                                padding=[[1, 0], [0, 2]]), 8),
    ("max1d_3s2_len40", single("maxpool1d", (6, 40), size=3, stride=2), 3),
    ("max1d_2_pad1_c17", single("maxpool1d", (17, 40), size=2, padding=1), 1),
    ("avg2x2_c6", single("avgpool2d", (6, 28, 28), size=2), 3),
    ("avg3s2_pad1_include_c17", single("avgpool2d", (17, 9, 11), size=3, stride=2, padding=1), 3),
    ("avg3s2_pad1_exclude_ceil_c3", single("avgpool2d", (3, 7, 7), size=3, stride=2, padding=1,
                                           ceil_mode=True, count_include_pad=False), 8),
    ("avg3s2_include_ceil_c1", single("avgpool2d", (1, 9, 11), size=3, stride=2, padding=1,
                                      ceil_mode=True), 1),
    ("avg_rect_s1_c64", single("avgpool2d", (64, 7, 7), size=[3, 2], stride=1,
                               padding=[[2, 0], [1, 1]]), 2),
    ("avg1d_5s3_pad2_exclude", single("avgpool1d", (6, 40), size=5, stride=3, padding=2,
                                      count_include_pad=False), 3),
    ("avg1d_same_c17", single("avgpool1d", (17, 40), size=2, stride=1, padding="same"), 1),
    ("global_avg_c64", single("global_avgpool", (64, 7, 7)), 3),
    ("global_avg_keepdims_c17", single("global_avgpool", (17, 9, 11), keepdims=True), 1),
    ("global_avg_1d_c6", single("global_avgpool", (6, 40)), 8),
    ("global_max_c17", single("global_maxpool", (17, 9, 11)), 3),
    ("global_max_keepdims_c3", single("global_maxpool", (3, 7, 7), keepdims=True), 8),
    ("global_max_1d_keepdims_c64", single("global_maxpool", (64, 40), keepdims=True), 1),
    ("unpool_2x2_c6", unpool((6, 28, 28), size=2), 3),
    ("unpool_3s2_pad1_c17", unpool((17, 9, 11), size=3, stride=2, padding=1), 1),
    ("unpool_3s2_ceil_c3", unpool((3, 7, 7), size=3, stride=2, ceil_mode=True), 8),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: c[0])
def test_pool_training_step_matches_reference(case, target, kernel_cache):
    _, spec, batch = case
    Step(spec, batch, target, kernel_cache).check()


@pytest.mark.parametrize("target", TARGETS)
def test_max_pool_switches_are_written_in_training_without_return_switches(target, kernel_cache):
    """The training forward keeps switches (the reference's argmax) whether or not a
    max_unpool reads them; global max keeps its argmax."""
    for op, attrs in (("maxpool2d", dict(size=3, stride=2, padding=1)), ("global_maxpool", {})):
        step = Step(single(op, (17, 9, 11), **attrs), 3, target, kernel_cache)
        fwd = step.ref.forward(step.x, train=True)
        switches = step.acts["y:switches"].reshape(fwd.context.saved["y"].shape)
        assert np.array_equal(switches, fwd.context.saved["y"]), op


@pytest.mark.parametrize("target", TARGETS)
def test_max_pool_ties_go_to_the_first_maximum_as_in_the_reference(target, kernel_cache):
    """After a ReLU most windows tie at 0 (and rounding makes more ties): the gradient goes
    to the first maximum in window order (flat order for global max), as the reference's."""
    x = np.maximum(np.round(np.random.default_rng(3).standard_normal((3, 17, 9, 11))), 0)
    for op, attrs in (("maxpool2d", dict(size=3, stride=2, padding=1)), ("global_maxpool", {})):
        Step(single(op, (17, 9, 11), **attrs), 3, target, kernel_cache, x=x).check()


def test_overlapping_max_windows_sharing_an_argmax_add_their_gradients(kernel_cache):
    """Hand-computed: 1x1x5 input [0, 1, 9, 1, 0], size 3 stride 1: every window's
    maximum is the 9, so dx = [0, 0, dy0 + dy1 + dy2, 0, 0]."""
    x = np.array([[[0.0, 1.0, 9.0, 1.0, 0.0]]])
    dy = np.array([[[1.0, 10.0, 100.0]]])
    step = Step(single("maxpool1d", (1, 5), size=3, stride=1), 1, "cpu", kernel_cache,
                x=x, dy=dy)
    np.testing.assert_array_equal(step.grads["input"], [[[0.0, 0.0, 111.0, 0.0, 0.0]]])
    step.check()


def test_avg_pool_gradient_by_hand(kernel_cache):
    """Hand-computed: 1x1x4 input, size 2 stride 2 padding 1, count_include_pad: the three
    windows [pad, x0], [x1, x2], [x3, pad] each divide by 2, so dx = dy/2 spread:
    [dy0/2, dy1/2, dy1/2, dy2/2]; without counting the padding the border windows divide
    by 1: [dy0, dy1/2, dy1/2, dy2]."""
    dy = np.array([[[2.0, 4.0, 6.0]]])
    for include, expect in ((True, [1.0, 2.0, 2.0, 3.0]), (False, [2.0, 2.0, 2.0, 6.0])):
        spec = single("avgpool1d", (1, 4), size=2, stride=2, padding=1,
                      count_include_pad=include)
        step = Step(spec, 1, "cpu", kernel_cache, dy=dy)
        np.testing.assert_allclose(step.grads["input"], [[expect]], rtol=1e-6)
        step.check()


def test_global_max_argmax_past_float32_positions_is_a_spec_error():
    """Training keeps global max's argmax as a float32 position: planes of 2**24 or more
    positions are refused at lowering, with the layer, the limit and the received size."""
    graph = build_graph(single("global_maxpool", (1, 4096, 4096)))
    t = resolve("cpu")
    x = Blocked.of(graph.input, t.vector)
    low = Lowering(graph.nodes[0], (x,), Blocked.of(graph.nodes[0].out, t.vector), 1, t)
    with pytest.raises(SpecError, match=r"'y' \(global_maxpool\).*2\*\*24 = 16777216.*"
                                        r"16777216 positions"):
        TRAIN["global_maxpool"](low)
