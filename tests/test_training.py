"""Training plans against the float64 reference: loss and every gradient of whole networks.

A TrainPlan runs forward in training mode, the loss and the backward on generated kernels;
the reference executor does the same in float64 with the same weights (and the same
dropout masks). Both SIMD widths.
"""
import numpy as np
import pytest

import cnngen
from cnngen import target as targets
from cnngen.codegen.cache import KernelCache
from cnngen.errors import InputError
from cnngen.passes.autodiff import differentiate
from cnngen.passes.training import for_training
from cnngen.runtime.parameters import Parameters
from cnngen.runtime.training import TrainPlan
from cnngen.spec import build_graph
from .test_cpu_ops import TARGETS


def net(name, shape, layers, loss="softmax_cross_entropy", l2=0.0):
    return {"cnngen": 1, "name": name, "input": {"shape": list(shape)}, "layers": layers,
            "loss": {"op": loss, "l2": l2}}


def conv(name, filters, kernel, **kw):
    return {"name": name, "op": kw.pop("op", "conv2d"), "filters": filters, "kernel": kernel, **kw}


NETS = {
    "softmax_regression": net("softmax_regression", (33,), [
        {"name": "out", "op": "dense", "units": 10}], l2=1e-3),
    "mlp_mse": net("mlp_mse", (17,), [
        {"name": "f1", "op": "dense", "units": 20},
        {"name": "out", "op": "dense", "units": 3}], loss="mse"),
    "lenet5": cnngen.zoo.lenet5(),
    "mnist1d_cnn": cnngen.zoo.mnist1d_cnn(),
    "cnn_odd": net("cnn_odd", (3, 11, 9), [
        conv("c1", 6, 3, padding=1, activation="relu"),
        {"name": "p1", "op": "maxpool2d", "size": 2},
        conv("c2", 17, 3, stride=2, padding="same", activation="tanh"),
        {"name": "flat", "op": "flatten"},
        {"name": "out", "op": "dense", "units": 5}], l2=1e-2),
    "conv1d_regression": net("conv1d_regression", (2, 23), [
        conv("c1", 8, 5, op="conv1d", padding=2, activation="relu"),
        conv("c2", 4, 3, op="conv1d", stride=2, dilation=2, activation="leaky_relu"),
        {"name": "flat", "op": "flatten"},
        {"name": "out", "op": "dense", "units": 2}], loss="mse"),
    # batch norm blocks that training fuses (passes.training): bn+relu+pool with overlapping
    # padded windows, bn+leaky_relu, bn+pool, bn+sigmoid; gammas of both signs (run_both);
    # bias-free convs, as a bias before a batch norm has a gradient of exactly 0
    "bn_blocks": net("bn_blocks", (3, 13, 11), [
        conv("c1", 6, 3, padding=1, bias=False),
        {"name": "bn1", "op": "batchnorm"},
        {"name": "r1", "op": "relu"},
        {"name": "p1", "op": "maxpool2d", "size": 3, "stride": 2, "padding": 1},
        conv("c2", 5, 3, padding=1, bias=False),
        {"name": "bn2", "op": "batchnorm"},
        {"name": "a2", "op": "leaky_relu", "alpha": 0.1},
        conv("c3", 4, 1, bias=False),
        {"name": "bn3", "op": "batchnorm"},
        {"name": "p3", "op": "maxpool2d", "size": 2},
        conv("c4", 19, 3, padding=1, bias=False),
        {"name": "bn4", "op": "batchnorm"},
        {"name": "s4", "op": "sigmoid"},
        {"name": "flat", "op": "flatten"},
        {"name": "out", "op": "dense", "units": 5}], l2=1e-3),
    "bn_blocks_1d": net("bn_blocks_1d", (2, 29), [
        conv("c1", 7, 3, op="conv1d", bias=False),
        {"name": "bn1", "op": "batchnorm"},
        {"name": "t1", "op": "tanh"},
        {"name": "p1", "op": "maxpool1d", "size": 2},
        {"name": "flat", "op": "flatten"},
        {"name": "out", "op": "dense", "units": 3}], loss="mse"),
}


def labels_for(graph, batch, rng):
    if graph.loss.op == "mse":
        return rng.standard_normal((batch, *graph.output.out.shape))
    return rng.integers(0, graph.output.out.channels, size=batch)


