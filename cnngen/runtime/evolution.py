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
"""
from __future__ import annotations

import json
from typing import Callable

import numpy as np

from ..errors import InputError


def centred_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks of ``values`` scaled to [-0.5, 0.5]; the lowest value gets -0.5."""
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    return ranks / max(len(values) - 1, 1) - 0.5


class Evolution:
    """The evolution strategy as an optimizer of a flat parameter vector."""

    name = "evolution"

    options = ("population", "sigma", "betas", "eps")

    def __init__(self, n_params: int, lr: float = 0.05, seed: int = 0, **options):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise InputError(f"evolution: unknown option {unknown[0]!r}; expected one of "
                             f"{', '.join(self.options)} (it takes no learning-rate schedule "
                             f"and no weight decay).")
        population, sigma = options.get("population", 50), options.get("sigma", 0.05)
        betas, eps = options.get("betas", (0.9, 0.999)), options.get("eps", 1e-8)
        if isinstance(population, bool) or not isinstance(population, int) or population < 2 \
                or population % 2:
            raise InputError(f"population: expected an even integer >= 2 (mirrored pairs); "
                             f"received {population!r}.")
        if not (isinstance(sigma, (int, float)) and sigma > 0):
            raise InputError(f"sigma: expected a positive number; received {sigma!r}.")
        self.n, self.lr, self.population, self.sigma = n_params, lr, population, float(sigma)
        self.betas, self.eps = betas, eps
        self.rng = np.random.default_rng(seed)
        self.m = np.zeros(n_params)
        self.v = np.zeros(n_params)
        self.t = 0

    def generation(self, theta: np.ndarray, evaluate: Callable[[], float]) -> float:
        """One generation: ``theta`` (float32, updated in place) is set to each candidate
        in turn and ``evaluate()`` returns its loss; returns the mean loss of the
        population."""
        centre = theta[:self.n].astype(np.float64)
        directions = self.rng.standard_normal((self.population // 2, self.n))
        losses = np.empty(self.population)
        for i, e in enumerate(directions):
            for sign, slot in ((1.0, 2 * i), (-1.0, 2 * i + 1)):
                theta[:self.n] = centre + sign * self.sigma * e
                losses[slot] = evaluate()
        if not np.isfinite(losses).all():
            theta[:self.n] = centre
            return float("nan")
        utility = centred_ranks(losses)
        grad = (utility[0::2] - utility[1::2]) @ directions / (self.population * self.sigma)
        self.t += 1
        b1, b2 = self.betas
        self.m = b1 * self.m + (1 - b1) * grad
        self.v = b2 * self.v + (1 - b2) * grad * grad
        step = self.lr * (self.m / (1 - b1 ** self.t)) / (np.sqrt(self.v / (1 - b2 ** self.t)) + self.eps)
        theta[:self.n] = centre - step
        return float(losses.mean())

    def state(self) -> dict:
        return {"m": self.m, "v": self.v, "t": np.array(self.t),
                "rng": np.frombuffer(json.dumps(self.rng.bit_generator.state).encode(), np.uint8)}

    def load_state(self, state: dict) -> None:
        self.m = np.asarray(state["m"], np.float64).copy()
        self.v = np.asarray(state["v"], np.float64).copy()
        self.t = int(state["t"])
        self.rng.bit_generator.state = json.loads(bytes(state["rng"]).decode())
