"""Search a kernel's legal schedule space for the fastest schedule: grid, random or evolutionary.

``search(points, measure)`` proposes batches of schedules drawn from ``points`` (the legal
space, the heuristic's best guess first), hands each batch to ``measure`` and returns the best
result it saw. It knows nothing about kernels: a schedule is a frozen dataclass of integer
knobs, and its type is one more knob (a conv may be a ConvSchedule or a WinogradSchedule).
Proposals depend only on the seed and on the measurements, so a run can be replayed.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, fields, replace
from typing import Callable, Iterator, Mapping, Sequence

from ..schedule import Schedule

STRATEGIES = ("grid", "random", "evolve")

# Evolution. The parents are the best POPULATION results so far, known ones included (elitist);
# the first population is half the heuristic's top points and half random ones. Parents are
# picked by tournaments of TOURNAMENT. A child takes each knob from either parent at
# CROSSOVER_RATE (same type only); a child that is a copy of a measured point always mutates,
# any other one at MUTATION_RATE; a mutation jumps to another type's point at JUMP_RATE.
POPULATION = 8
TOURNAMENT = 3
CROSSOVER_RATE = 0.7
MUTATION_RATE = 0.3
JUMP_RATE = 0.1
# Children tried per batch slot before the slot goes to a random unmeasured point.
CHILD_ATTEMPTS = 8


@dataclass(frozen=True)
class Measurement:
    """One candidate's timing: the median seconds per call and the interquartile range."""

    seconds: float  # median per call
    spread: float   # interquartile range


@dataclass
class SearchResult:
    """What one run found: the best point and its measurement (None when nothing succeeded),
    what this run measured (None marks a failed candidate), why it stopped, and the
    convergence curve as (trials so far including known ones, best seconds so far) after
    each batch, a close call's re-measure included (math.inf while nothing succeeded)."""

    best: Schedule | None
    best_measurement: Measurement | None
    measured: dict[Schedule, Measurement | None]
    stopped: str
    history: list[tuple[int, float]]


Measure = Callable[[list[Schedule]], Sequence[Measurement | None]]


