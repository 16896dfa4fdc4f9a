"""Gradient-free training: a population-based evolution strategy over a net's weights.

Each generation draws ``population / 2`` Gaussian directions ``e_i`` and evaluates the
mirrored pairs ``theta +- sigma * e_i`` (antithetic sampling halves the estimate's
variance) by the compiled forward pass and loss on the mini-batch. The losses are replaced
by their centred ranks (fitness shaping: the step does not depend on the loss's scale,
and one outlier cannot dominate), which give the search-gradient estimate

    g = sum_i (u(theta + sigma e_i) - u(theta - sigma e_i)) e_i / (population * sigma)

and Adam takes the step from ``g``, as in Salimans et al., "Evolution strategies as a
scalable alternative to reinforcement learning" (2017). No backward pass runs: the
fitness is all it reads, so it also trains nets whose layers have no gradient kernels.

The fitness is the spec's objective, the batch's loss plus ``0.5 * l2 * sum(w**2)`` over
the decayed parameters (every ``w``: ``Parameters`` puts them first), so evolution and the
gradient optimizers minimise the same function.

Where the net allows it (``passes.population``), the whole population is evaluated by one
forward of a population net, compiled once, whose weights are refilled each generation:
every layer computes all candidates side by side on the same batch. That net runs the
inference plan, so nets with batch norm or dropout (whose training mode differs:
``TRAINING_MODE``), other nets the rewrite cannot express, and populations whose net would
pass POPULATION_BYTES are evaluated one candidate at a time on the training plan's
forward.
"""
from __future__ import annotations

import json
from typing import Callable

import numpy as np

from ..errors import InputError
from ..ir import Graph
from ..passes.population import Population, Unsupported, population_graph
from ..target import Target
from .compiled import CompiledNet
from .parameters import Parameters
from .training import TrainPlan

# The most bytes a population net's activations and weights may take. Beyond a few
# hundred MiB a generation is bound by memory traffic rather than by the per-candidate
# kernel launches and weight packing that one population forward saves, and a run should
# not claim memory that evaluating one candidate at a time never needed.
POPULATION_BYTES = 256 << 20
# Below this, exp(x) (< 5e-18) is lost when added to the 1 that the largest logit
# contributes to a softmax's denominator; numpy's exp is ten times slower where it underflows.
EXP_FLOOR = -40.0


def centred_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks of ``values`` scaled to [-0.5, 0.5]; the lowest value gets -0.5."""
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    return ranks / max(len(values) - 1, 1) - 0.5


class Evolution:
    """The evolution strategy as an optimizer of a flat parameter vector."""

    name = "evolution"

    options = ("population", "sigma", "betas", "eps")

    def __init__(self, n_params: int, lr: float = 0.05, seed: int = 0, n_decayed: int = 0,
                 l2: float = 0.0, **options):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise InputError(f"evolution: unknown option {unknown[0]!r}; expected one of "
                             f"{', '.join(self.options)} (it takes no learning-rate schedule; "
                             f"the spec's loss.l2 sets the weight decay).")
        population, sigma = options.get("population", 50), options.get("sigma", 0.05)
        betas, eps = options.get("betas", (0.9, 0.999)), options.get("eps", 1e-8)
        if isinstance(population, bool) or not isinstance(population, int) or population < 2 \
                or population % 2:
            raise InputError(f"population: expected an even integer >= 2 (mirrored pairs); "
                             f"received {population!r}.")
        if not (isinstance(sigma, (int, float)) and sigma > 0):
            raise InputError(f"sigma: expected a positive number; received {sigma!r}.")
        self.n, self.lr, self.population, self.sigma = n_params, lr, population, float(sigma)
        self.n_decayed, self.l2 = n_decayed, float(l2)
        self.betas, self.eps = betas, eps
        self.rng = np.random.default_rng(seed)
        self.m = np.zeros(n_params)
        self.v = np.zeros(n_params)
        self.t = 0

    def generation(self, theta: np.ndarray,
                   fitness: Callable[[np.ndarray], np.ndarray]) -> float:
        """One generation: ``fitness(candidates)`` returns the batch loss of each row of the
        float32 ``(population, n)`` candidates, and ``theta[:n]`` (float32, in place) moves
        to the new centre. Returns the population's mean batch loss (without the L2 term,
        as a training step reports it)."""
        centre = theta[:self.n].astype(np.float64)
        directions = self.rng.standard_normal((self.population // 2, self.n))
        candidates = np.empty((self.population, self.n), np.float32)
        candidates[0::2] = centre + self.sigma * directions
        candidates[1::2] = centre - self.sigma * directions
        losses = np.asarray(fitness(candidates), np.float64)
        if not np.isfinite(losses).all():
            theta[:self.n] = centre
            return float("nan")
        utility = centred_ranks(losses + self.penalty(candidates))
        grad = (utility[0::2] - utility[1::2]) @ directions / (self.population * self.sigma)
        self.t += 1
        b1, b2 = self.betas
        self.m = b1 * self.m + (1 - b1) * grad
        self.v = b2 * self.v + (1 - b2) * grad * grad
        step = self.lr * (self.m / (1 - b1 ** self.t)) / (np.sqrt(self.v / (1 - b2 ** self.t)) + self.eps)
        theta[:self.n] = centre - step
        return float(losses.mean())

    def penalty(self, candidates: np.ndarray) -> np.ndarray | float:
        """``0.5 * l2 * sum(w**2)`` of each candidate's decayed parameters."""
        if not self.l2:
            return 0.0
        decayed = candidates[:, :self.n_decayed]
        return 0.5 * self.l2 * np.einsum("ij,ij->i", decayed, decayed, dtype=np.float64)

    def state(self) -> dict:
        return {"m": self.m, "v": self.v, "t": np.array(self.t),
                "rng": np.frombuffer(json.dumps(self.rng.bit_generator.state).encode(), np.uint8)}

    def load_state(self, state: dict) -> None:
        self.m = np.asarray(state["m"], np.float64).copy()
        self.v = np.asarray(state["v"], np.float64).copy()
        self.t = int(state["t"])
        self.rng.bit_generator.state = json.loads(bytes(state["rng"]).decode())


