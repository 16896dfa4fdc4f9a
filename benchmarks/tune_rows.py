"""Tune the convolution rows of shapes.json into a database that conv_table.py then applies.

    python benchmarks/tune_rows.py --db rows.db [--rows resnet_l1_b1,...] [--trials 64]
                                   [--strategy evolve] [--time-budget 120] [--workers 1]
    python benchmarks/conv_table.py --tuning-db rows.db        # default and tuned, side by side

    python benchmarks/tune_rows.py --db-dir cmp --compare resnet_stem_b1,effnet_dw_b1,mnist1d_c1_b32

``--compare`` tunes each row twice over the same space: a 64-trial evolutionary search and
an exhaustive grid (every point, into a second database), then says how close the
evolutionary pick is to the exhaustive best: the two picks measured head to head
(alternately, 7 trials each, the median), and the exhaustive run's own time for the
evolutionary pick against its best (one trial each: that shows the noise of one trial).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conv_table import machine, spec_for  # noqa: E402
from peers import load_rows  # noqa: E402


def tune_row(row, db: Path, **options):
    import cnngen
    report = cnngen.tune(spec_for(row), batch=row.n_batch, db=db, progress=False, **options)
    (result,) = report.results
    return result


def trials_of(db: Path) -> dict[str, float]:
    """{schedule: median seconds} of every successful trial in ``db`` (the latest per schedule)."""
    from cnngen.schedule import from_dict
    from cnngen.tuning.db import TuningDB
    with TuningDB(db, readonly=True) as d:
        rows = d._select("status = 'ok'", ())
    return {str(from_dict(r.schedule)): r.seconds for r in rows}


def head_to_head(row, picks, rounds: int = 7) -> list[float]:
    """Median seconds of each schedule in ``picks``, measured alternately in one worker,
    ``rounds`` trials each (the median of their medians)."""
    import numpy as np

    from cnngen.schedule import to_dict
    from cnngen.tuning.measure import Job, Measurer
    times = [[] for _ in picks]
    with Measurer() as measurer:
        for _ in range(rounds):
            for i, pick in enumerate(picks):
                trial = measurer.measure(Job(spec_for(row), row.n_batch, "conv", to_dict(pick)))
                times[i].append(trial.seconds)
    return [float(np.median(t)) for t in times]


def compare(rows, db_dir: Path, trials: int, seed: int, workers: int) -> None:
    db_dir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()['cpu']}, best SIMD {machine()['simd']}")
    print("evolve/grid: the two picks measured head to head, alternately, 7 trials each "
          "(the median)")
    print(f"{'row':<16} {'space':>5} {'evolve ms':>9} {'trials':>6} {'grid ms':>8} {'trials':>6} "
          f"{'evolve/grid':>11} {'pick in grid run':>16}  evolve pick / grid pick")
    for row in rows:
        started = time.monotonic()
        evolve = tune_row(row, db_dir / f"{row.name}_evolve.db", trials=trials,
                          strategy="evolve", seed=seed, workers=workers)
        grid = tune_row(row, db_dir / f"{row.name}_grid.db", trials=100_000, strategy="grid",
                        workers=workers)
        in_grid = trials_of(db_dir / f"{row.name}_grid.db")
        best_grid = min(in_grid.values())
        pick = in_grid.get(str(evolve.best))
        e, g = (head_to_head(row, [evolve.best, grid.best]) if evolve.best != grid.best
                else 2 * [evolve.best_measurement.seconds])
        print(f"{row.name:<16} {len(evolve.kernel.points):>5} {e * 1e3:>9.4f} "
              f"{evolve.new_trials + evolve.known_trials:>6} {g * 1e3:>8.4f} "
              f"{grid.new_trials + grid.known_trials:>6} {e / g:>11.3f} "
              f"{(pick / best_grid if pick else float('nan')):>16.3f}  "
              f"{evolve.best} / {grid.best}  ({time.monotonic() - started:.0f} s)", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", type=Path, help="database to tune the rows into")
    ap.add_argument("--rows", help="comma-separated row names (default: every conv row)")
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--strategy", default="evolve", choices=("grid", "random", "evolve"))
    ap.add_argument("--time-budget", type=float, default=None, help="seconds per row")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", default="cpu", help="cpu (the host) or cpu-avx2, cpu-sse")
    ap.add_argument("--compare", help="rows to tune by evolve and by exhaustive grid")
    ap.add_argument("--db-dir", type=Path, default=Path("tune_compare"),
                    help="where --compare keeps its databases")
    args = ap.parse_args(argv)
    if args.compare:
        compare(load_rows(args.compare.split(",")), args.db_dir, args.trials, args.seed,
                args.workers)
        return 0
    if args.db is None:
        ap.error("expected --db (or --compare)")
    rows = load_rows(args.rows.split(",") if args.rows else None)
    summary = []
    for row in rows:
        started = time.monotonic()
        r = tune_row(row, args.db, trials=args.trials, strategy=args.strategy,
                     time_budget_s=args.time_budget, workers=args.workers, seed=args.seed,
                     target=args.target)
        summary.append({"row": row.name, "default_ms": r.default and r.default.seconds * 1e3,
                        "tuned_ms": r.best_measurement and r.best_measurement.seconds * 1e3,
                        "schedule": str(r.best), "trials": r.new_trials + r.known_trials,
                        "seconds": time.monotonic() - started})
        print(json.dumps(summary[-1]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
