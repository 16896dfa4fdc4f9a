"""Search strategies over real schedule spaces with synthetic, deterministic costs.

No kernel is compiled or timed here: ``Bench`` stands in for the measurer (it records every
batch it is handed), and ``FakeClock`` for the wall clock.
"""
import math
import random

import pytest

from cnngen.schedule import ConvSchedule, WinogradSchedule
from cnngen.tuning.search import POPULATION, STRATEGIES, Measurement, search

# Direct-conv tiles that fit 28 accumulators (oc_vecs * ow_tile <= 28): a space that is not
# a full grid, so mutations do land on illegal points. 704 points.
CONV = [ConvSchedule(oc, ow, ic, rows) for oc in range(1, 5) for ow in range(1, 15)
        for ic in (1, 2, 4, 8) for rows in (1, 2, 4, 8) if oc * ow <= 28]
# The heuristic's ranking: most accumulators first, then the widest ic_block, fewest rows.
ORDER = sorted(CONV, key=lambda s: (-s.oc_vecs * s.ow_tile, -s.ic_block, s.rows, s.oc_vecs))
WINOGRAD = [WinogradSchedule(m, oc, t, ic) for m in (2, 4) for oc in range(1, 5)
            for t in range(1, 9) for ic in (1, 2, 4, 8)]
# A heuristic that ranks the two algorithms alternately.
MIXED = [p for pair in zip(ORDER, WINOGRAD) for p in pair] + ORDER[len(WINOGRAD):]

_NOISE = random.Random(1234)
NOISE = {p: 1 + _NOISE.uniform(-0.02, 0.02) for p in ORDER + WINOGRAD}


def smooth(s):
    """A bowl around oc3_ow5_ic2_rows4 (far down the heuristic's order), with +-2% noise
    fixed per point: within 5% of the optimum lie only oc=3, ic=2, rows=4 and ow in 3..7."""
    if isinstance(s, WinogradSchedule):
        base = (0.7 + 0.1 * (s.m - 4) ** 2 + 0.08 * (s.oc_vecs - 2) ** 2
                + 0.01 * (s.tile_block - 6) ** 2 + 0.1 * (math.log2(s.ic_block) - 2) ** 2)
    else:
        base = (1 + 0.08 * (s.oc_vecs - 3) ** 2 + 0.01 * (s.ow_tile - 5) ** 2
                + 0.1 * (math.log2(s.ic_block) - 1) ** 2 + 0.1 * (math.log2(s.rows) - 2) ** 2)
    return base * NOISE[s]


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Bench:
    """A fake measurer: ``cost(schedule)`` gives the median (None: the candidate fails)."""

    def __init__(self, cost, spread=0.0, clock=None, seconds_per_batch=0.0):
        self.cost, self.spread = cost, spread
        self.clock, self.seconds_per_batch = clock, seconds_per_batch
        self.batches = []

    def __call__(self, batch):
        self.batches.append(list(batch))
        if self.clock is not None:
            self.clock.now += self.seconds_per_batch
        return [None if (c := self.cost(s)) is None else Measurement(c, self.spread)
                for s in batch]

    @property
    def proposed(self):
        return [s for b in self.batches for s in b]


def assert_fresh_and_legal(bench, space, known=()):
    proposed = bench.proposed
    assert len(set(proposed)) == len(proposed), "a point was measured twice"
    assert set(proposed) <= set(space), "a point outside the space was proposed"
    assert not set(proposed) & set(known), "a known point was measured again"


by_strategy = pytest.mark.parametrize("strategy", STRATEGIES)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"unknown strategy 'anneal'.*grid, random, evolve"):
        search(ORDER, Bench(smooth), strategy="anneal")
    with pytest.raises(ValueError, match=r"trials must be at least 1.*trials=0"):
        search(ORDER, Bench(smooth), trials=0)
    with pytest.raises(ValueError, match=r"space is empty"):
        search([], Bench(smooth))
    with pytest.raises(ValueError, match=r"one result per schedule.*2 results for a batch of 8"):
        search(ORDER, lambda batch: [None, None])