def candidate_losses(loss: str, outs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each candidate's mean batch loss from its outputs ``outs`` (population, N, K, ...),
    as ``ops.loss`` defines it: MSE over every element, or softmax cross-entropy of the
    integer labels ``y`` (N, ...) over the class axis, averaged over samples and positions."""
    if loss == "mse":
        diff = outs.astype(np.float64) - y
        return np.mean(diff * diff, axis=tuple(range(1, outs.ndim)))
    # (classes, population, samples x positions): the class reductions combine whole
    # contiguous slabs (numpy reduces a short inner axis slowly); in place from here on
    logits = np.ascontiguousarray(np.moveaxis(outs, 2, 0), np.float64).reshape(
        outs.shape[2], len(outs), y.size)
    logits -= logits.max(axis=0)
    at_label = logits[y.reshape(-1), :, np.arange(y.size)].T      # (population, positions)
    # exp underflows slowly: terms below exp(EXP_FLOOR) do not change the sum (>= 1)
    np.exp(np.maximum(logits, EXP_FLOOR, out=logits), out=logits)
    return np.mean(np.log(logits.sum(axis=0)) - at_label, axis=1)


class PopulationFitness:
    """Every candidate's batch loss from one forward of the population net (compiled on the
    first batch of each size; each call only repacks its weights)."""

    def __init__(self, population: Population, params: Parameters, target: Target,
                 cache_dir=None):
        self.population, self.params = population, params
        self.target, self.cache_dir = target, cache_dir
        self.loss = population.graph.loss.op
        self.net: CompiledNet | None = None

    def weights(self, candidates: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        """The population net's weights: each candidate's trainable parameters from its row
        of ``candidates``, the frozen ones and the batch-norm statistics shared by all."""
        weights: dict[str, dict[str, np.ndarray]] = {}
        for (layer, param), slot in self.population.slots.items():
            offset = self.params.offset(layer, param)
            values = (self.params.fixed[layer][param] if offset is None
                      else candidates[:, offset:offset + int(np.prod(slot.shape))])
            weights.setdefault(layer, {})[param] = self.population.lay_out(layer, param, values)
        return weights

    def fits(self, n_batch: int) -> bool:
        """Whether the population net's activations for ``n_batch`` samples and its weights
        stay within POPULATION_BYTES."""
        graph = self.population.graph
        activations = n_batch * (graph.input.size + sum(n.out.size for n in graph.nodes))
        return 4 * (activations + graph.n_params) <= POPULATION_BYTES

    def __call__(self, candidates: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        weights = self.weights(candidates)
        if self.net is None:
            self.net = CompiledNet(self.population.graph, weights, self.target, self.cache_dir)
        plan = self.net.plan(len(x))
        plan.update_weights(weights)
        plan.run(x)
        outs = self.population.candidate_outputs(plan.output())
        return candidate_losses(self.loss, outs, y)


# Ops whose training-mode forward differs from the population net's inference forward.
TRAINING_MODE = ("batchnorm", "dropout")


def population_fitness(graph: Graph, params: Parameters, size: int, target: Target,
                       cache_dir=None) -> PopulationFitness | None:
    """The population evaluator of ``graph``, or None where the rewrite does not apply or
    the population's weights alone would pass POPULATION_BYTES (and for a net without a
    loss, which the training plan refuses with its own message). A net with batch norm or
    dropout evaluates one candidate at a time: the population net runs in inference mode,
    and its fitness must be the training-mode loss (batch statistics, dropout masks) the
    one-at-a-time path and the gradient optimizers see, whatever the batch size."""
    if graph.loss is None or any(n.op in TRAINING_MODE for n in graph.nodes):
        return None
    try:
        population = population_graph(graph, size, target.vector)
    except Unsupported:
        return None
    if 4 * population.graph.n_params > POPULATION_BYTES:
        return None
    return PopulationFitness(population, params, target, cache_dir)


def serial_fitness(plan: TrainPlan, params: Parameters, x: np.ndarray,
                   y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Fitness that sets the parameters to each candidate in turn and runs the training
    plan's forward and loss on ``(x, y)``."""
    def losses(candidates: np.ndarray) -> np.ndarray:
        values = np.empty(len(candidates))
        for i, candidate in enumerate(candidates):
            params.flat[:params.size] = candidate
            plan.repack()
            plan.run(x, y, backward=False)
            values[i] = plan.loss()
        return values
    return losses


def batch_fitness(population: PopulationFitness | None, plan: TrainPlan, params: Parameters,
                  x: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The fitness of a generation on the batch ``(x, y)``: one population forward where
    the net has one and it fits, else one candidate at a time."""
    if population is not None and population.fits(len(x)):
        return lambda candidates: population(candidates, x, y)
    return serial_fitness(plan, params, x, y)