def search(points: Sequence[Schedule], measure: Measure, *, strategy: str = "evolve",
           trials: int = 64, time_budget_s: float | None = None, seed: int = 0,
           known: Mapping[Schedule, Measurement | None] | None = None,
           patience: int | None = None, batch_size: int = 8,
           on_result: Callable[[Schedule, Measurement | None], None] | None = None,
           clock: Callable[[], float] = time.monotonic) -> SearchResult:
    """The best of ``points`` found within ``trials`` new measurements and ``time_budget_s``.

    ``measure(batch)`` returns one Measurement, or None for a failed candidate, per schedule
    of a batch of at most ``batch_size``. No point is measured twice and none in ``known``
    (earlier results; entries outside ``points`` are ignored) is measured during the search.
    The search stops when the space is exhausted, at the trial budget, when the time budget
    is spent (checked before each batch), or after ``patience`` (default
    ``max(16, trials // 4)``) new measurements in a row that do not beat the best.
    A close call is settled at the end: when the runner-up's median lies within the larger
    spread of the best's, both are measured once more (outside ``trials``) and the new
    medians decide. ``on_result(schedule, measurement)`` hears every measurement, these too.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"search: unknown strategy {strategy!r}; expected one of "
                         f"{', '.join(STRATEGIES)}")
    if trials < 1:
        raise ValueError(f"search: trials must be at least 1. Received: trials={trials}")
    order = list(dict.fromkeys(points))
    if not order:
        raise ValueError("search: the schedule space is empty (points has no schedules); "
                         "there is nothing to search")
    patience = max(16, trials // 4) if patience is None else patience
    if patience < 1 or batch_size < 1:
        raise ValueError(f"search: patience and batch_size must be at least 1. Received: "
                         f"patience={patience}, batch_size={batch_size}")
    known = known or {}
    results = {p: known[p] for p in order if p in known}
    rank = {p: i for i, p in enumerate(order)}
    propose = _proposer(strategy, order, results, random.Random(seed))
    measured: dict[Schedule, Measurement | None] = {}
    history: list[tuple[int, float]] = []
    best_seconds = _best_seconds(results, rank)
    stale = 0
    start = clock()

    def stop_reason() -> str | None:
        if len(results) == len(order):
            return "space exhausted"
        if len(measured) >= trials:
            return "trial budget"
        if stale >= patience:
            return f"no improvement in {patience} trials"
        if time_budget_s is not None and clock() - start >= time_budget_s:
            return "time budget"
        return None

    while (stopped := stop_reason()) is None:
        # the last batch shrinks so that the search stops exactly at a budget or at patience
        batch = propose(min(batch_size, trials - len(measured), patience - stale))
        for schedule, outcome in zip(batch, _measure(measure, batch)):
            results[schedule] = measured[schedule] = outcome
            if outcome is not None and outcome.seconds < best_seconds:
                best_seconds, stale = outcome.seconds, 0
            else:
                stale += 1
            if on_result is not None:
                on_result(schedule, outcome)
        history.append((len(results), best_seconds))
    top = _ranked(results, rank)[:2]
    if len(top) == 2 and _close(results[top[0]], results[top[1]]):
        for schedule, outcome in zip(top, _measure(measure, top)):
            results[schedule] = measured[schedule] = outcome
            if on_result is not None:
                on_result(schedule, outcome)
        history.append((len(results), _best_seconds(results, rank)))
    best = next(iter(_ranked(results, rank)), None)
    return SearchResult(best, None if best is None else results[best], measured, stopped,
                        history)


def _measure(measure: Measure, batch: list[Schedule]) -> list[Measurement | None]:
    outcomes = list(measure(batch))
    if len(outcomes) != len(batch):
        raise ValueError(f"search: measure must return one result per schedule. Received "
                         f"{len(outcomes)} results for a batch of {len(batch)}")
    return outcomes


def _ranked(results: Mapping[Schedule, Measurement | None],
            rank: Mapping[Schedule, int]) -> list[Schedule]:
    """The successful points, fastest first (ties go to the heuristic's order)."""
    return sorted((p for p, m in results.items() if m is not None),
                  key=lambda p: (results[p].seconds, rank[p]))


def _best_seconds(results: Mapping[Schedule, Measurement | None],
                  rank: Mapping[Schedule, int]) -> float:
    top = _ranked(results, rank)
    return results[top[0]].seconds if top else math.inf


def _close(best: Measurement, runner_up: Measurement) -> bool:
    """True when the two medians are within the larger spread: noise could have ordered them."""
    return runner_up.seconds - best.seconds <= max(best.spread, runner_up.spread)


def _unmeasured(order: Sequence[Schedule], results: Mapping) -> Iterator[Schedule]:
    """The points of ``order`` that have no result yet, checked as they are drawn."""
    return (p for p in order if p not in results)


def _proposer(strategy: str, order: list[Schedule], results: dict,
              rng: random.Random) -> Callable[[int], list[Schedule]]:
    """A function giving the next batch of at most n unmeasured points (never empty while
    any point is unmeasured); it reads ``results`` as the search fills it."""
    if strategy == "evolve":
        return _Evolution(order, results, rng).next_batch
    sequence = list(order)
    if strategy == "random":
        rng.shuffle(sequence)
    fresh = _unmeasured(sequence, results)
    return lambda n: [p for _, p in zip(range(n), fresh)]


class _Evolution:
    """A genetic search over the knobs of each schedule type, one batch of children at a time."""

    def __init__(self, order: list[Schedule], results: dict, rng: random.Random):
        self.rank = {p: i for i, p in enumerate(order)}
        self.results = results
        self.rng = rng
        self.by_type: dict[type, list[Schedule]] = {}
        for p in order:
            self.by_type.setdefault(type(p), []).append(p)
        # legal values of each knob per type, and each value's place among them in [0, 1]
        self.values = {t: {f.name: sorted({getattr(p, f.name) for p in ps}) for f in fields(t)}
                       for t, ps in self.by_type.items()}
        self.place = {t: {k: {v: i / max(1, len(vs) - 1) for i, v in enumerate(vs)}
                          for k, vs in knobs.items()} for t, knobs in self.values.items()}
        self.coords = {p: self._coords(p) for p in order}
        shuffled = list(order)
        rng.shuffle(shuffled)
        self.fresh = _unmeasured(shuffled, results)
        wanted = max(0, POPULATION - sum(m is not None for m in results.values()))
        self.initial = [p for _, p in zip(range((wanted + 1) // 2), _unmeasured(order, results))]
        # each type (algorithm) the heuristic's top points leave out gets one random point
        for t, ps in self.by_type.items():
            free = [p for p in ps if p not in results]
            if len(self.initial) < wanted and free and all(type(p) is not t for p in self.initial):
                self.initial.append(rng.choice(free))
        while len(self.initial) < wanted and (p := next(self.fresh, None)) is not None:
            if p not in self.initial:
                self.initial.append(p)

    def next_batch(self, n: int) -> list[Schedule]:
        """The first population while it lasts, then children, then random fill."""
        batch = self.initial[:n]
        del self.initial[:n]
        parents = _ranked(self.results, self.rank)[:POPULATION]
        attempts = CHILD_ATTEMPTS * n
        while parents and len(batch) < n and attempts:
            attempts -= 1
            child = self._child(parents, batch)
            if child is not None:
                batch.append(child)
        while len(batch) < n and (p := next(self.fresh, None)) is not None:
            if p not in batch:
                batch.append(p)
        return batch

    def _child(self, parents: list[Schedule], batch: list[Schedule]) -> Schedule | None:
        """An unmeasured legal point bred from two tournament winners (None: type used up)."""
        a, b = self._select(parents), self._select(parents)
        child = a
        if type(a) is type(b) and self.rng.random() < CROSSOVER_RATE:
            child = type(a)(**{f.name: getattr(self.rng.choice((a, b)), f.name)
                               for f in fields(a)})
        if child in self.results or self.rng.random() < MUTATION_RATE:
            child = self._mutate(child)
        return self._repair(child, batch)

    def _select(self, parents: list[Schedule]) -> Schedule:
        """Tournament: the fastest of a few parents drawn at random (parents are sorted)."""
        return parents[min(self.rng.sample(range(len(parents)), min(TOURNAMENT, len(parents))))]

    def _mutate(self, s: Schedule) -> Schedule:
        """One knob moved to a neighbouring legal value, or rarely another type's point."""
        if len(self.by_type) > 1 and self.rng.random() < JUMP_RATE:
            other = self.rng.choice([t for t in self.by_type if t is not type(s)])
            return self.rng.choice(self.by_type[other])
        knobs = [(k, vs) for k, vs in self.values[type(s)].items() if len(vs) > 1]
        if not knobs:
            return s
        knob, vs = self.rng.choice(knobs)
        i = vs.index(getattr(s, knob))
        j = i + self.rng.choice((-1, 1))
        return replace(s, **{knob: vs[j if 0 <= j < len(vs) else 2 * i - j]})

    def _repair(self, child: Schedule, batch: list[Schedule]) -> Schedule | None:
        """``child`` if it is a legal unmeasured point, else the nearest one of its type
        (sum of knob distances, each knob's legal values spread over [0, 1]); None if the
        type has no unmeasured point left."""
        if child in self.rank and child not in self.results and child not in batch:
            return child
        free = [p for p in self.by_type[type(child)] if p not in self.results and p not in batch]
        if not free:
            return None
        at = self._coords(child)
        return min(free, key=lambda p: (sum(abs(u - v) for u, v in zip(self.coords[p], at)),
                                        self.rank[p]))

    def _coords(self, s: Schedule) -> tuple[float, ...]:
        """Each knob's place among its type's legal values, in [0, 1]."""
        place = self.place[type(s)]
        return tuple(place[f.name][getattr(s, f.name)] for f in fields(s))