@by_strategy
def test_trial_budget_and_batch_size(strategy):
    bench = Bench(smooth)
    result = search(ORDER, bench, strategy=strategy, trials=30, patience=1000)
    assert result.stopped == "trial budget"
    assert [len(b) for b in bench.batches] == [8, 8, 8, 6]
    assert set(result.measured) == set(bench.proposed)
    assert_fresh_and_legal(bench, ORDER)


@by_strategy
def test_time_budget_is_checked_before_each_batch(strategy):
    clock = FakeClock()
    bench = Bench(smooth, clock=clock, seconds_per_batch=1.0)
    result = search(ORDER, bench, strategy=strategy, trials=500, patience=1000,
                    time_budget_s=3.5, clock=clock)
    # batches start at t = 0, 1, 2, 3; at t = 4 the budget is spent
    assert result.stopped == "time budget"
    assert len(bench.batches) == 4 and len(result.measured) == 32


@by_strategy
def test_known_optimum_is_the_best_and_patience_stops_the_search(strategy):
    optimum = min(ORDER, key=smooth)
    known = {optimum: Measurement(smooth(optimum), 0.0)}
    bench = Bench(smooth)
    result = search(ORDER, bench, strategy=strategy, trials=500, patience=10, batch_size=4,
                    known=known)
    assert result.stopped == "no improvement in 10 trials"
    assert len(bench.proposed) == 10  # the last batch shrinks to end exactly at patience
    assert result.best == optimum and result.best_measurement == known[optimum]
    assert_fresh_and_legal(bench, ORDER, known)


@by_strategy
def test_default_patience_is_a_quarter_of_the_trials_but_at_least_16(strategy):
    optimum = min(ORDER, key=smooth)
    known = {optimum: Measurement(smooth(optimum), 0.0)}
    for trials, patience in ((200, 50), (40, 16)):
        result = search(ORDER, Bench(smooth), strategy=strategy, trials=trials, known=known)
        assert result.stopped == f"no improvement in {patience} trials"
        assert len(result.measured) == patience


def test_an_improvement_restarts_the_patience_count():
    # grid order: the first 20 points each beat the one before, every later one is worse
    cost = {p: (100 - i if i < 20 else 1000) for i, p in enumerate(ORDER)}
    bench = Bench(cost.get)
    result = search(ORDER, bench, strategy="grid", patience=5, trials=500)
    assert bench.proposed == ORDER[:25]
    assert result.best == ORDER[19] and result.stopped == "no improvement in 5 trials"


@by_strategy
def test_known_points_are_results_not_trials(strategy):
    known = {p: (None if i % 5 == 0 else Measurement(smooth(p), 0.0))
             for i, p in enumerate(ORDER[:40])}
    stale = WinogradSchedule(4, 2, 6, 4)  # a database record outside today's space
    known[stale] = Measurement(0.001, 0.0)
    bench = Bench(smooth)
    result = search(ORDER, bench, strategy=strategy, trials=20, patience=1000, known=known)
    assert len(bench.proposed) == 20 and result.stopped == "trial budget"
    assert_fresh_and_legal(bench, ORDER, known)
    assert result.best != stale and result.best in ORDER
    assert result.history[0][0] == 40 + 8  # the 40 known points in the space + one batch
    assert result.history[-1][0] == 60


@by_strategy
def test_failures_are_tolerated_and_never_chosen(strategy):
    # ic_block 2 is where the optimum lies, and every such candidate fails
    bench = Bench(lambda s: None if s.ic_block == 2 else smooth(s))
    result = search(ORDER, bench, strategy=strategy, trials=64, patience=1000, seed=3)
    failed = [p for p, m in result.measured.items() if m is None]
    assert failed and all(p.ic_block == 2 for p in failed)
    assert result.best.ic_block != 2
    successes = [p for p, m in result.measured.items() if m is not None]
    assert result.best == min(successes, key=smooth)
    assert_fresh_and_legal(bench, ORDER)


