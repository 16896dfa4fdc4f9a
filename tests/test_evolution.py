"""The evolution strategy: the population rewrite against the float64 reference, the
population forward against one candidate at a time, the L2 term, and whole runs
(determinism, resume, and the one-at-a-time fallback).
"""
import numpy as np
import pytest

import cnngen
from cnngen import target as targets
from cnngen.codegen.cache import KernelCache
from cnngen.errors import InputError
from cnngen.passes.population import Unsupported, population_graph
from cnngen.runtime import evolution
from cnngen.runtime.evolution import Evolution, PopulationFitness, serial_fitness
from cnngen.runtime.parameters import Parameters
from cnngen.runtime.training import TrainPlan
from cnngen.spec import build_graph
from cnngen.weights import init_weights
from .test_cpu_ops import TARGETS
from .test_training import MLP, NETS, conv, labels_for, net

REWRITTEN = {
    **NETS,
    "residual_bn_depthwise": net("residual_bn_depthwise", (3, 9, 7), [
        conv("c1", 5, 3, padding=1, activation="relu"),
        {"name": "bn1", "op": "batchnorm"},
        conv("c2", 5, 3, padding=1),
        conv("shortcut", 5, 1, inputs=["bn1"]),
        {"name": "res", "op": "add", "inputs": ["c2", "shortcut"], "activation": "relu"},
        conv("dw", 5, 3, groups=5, padding=1, activation="sigmoid"),
        {"name": "gp", "op": "global_avgpool"},
        {"name": "f1", "op": "dense", "units": 7, "activation": "tanh"},
        {"name": "out", "op": "dense", "units": 4}]),
    "mlp_dropout": net("mlp_dropout", (13,), [
        {"name": "f1", "op": "dense", "units": 9, "activation": "relu"},
        {"name": "drop", "op": "dropout", "rate": 0.5},
        {"name": "f2", "op": "dense", "units": 6},
        {"name": "act", "op": "tanh"},
        {"name": "out", "op": "dense", "units": 3}]),
    "grouped": net("grouped", (4, 8, 8), [
        conv("c1", 6, 3, activation="relu"),
        conv("c2", 4, 3, groups=2),
        {"name": "flat", "op": "flatten"},
        {"name": "out", "op": "dense", "units": 3}]),
}

# Both fitness paths run these (no batch norm or dropout: there the one-at-a-time path
# runs in training mode and the population net in inference mode).
COMPARED = {
    "linear_mse_l2": net("linear_mse_l2", (13,), [{"name": "out", "op": "dense", "units": 5}],
                         loss="mse", l2=0.1),
    "cnn_residual": net("cnn_residual", (2, 7, 9), [
        conv("c1", 6, 3, padding=1, activation="relu"),
        {"name": "p1", "op": "maxpool2d", "size": 2},
        conv("c2", 6, 3, padding=1),
        {"name": "res", "op": "add", "inputs": ["c2", "p1"], "activation": "tanh"},
        {"name": "flat", "op": "flatten"},
        {"name": "f1", "op": "dense", "units": 7, "activation": "relu"},
        {"name": "out", "op": "dense", "units": 3}], l2=0.01),
}


def random_candidates(graph, size, rng):
    """``size`` weight sets of ``graph``, biases and batch-norm values random too."""
    candidates = []
    for seed in range(size):
        weights = init_weights(graph, seed)
        for params in weights.values():
            for name, value in params.items():
                if name in ("b", "beta", "running_mean"):
                    params[name] = rng.standard_normal(value.shape)
                elif name in ("gamma", "running_var"):
                    params[name] = rng.uniform(0.5, 2.0, value.shape)
        candidates.append(weights)
    return candidates