def run_both(spec, batch, target, cache_dir, frozen=frozenset(), seed=0):
    graph = build_graph(spec)
    rng = np.random.default_rng(seed)
    ref = cnngen.ReferenceExecutor(spec, seed=seed)
    for node in graph.nodes:
        if node.op == "batchnorm":      # normalise with gammas of both signs
            channels = node.out.channels
            ref.weights[node.name]["gamma"][...] = rng.uniform(0.5, 1.5, channels) * np.where(
                np.arange(channels) % 3 == 1, -1.0, 1.0)
            ref.weights[node.name]["beta"][...] = rng.uniform(-0.5, 0.5, channels)
    params = Parameters(graph, ref.weights, frozen)
    t = targets.resolve(target)
    plan = TrainPlan(graph, batch, t, params, frozen)
    plan.compile(KernelCache(cache_dir))
    x = rng.standard_normal((batch, *graph.input.shape)).astype(np.float32)
    y = labels_for(graph, batch, rng)
    plan.run(x, y)
    expected_loss, grads, _ = ref.loss_and_grads(x.astype(np.float64), y)
    return graph, ref, params, plan, expected_loss, grads


def l2_term(ref):
    return 0.5 * ref.graph.loss.l2 * sum(float(np.sum(w * w)) for w in ref.decayed())


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", NETS)
def test_loss_and_every_gradient_match_the_reference(name, target, kernel_cache):
    assert_loss_and_gradients_match(name, *run_both(NETS[name], 3, target, kernel_cache))


def assert_loss_and_gradients_match(name, graph, ref, params, plan, expected, grads):
    """The plan's loss (without L2) and every parameter gradient (with it) against the
    reference's."""
    assert plan.loss() == pytest.approx(expected - l2_term(ref), rel=1e-5, abs=1e-6)
    l2 = graph.loss.l2
    for layer, ps in params.grad_views.items():
        for p, got in ps.items():
            want = grads.weights[layer][p] - (l2 * ref.weights[layer][p] if p == "w" else 0)
            scale = max(1e-3, float(np.abs(want).max()))
            np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-4,
                                       atol=5e-5 * scale, err_msg=f"{name}: {layer}/{p}")


def test_batch_norm_blocks_fuse_for_training():
    graph = for_training(build_graph(NETS["bn_blocks"]))
    fused = {n.name: [f.name for f in n.fused] for n in graph.nodes if n.fused}
    assert fused == {"p1": ["bn1", "r1", "p1"], "a2": ["bn2", "a2"], "p3": ["bn3", "p3"],
                     "s4": ["bn4", "s4"]}
    assert [n.op for n in graph.nodes if n.name in fused] == ["batchnorm"] * 4


def plan_of(spec, batch=3):
    graph = build_graph(spec)
    params = Parameters(graph, cnngen.ReferenceExecutor(spec, seed=0).weights)
    return TrainPlan(graph, batch, targets.resolve("cpu"), params)