@by_strategy
def test_every_candidate_failing_gives_no_best(strategy):
    result = search(ORDER, Bench(lambda s: None), strategy=strategy, trials=12)
    assert result.best is None and result.best_measurement is None
    assert len(result.measured) == 12 and all(m is None for m in result.measured.values())
    assert [h[1] for h in result.history] == [math.inf, math.inf]


@by_strategy
def test_same_seed_same_proposals(strategy):
    runs = [Bench(smooth), Bench(smooth)]
    for bench in runs:
        search(ORDER + WINOGRAD, bench, strategy=strategy, trials=64, patience=1000, seed=7)
    assert runs[0].batches == runs[1].batches


@pytest.mark.parametrize("strategy", ["random", "evolve"])
def test_another_seed_another_order(strategy):
    runs = [Bench(smooth), Bench(smooth)]
    for seed, bench in enumerate(runs):
        search(ORDER, bench, strategy=strategy, trials=64, patience=1000, seed=seed)
    assert runs[0].proposed != runs[1].proposed


def test_grid_follows_the_heuristic_order_and_skips_known():
    bench = Bench(smooth)
    known = {ORDER[1]: Measurement(9.0, 0.0)}
    search(ORDER, bench, strategy="grid", trials=10, known=known)
    assert bench.proposed == [ORDER[0]] + ORDER[2:11]


def test_grid_over_the_whole_space_finds_the_optimum():
    bench = Bench(smooth)
    result = search(ORDER, bench, strategy="grid", trials=len(ORDER), patience=len(ORDER))
    assert result.stopped == "space exhausted"
    assert sorted(bench.proposed, key=ORDER.index) == ORDER
    assert result.best == min(ORDER, key=smooth)


def test_random_visits_the_space_in_a_shuffled_order():
    bench = Bench(smooth)
    search(ORDER, bench, strategy="random", trials=len(ORDER), patience=len(ORDER))
    assert sorted(bench.proposed, key=ORDER.index) == ORDER and bench.proposed != ORDER