@pytest.mark.parametrize("align", [1, 4])
@pytest.mark.parametrize("name", REWRITTEN)
def test_the_population_net_computes_every_candidates_output(name, align):
    graph, size, rng = build_graph(REWRITTEN[name]), 3, np.random.default_rng(1)
    if name == "grouped" and align > 1:
        with pytest.raises(Unsupported, match="grouped"):
            population_graph(graph, size, align)
        return
    pop = population_graph(graph, size, align)
    candidates = random_candidates(graph, size, rng)
    weights = {}
    for layer, param in pop.slots:
        stacked = np.stack([c[layer][param] for c in candidates])
        weights.setdefault(layer, {})[param] = pop.lay_out(layer, param, stacked)
    x = rng.standard_normal((4, *graph.input.shape))
    outs = pop.candidate_outputs(cnngen.ReferenceExecutor(pop.graph, weights).forward(x).out)
    for p, weights_p in enumerate(candidates):
        expected = cnngen.ReferenceExecutor(graph, weights_p).forward(x).out
        np.testing.assert_allclose(outs[p], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", ["residual_bn_depthwise", "mlp_dropout"])
def test_the_compiled_population_net_matches_the_reference(name, target, kernel_cache):
    graph, size, rng = build_graph(REWRITTEN[name]), 3, np.random.default_rng(4)
    t = targets.resolve(target)
    pop = population_graph(graph, size, t.vector)
    candidates = random_candidates(graph, size, rng)
    weights = {}
    for layer, param in pop.slots:
        stacked = np.stack([c[layer][param] for c in candidates])
        weights.setdefault(layer, {})[param] = pop.lay_out(layer, param, stacked)
    x = rng.standard_normal((5, *graph.input.shape)).astype(np.float32)
    outs = pop.candidate_outputs(cnngen.compile(pop.graph, weights, t, kernel_cache)(x))
    for p, weights_p in enumerate(candidates):
        expected = cnngen.ReferenceExecutor(graph, weights_p).forward(x.astype(np.float64)).out
        np.testing.assert_allclose(outs[p], expected, rtol=1e-4, atol=1e-4)


def test_a_dense_reading_a_flattened_map_becomes_a_grouped_conv_over_the_plane():
    pop = population_graph(build_graph(NETS["cnn_odd"]), 4, align=8)
    out = pop.graph.node("out")
    assert out.op == "conv2d" and out.attrs["groups"] == 4
    assert out.in_types[0].shape == (4 * 24, 3, 2)           # c2's 17 channels padded to 24
    assert out.params["w"] == (4 * 8, 24, 3, 2)               # 5 units padded to 8
    assert pop.graph.node("c1").attrs["groups"] == 1          # reads the shared input
    assert pop.graph.node("c2").attrs["groups"] == 4
    assert "flat" not in [n.name for n in pop.graph.nodes]


@pytest.mark.parametrize("layers, culprit", [
    ([conv("a", 4, 3), conv("b", 4, 3, inputs=["input"]),
      {"name": "cat", "op": "concat", "inputs": ["a", "b"]}], r"'cat' \(concat\)"),
    ([{"name": "f", "op": "dense", "units": 4}, {"name": "sm", "op": "softmax"}],
     r"'sm' \(softmax\)"),
    ([conv("dw", 3, 3, groups=3)], r"'dw' \(conv2d\) reads the shared input with groups=3"),
])
def test_layers_without_a_population_rewrite_are_named(layers, culprit):
    shape = (4,) if layers[0]["op"] == "dense" else (3, 6, 6)
    graph = build_graph(net("unsupported", shape, layers, loss="mse"))
    with pytest.raises(Unsupported, match=culprit):
        population_graph(graph, 2)


def reference_losses(graph, params, candidates, x, y):
    """Each candidate's loss with its L2 term, by the float64 reference executor."""
    values = []
    for candidate in candidates:
        params.flat[:params.size] = candidate
        ref = cnngen.ReferenceExecutor(graph, params.weights())
        values.append(ref.loss(ref.forward(x.astype(np.float64)).out, y)[0])
    return np.array(values)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", COMPARED)
def test_both_fitness_paths_give_the_reference_losses(name, target, kernel_cache):
    graph, size, batch, rng = build_graph(COMPARED[name]), 6, 5, np.random.default_rng(2)
    t = targets.resolve(target)
    params = Parameters(graph, init_weights(graph, 0))
    plan = TrainPlan(graph, batch, t, params, {n.name for n in graph.nodes})
    plan.compile(KernelCache(kernel_cache))
    population = PopulationFitness(population_graph(graph, size, t.vector), params, t,
                                   kernel_cache)
    es = Evolution(params.size, seed=0, n_decayed=params.n_decayed, l2=graph.loss.l2,
                   population=size)
    centre = params.flat[:params.size].copy()
    candidates = (centre + 0.3 * rng.standard_normal((size, params.size))).astype(np.float32)
    x = rng.standard_normal((batch, *graph.input.shape)).astype(np.float32)
    y = labels_for(graph, batch, rng)
    y = y.astype(np.float32) if graph.loss.op == "mse" else y
    together = population(candidates, x, y) + es.penalty(candidates)
    one_by_one = serial_fitness(plan, params, x, y)(candidates) + es.penalty(candidates)
    expected = reference_losses(graph, params, candidates, x, y)
    np.testing.assert_allclose(together, one_by_one, rtol=1e-5)
    np.testing.assert_allclose(together, expected, rtol=2e-5)
    np.testing.assert_allclose(one_by_one, expected, rtol=2e-5)


def test_the_l2_term_is_the_specs_on_the_decayed_parameters_only():
    graph = build_graph(COMPARED["cnn_residual"])
    params = Parameters(graph, init_weights(graph, 3))
    es = Evolution(params.size, n_decayed=params.n_decayed, l2=0.01)
    ref = cnngen.ReferenceExecutor(graph, params.weights())
    expected = 0.5 * 0.01 * sum(float(np.sum(w * w)) for w in ref.decayed())
    assert es.penalty(params.flat[None, :params.size])[0] == pytest.approx(expected, rel=1e-6)
    assert Evolution(params.size, n_decayed=params.n_decayed).penalty(params.flat[None]) == 0.0


def test_with_a_flat_loss_the_l2_term_alone_shrinks_the_weights():
    n, n_decayed = 40, 30
    theta = np.ones(n + 1, np.float32)
    es = Evolution(n, lr=0.05, seed=1, n_decayed=n_decayed, l2=1.0, population=20)
    for _ in range(60):
        es.generation(theta, lambda candidates: np.zeros(len(candidates)))
    assert np.abs(theta[:n_decayed]).max() < 0.2            # decayed: pulled to zero
    assert np.abs(theta[n_decayed:n] - 1).mean() < 0.3       # the rest: only the noise moves it


def test_the_evolution_strategy_learns_the_digits_without_gradients(kernel_cache):
    tiny = net("tiny", (64,), [{"name": "out", "op": "dense", "units": 10}])
    trainer = cnngen.Trainer(tiny, optimizer="evolution", lr=0.05, batch_size=256,
                             cache_dir=kernel_cache, population=40, sigma=0.05)
    history = trainer.fit("digits", epochs=40, progress=False)
    assert trainer.population is not None
    assert history[-1]["val_accuracy"] >= 0.8, history[-1]


def test_evolution_refuses_options_it_does_not_take(kernel_cache):
    with pytest.raises(InputError, match="evolution: unknown option 'schedule'"):
        cnngen.Trainer(MLP, optimizer="evolution", schedule="cosine", cache_dir=kernel_cache)


LINEAR = net("linear", (64,), [{"name": "out", "op": "dense", "units": 10}], l2=1e-3)


def evolve(steps, cache, **kw):
    trainer = cnngen.Trainer(LINEAR, optimizer="evolution", lr=0.05, batch_size=64, seed=5,
                             cache_dir=cache, population=8, sigma=0.05, **kw)
    trainer.fit("digits", steps=steps, progress=False)
    return trainer


def test_the_population_path_runs_and_is_deterministic_under_the_seed(kernel_cache):
    first, second = evolve(4, kernel_cache), evolve(4, kernel_cache)
    assert first.population is not None
    assert np.array_equal(first.params.flat, second.params.flat)
    assert not np.array_equal(first.params.flat, cnngen.Trainer(
        LINEAR, optimizer="evolution", seed=5, cache_dir=kernel_cache).params.flat)


def test_a_resumed_evolution_ends_with_the_same_weights(kernel_cache, tmp_path):
    straight = evolve(6, kernel_cache)
    first = evolve(3, kernel_cache)
    first.save(tmp_path / "es.ckpt")
    resumed = cnngen.Trainer.resume(tmp_path / "es.ckpt", cache_dir=kernel_cache)
    resumed.fit("digits", steps=6, progress=False)
    assert np.array_equal(straight.params.flat, resumed.params.flat)


def test_a_population_too_large_or_a_net_without_a_rewrite_goes_one_at_a_time(kernel_cache,
                                                                               monkeypatch):
    trainer = cnngen.Trainer(LINEAR, optimizer="evolution", cache_dir=kernel_cache,
                             population=4)
    assert trainer.population.fits(256)
    # float32: one sample's 64 inputs and 4x10 outputs, and the 4x10x64 + 4x10 weights
    monkeypatch.setattr(evolution, "POPULATION_BYTES", 4 * ((64 + 40) + (40 * 64 + 40)))
    assert trainer.population.fits(1) and not trainer.population.fits(2)
    unsupported = net("softmax_out", (4,), [{"name": "f", "op": "dense", "units": 3},
                                            {"name": "sm", "op": "softmax"}], loss="mse")
    assert cnngen.Trainer(unsupported, optimizer="evolution",
                          cache_dir=kernel_cache).population is None
    no_loss = {k: v for k, v in LINEAR.items() if k != "loss"}
    assert cnngen.Trainer(no_loss, optimizer="evolution",
                          cache_dir=kernel_cache).population is None
    # batch norm and dropout train in training mode, which the population net does not run
    for name in ("residual_bn_depthwise", "mlp_dropout"):
        assert cnngen.Trainer(REWRITTEN[name], optimizer="evolution",
                              cache_dir=kernel_cache).population is None


def test_both_paths_take_the_same_first_generation(kernel_cache, monkeypatch):
    together = evolve(1, kernel_cache)
    monkeypatch.setattr(evolution, "POPULATION_BYTES", 0)
    one_by_one = evolve(1, kernel_cache)
    np.testing.assert_allclose(together.params.flat, one_by_one.params.flat, atol=1e-6)