def test_batch_norm_statistics_come_from_the_conv_epilogue():
    plan = plan_of(NETS["bn_blocks"])
    forward = plan.calls[:plan.n_scored]
    assert "batchnorm_stats_train" not in [c.kernel.template for c in forward]
    convs = {c.layer: dict(c.kernel.values) for c in forward if c.kernel.template == "conv2d"}
    assert all(values["stats"] for values in convs.values())
    bands = -(-convs["c1"]["h_out"] // convs["c1"]["rows"])
    finalize = next(c for c in forward if c.kernel.template == "batchnorm_finalize_train")
    assert dict(finalize.kernel.values)["groups"] == bands
    assert plan.layouts["p1:partials"].count == 2 * plan.target.vector * bands   # 6 channels: 1 block


def test_a_batch_norm_after_a_depthwise_conv_computes_its_own_statistics():
    spec = net("dw_bn", (4, 7, 7), [conv("dw", 4, 3, groups=4, bias=False),
                                    {"name": "bn", "op": "batchnorm"},
                                    {"name": "flat", "op": "flatten"},
                                    {"name": "out", "op": "dense", "units": 3}])
    plan = plan_of(spec)
    assert "batchnorm_stats_train" in [c.kernel.template for c in plan.calls]


def test_a_frozen_batch_norm_stays_frozen_inside_its_fused_block(kernel_cache):
    *_, params, plan, _, grads = run_both(NETS["bn_blocks"], 2, "cpu", kernel_cache,
                                          frozen={"bn1", "c1"})
    assert not {"bn1", "c1"} & set(params.grad_views)
    np.testing.assert_allclose(params.grad_views["bn2"]["gamma"], grads.weights["bn2"]["gamma"],
                               rtol=1e-4, atol=1e-6)


def test_the_first_layer_computes_no_input_gradient():
    graph = build_graph(cnngen.zoo.lenet5())
    first = differentiate(graph).steps[-1]
    assert first.node.name == "c1" and first.input_grads == (False,) and first.weight_grads


def test_frozen_layers_compute_no_gradients_and_nothing_below_them(kernel_cache):
    spec = cnngen.zoo.lenet5()
    frozen = {"c1", "c3"}
    backward = differentiate(build_graph(spec), frozen)
    assert [s.node.name for s in backward.steps] == ["out", "f6", "f5"]
    assert backward.steps[-1].input_grads == (False,)
    *_, params, plan, _, grads = run_both(spec, 2, "cpu", kernel_cache, frozen)
    assert set(params.grad_views) == {"f5", "f6", "out"}
    np.testing.assert_allclose(params.grad_views["f5"]["b"], grads.weights["f5"]["b"],
                               rtol=1e-4, atol=1e-6)


def test_a_network_without_a_loss_cannot_train(kernel_cache):
    spec = dict(NETS["softmax_regression"])
    del spec["loss"]
    graph = build_graph(spec)
    with pytest.raises(InputError, match="has no loss"):
        TrainPlan(graph, 2, targets.resolve("cpu"), Parameters(graph, cnngen.init_weights(graph)))


MLP = net("mlp", (64,), [
    {"name": "f1", "op": "dense", "units": 48, "activation": "relu"},
    {"name": "bn", "op": "batchnorm"},
    {"name": "drop", "op": "dropout", "rate": 0.2},
    {"name": "out", "op": "dense", "units": 10}], l2=1e-4)


def test_an_mlp_learns_the_digits(kernel_cache):
    trainer = cnngen.Trainer(MLP, optimizer="adam", lr=1e-2, batch_size=32,
                             cache_dir=kernel_cache)
    history = trainer.fit("digits", epochs=4, progress=False)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert history[-1]["val_accuracy"] >= 0.95, history[-1]
    data = cnngen.load_dataset("digits", input_shape=(64,))
    assert trainer.evaluate(data.x_test, data.y_test)["accuracy"] == history[-1]["val_accuracy"]
    # the running statistics moved, so the inference net (batch norm folded) serves them
    assert not np.allclose(trainer.net.weights["bn"]["running_var"], 1.0)


@pytest.mark.parametrize("batch_size", [1, 48])
def test_point_based_and_full_batch_training_fit_a_line(batch_size, kernel_cache):
    # y = 2x - 1 from 48 points: one sample per step, or the whole set per step
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (64, 1)).astype(np.float32)
    data = {"x_train": x[:48], "y_train": 2 * x[:48] - 1, "x_test": x[48:],
            "y_test": 2 * x[48:] - 1}
    spec = net("line", (1,), [{"name": "out", "op": "dense", "units": 1}], loss="mse")
    trainer = cnngen.Trainer(spec, optimizer="sgd", lr=0.05 if batch_size == 1 else 0.5,
                             batch_size=batch_size, cache_dir=kernel_cache)
    history = trainer.fit(data, epochs=6 if batch_size == 1 else 60, progress=False)
    assert trainer.step_count == (6 * 48 if batch_size == 1 else 60)
    assert history[-1]["val_loss"] < 1e-4
    w = trainer.net.weights["out"]
    assert w["w"].ravel()[0] == pytest.approx(2.0, abs=1e-2)
    assert w["b"][0] == pytest.approx(-1.0, abs=1e-2)


def test_a_resumed_run_ends_with_the_same_weights_bit_for_bit(kernel_cache, tmp_path):
    def trainer():
        return cnngen.Trainer(MLP, optimizer="adam", lr=1e-2, batch_size=32, seed=3,
                              cache_dir=kernel_cache)
    straight = trainer()
    straight.fit("digits", epochs=3, progress=False)
    first = trainer()
    first.fit("digits", epochs=1, progress=False)
    first.save(tmp_path / "run.ckpt")
    resumed = cnngen.Trainer.resume(tmp_path / "run.ckpt", cache_dir=kernel_cache)
    assert (resumed.epoch, resumed.step_count) == (1, first.step_count)
    resumed.fit("digits", epochs=2, progress=False)
    for layer, params in straight.params.weights().items():
        for name, value in params.items():
            assert np.array_equal(value, resumed.params.weights()[layer][name]), f"{layer}/{name}"
    def timeless(history):
        return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")}
                for r in history]
    assert timeless(resumed.history) == timeless(straight.history)