def test_evolve_starts_from_the_heuristics_first_points():
    bench = Bench(smooth)
    search(ORDER, bench, strategy="evolve", trials=POPULATION, batch_size=POPULATION)
    assert set(ORDER[:POPULATION // 2]) <= set(bench.batches[0])


def test_evolve_reaches_the_optimum_on_a_smooth_noisy_landscape():
    """Within 5% of the exhaustive optimum in 64 of 704 trials, for at least 8 of 10 seeds.

    Only about 5 points (0.7% of the space) are that close, so 64 random draws hit one with
    probability ~37%; 8 of 10 leaves room for an unlucky seed or two while still failing
    a search that does no better than chance (which would pass with probability ~1%).
    Patience is lifted so that each run spends its 64 trials.
    """
    optimum = min(smooth(p) for p in ORDER)
    near = [p for p in ORDER if smooth(p) <= 1.05 * optimum]
    assert 3 <= len(near) <= 8  # the landscape is as hard as the docstring says

    assert_evolve_beats_random(ORDER, optimum)


def assert_evolve_beats_random(space, optimum):
    """64-trial evolve within 5% of ``optimum`` for at least 8 of 10 seeds, and more often
    than random search."""
    def hits(strategy):
        return sum(search(space, Bench(smooth), strategy=strategy, trials=64, patience=64,
                          seed=seed).best_measurement.seconds <= 1.05 * optimum
                   for seed in range(10))

    evolve_hits = hits("evolve")
    assert evolve_hits >= 8
    assert evolve_hits > hits("random")

def test_evolve_seeds_its_population_from_the_best_known_points():
    # the best points but the optimum are known, and it is one mutation away from most of
    # them; from the heuristic's start (rank 250 of 704) 16 trials never reach it
    optimum = min(ORDER, key=smooth)
    best_known = sorted(ORDER, key=smooth)[1:POPULATION + 1]
    known = {p: Measurement(smooth(p), 0.0) for p in best_known}
    for seed in range(10):
        seeded = search(ORDER, Bench(smooth), strategy="evolve", trials=16, known=known,
                        seed=seed)
        assert seeded.best == optimum
        cold = search(ORDER, Bench(smooth), strategy="evolve", trials=16, seed=seed)
        assert cold.best != optimum


@by_strategy
def test_a_mixed_type_space(strategy):
    bench = Bench(smooth)
    result = search(MIXED, bench, strategy=strategy, trials=200, patience=1000, seed=1)
    assert_fresh_and_legal(bench, MIXED)
    assert {type(p) for p in bench.proposed} == {ConvSchedule, WinogradSchedule}
    assert result.best == min(bench.proposed, key=smooth)


def test_evolve_finds_the_other_algorithms_optimum():
    """The heuristic ranks every direct conv first, but Winograd's bowl is 30% lower.

    At least 8 of 10 seeds must end within 5% of it in 64 of 960 trials, and more than
    random search manages; a run that never samples Winograd's good corner stays with
    convs, hence not 10 of 10.
    """
    space = ORDER + WINOGRAD
    optimum = min(smooth(p) for p in space)

    assert_evolve_beats_random(space, optimum)


def test_evolve_mutations_jump_to_the_other_algorithm():
    # a full population of known convs leaves no first population to bring Winograd in
    known = {p: Measurement(smooth(p), 0.0) for p in ORDER[:POPULATION]}
    bench = Bench(smooth)
    search(ORDER + WINOGRAD, bench, strategy="evolve", trials=64, patience=64, known=known)
    assert any(isinstance(p, WinogradSchedule) for p in bench.proposed)


def test_close_call_is_measured_again_and_the_new_medians_decide():
    a, b, c = ORDER[:3]
    rounds = {a: iter([1.00, 1.08]), b: iter([1.03, 1.01]), c: iter([2.0])}
    seen = []
    bench = Bench(lambda s: next(rounds[s]), spread=0.05)
    result = search([a, b, c], bench, strategy="grid",
                    on_result=lambda s, m: seen.append((s, m.seconds)))
    assert bench.batches == [[a, b, c], [a, b]]
    assert result.best == b and result.best_measurement.seconds == 1.01
    assert result.measured[a].seconds == 1.08  # the latest measurement is kept
    assert seen == [(a, 1.00), (b, 1.03), (c, 2.0), (a, 1.08), (b, 1.01)]
    assert result.history == [(3, 1.00), (3, 1.01)]


def test_close_call_with_a_known_best():
    a, b, c = ORDER[:3]
    known = {a: Measurement(1.00, 0.05)}
    rounds = {a: iter([0.98]), b: iter([1.02, 1.05]), c: iter([3.0])}
    bench = Bench(lambda s: next(rounds[s]), spread=0.01)
    result = search([a, b, c], bench, strategy="grid", known=known)
    assert bench.batches == [[b, c], [a, b]]
    assert result.best == a and result.measured[a].seconds == 0.98


def test_no_close_call_when_the_spreads_separate_the_medians():
    a, b, c = ORDER[:3]
    cost = {a: 1.00, b: 1.03, c: 2.0}
    bench = Bench(cost.get, spread=0.01)
    result = search([a, b, c], bench, strategy="grid")
    assert bench.batches == [[a, b, c]] and result.best == a


@by_strategy
def test_history_is_a_convergence_curve(strategy):
    result = search(ORDER, Bench(smooth), strategy=strategy, trials=64, patience=1000)
    counts = [n for n, _ in result.history]
    best = [s for _, s in result.history]
    assert counts == list(range(8, 65, 8))
    assert best == sorted(best, reverse=True)
    assert best[-1] == result.best_measurement.seconds == min(
        m.seconds for m in result.measured.values())