def test_a_diverging_run_stops_naming_the_first_bad_layer(kernel_cache):
    trainer = cnngen.Trainer(MLP, optimizer="sgd", lr=1e30, batch_size=32,
                             cache_dir=kernel_cache)
    with pytest.raises(cnngen.TrainingError, match=r"the first non-finite value is in layer "
                       r"'(f1|bn|drop|out)'") as raised:
        trainer.fit("digits", epochs=2, progress=False)
    assert "lower the learning rate" in str(raised.value)


def test_transfer_learning_loads_by_name_freezes_and_replaces_the_head(kernel_cache):
    source = cnngen.Trainer(MLP, lr=1e-2, batch_size=32, cache_dir=kernel_cache)
    source.fit("digits", epochs=1, progress=False)
    head = dict(MLP, layers=MLP["layers"][:-1] + [{"name": "out", "op": "dense", "units": 5}])
    data = cnngen.load_dataset("digits", input_shape=(64,))
    low = {k: v[data_y < 5] for k, v, data_y in (
        ("x_train", data.x_train, data.y_train), ("y_train", data.y_train, data.y_train),
        ("x_test", data.x_test, data.y_test), ("y_test", data.y_test, data.y_test))}
    tuned = cnngen.Trainer(head, lr=1e-2, batch_size=32, weights=source.net.weights,
                           freeze=["f*", "bn"], cache_dir=kernel_cache)
    report = tuned.transfer_report
    assert report.matched == ("f1", "bn")
    assert report.skipped == (("out", "shape mismatch: w is (10, 48), expected (5, 48); "
                               "b is (10,), expected (5,)"),)
    features = source.net.weights["f1"]["w"].copy()
    history = tuned.fit(low, epochs=2, progress=False)
    assert np.array_equal(tuned.net.weights["f1"]["w"], features)
    assert history[-1]["val_accuracy"] >= 0.9
    with pytest.raises(InputError, match=r"freeze: 'conv\*' matches no layer"):
        cnngen.Trainer(head, freeze=["conv*"], cache_dir=kernel_cache)
    with pytest.raises(InputError, match=r"freeze: out would stay at random initial weights.*"
                       r"shape mismatch: w is \(10, 48\), expected \(5, 48\)"):
        cnngen.Trainer(head, weights=source.net.weights, freeze=["out"], cache_dir=kernel_cache)


def test_targets_that_do_not_fit_the_loss_are_refused_before_the_first_step(kernel_cache):
    trainer = cnngen.Trainer(MLP, cache_dir=kernel_cache)
    data = cnngen.load_dataset("digits", input_shape=(64,))
    floats = {"x_train": data.x_train, "y_train": data.y_train.astype(np.float32),
              "x_test": data.x_test, "y_test": data.y_test.astype(np.float32)}
    with pytest.raises(InputError, match=r"softmax_cross_entropy takes integer class labels; "
                       r"received float32 targets"):
        trainer.fit(floats, epochs=1, progress=False)
    with pytest.raises(InputError, match=r"labels must be in \[0, 10\).*received 0 to 12"):
        trainer.train_step(data.x_train[:4], np.array([0, 1, 2, 12]))
    with pytest.raises(InputError, match="4 samples and 3 targets"):
        trainer.train_step(data.x_train[:4], np.array([0, 1, 2]))
    assert trainer.step_count == 0
    regression = cnngen.Trainer(NETS["mlp_mse"], cache_dir=kernel_cache)
    with pytest.raises(InputError, match=r"mse takes targets of the output's shape \(2, 3\); "
                       r"received \(2,\)"):
        regression.train_step(np.zeros((2, 17), np.float32), np.zeros(2))


def test_a_run_stopped_inside_an_epoch_resumes_where_it_stopped(kernel_cache, tmp_path):
    def trainer():
        return cnngen.Trainer(MLP, lr=1e-2, batch_size=32, seed=4, cache_dir=kernel_cache)
    straight = trainer()
    straight.fit("digits", steps=70, progress=False)
    first = trainer()
    first.fit("digits", steps=30, progress=False)              # 30 of the first epoch's 44
    assert (first.epoch, first.epoch_step) == (0, 30) and first.history[-1]["partial"]
    first.save(tmp_path / "run.ckpt")
    resumed = cnngen.Trainer.resume(tmp_path / "run.ckpt", cache_dir=kernel_cache)
    resumed.fit("digits", steps=70, progress=False)
    assert (resumed.epoch, resumed.epoch_step, resumed.step_count) == (1, 26, 70)
    for layer, params in straight.params.weights().items():
        for name, value in params.items():
            assert np.array_equal(value, resumed.params.weights()[layer][name]), f"{layer}/{name}"
