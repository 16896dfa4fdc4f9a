"""The ``cnngen`` command line. ``cnngen check SPEC`` validates a spec and prints its
per-layer summary; ``cnngen compile SPEC`` generates and compiles its kernels and says
which came from the cache; ``cnngen explain SPEC`` shows each kernel's fused op chain,
schedule, source and work (``--profile``: its time); ``cnngen tune SPEC`` searches each
kernel's schedules, measured on this machine, into a tuning database that compile and
explain then apply (``cnngen tune --report DB`` summarises one); ``cnngen train SPEC --data D``
trains it on generated kernels. SPEC is a .yaml/.json path or ``zoo:NAME`` (see ``cnngen zoo``).

Exit status: 0 when valid, 1 for an invalid spec (the message goes to stderr), 2 for a
command-line mistake, 130 when interrupted (Ctrl-C: one line, no traceback).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import zoo
from .errors import CnngenError
from .summary import check

ZOO_PREFIX = "zoo:"


def resolve(spec: str):
    """A spec path as given, or the zoo model's spec dict for ``zoo:NAME``."""
    return zoo.get(spec[len(ZOO_PREFIX):]) if spec.startswith(ZOO_PREFIX) else spec


def cmd_check(args) -> int:
    summary = check(resolve(args.spec))
    if args.json:
        g = summary.graph
        print(json.dumps({
            "name": g.name, "input": list(g.input.shape), "params": summary.params,
            "macs": summary.macs,
            "layers": [{"name": n.name, "op": n.op, "inputs": list(n.inputs),
                        "shape": list(n.out.shape), "params": n.n_params, "macs": n.macs}
                       for n in g.nodes]}, indent=2))
    else:
        print(summary)
    return 0


def cmd_compile(args) -> int:
    net = compiled(args)
    start = time.perf_counter()
    plan = net.plan(args.batch)
    total = time.perf_counter() - start
    print(f"{net.graph.name}: batch {args.batch}, {net.target}")
    print(f"cache: {net.cache.dir}")
    seen = set()
    rows = []
    for step in plan.steps:
        if step.kernel.path in seen:
            continue
        seen.add(step.kernel.path)
        rows.append((step.layer, step.kernel.name,
                     "cache" if step.kernel.cache_hit else "compiled", step.kernel.seconds))
    width = max(len(r[1]) for r in rows)
    layer_width = max(len(r[0]) for r in rows)
    for layer, name, how, seconds in rows:
        print(f"  {layer:<{layer_width}}  {name:<{width}}  {how:<8}  {seconds:6.2f} s")
    hits = [r for r in rows if r[2] == "cache"]
    built = [r for r in rows if r[2] == "compiled"]
    print(f"{len(rows)} kernels for {len(plan.steps)} steps: {len(built)} compiled in "
          f"{sum(r[3] for r in built):.2f} s, {len(hits)} loaded from the cache in "
          f"{sum(r[3] for r in hits):.2f} s; {total:.2f} s in all")
    print(plan.memory)
    return 0


def cmd_explain(args) -> int:
    from .explain import explain

    net = compiled(args)
    report = explain(net, args.batch, profile=args.profile, repeats=args.repeats)
    print(report)
    if args.source:
        for i, k in enumerate(report.kernels):
            print(f"\n# ---- [{i}] {k.layer}: {k.path}\n{k.source}", end="")
    return 0


def cmd_zoo(args) -> int:
    for name in zoo.MODELS:
        print(f"{ZOO_PREFIX}{name}")
    return 0


def directory(value: str) -> str:
    """A --cache-dir value: any path but the empty string (which would silently mean the
    current directory, e.g. from an unset shell variable)."""
    if not value:
        raise argparse.ArgumentTypeError(
            f"expected a directory path; received {value!r}. Omit --cache-dir for the default "
            f"($CNNGEN_CACHE_DIR or ~/.cache/cnngen), or write '.' for the current directory")
    return value


def add_compile_arguments(p: argparse.ArgumentParser) -> None:
    """What a command that compiles a spec takes: the spec, batch, target and cache."""
    p.add_argument("spec", help="a .yaml/.json spec file, or zoo:NAME")
    p.add_argument("--batch", type=int, default=1,
                   help="batch size of the plan built (1); the kernels serve every batch")
    p.add_argument("--target", default="cpu", help="cpu (the host), cpu-avx2 or cpu-sse")
    p.add_argument("--cache-dir", default=None, type=directory,
                   help="kernel cache (default: $CNNGEN_CACHE_DIR or ~/.cache/cnngen)")
    p.add_argument("--tuning-db", default=None,
                   help="tuning database whose records apply (default: tuning.db in the "
                        "kernel cache; 'none' for the heuristic only)")


def compiled(args):
    """The CompiledNet of a compile-style command's arguments (kernels come with the plan)."""
    from .runtime.compiled import compile as compile_net
    db = False if args.tuning_db == "none" else args.tuning_db
    return compile_net(resolve(args.spec), target=args.target, cache_dir=args.cache_dir,
                       tuning_db=db)


def cmd_tune(args) -> int:
    if args.report:
        return print_tuning_report(args.report)
    if args.spec is None:
        raise CnngenError("cnngen tune: expected SPEC (a .yaml/.json spec or zoo:NAME) to "
                          "tune, or --report DB to summarise a database.")
    from .tuning.tuner import tune, tune_training
    layers = args.layers.split(",") if args.layers else None
    run = tune_training if args.training else tune
    report = run(resolve(args.spec), batch=args.batch, trials=args.trials,
                 time_budget_s=args.time_budget, strategy=args.strategy, db=args.db,
                 workers=args.workers, scheduler=args.scheduler, seed=args.seed,
                 target=args.target, cache_dir=args.cache_dir, layers=layers,
                 progress=not args.quiet, plot=args.plot)
    print(report)
    if args.plot:
        print(f"convergence plot: {args.plot}")
    return 0


def cmd_train(args) -> int:
    from pathlib import Path

    from .runtime.trainer import Trainer
    last = Path(args.checkpoint) / "last.ckpt" if args.checkpoint else None
    if args.resume:
        if last is None or not last.is_file():
            raise CnngenError(f"cnngen train --resume: no checkpoint at "
                              f"{last or '--checkpoint DIR/last.ckpt'}; give the --checkpoint "
                              f"directory of the run to resume.")
        trainer = Trainer.resume(last, cache_dir=args.cache_dir, target=args.target)
        print(f"resumed {last} at epoch {trainer.epoch}, step {trainer.step_count}")
    else:
        if args.spec is None:
            raise CnngenError("cnngen train: expected SPEC (a .yaml/.json spec or zoo:NAME), "
                              "or --resume with --checkpoint DIR.")
        options = {key: value for key, value in (
            ("schedule", args.schedule), ("total_steps", args.total_steps),
            ("step_every", args.step_every), ("warmup_steps", args.warmup_steps),
            ("momentum", args.momentum), ("nesterov", args.nesterov)) if value}
        freeze = args.freeze.split(",") if args.freeze else ()
        trainer = Trainer(resolve(args.spec), optimizer=args.optimizer, lr=args.lr,
                          batch_size=args.batch_size, seed=args.seed, augment=args.augment,
                          weights=args.weights, freeze=freeze, target=args.target,
                          cache_dir=args.cache_dir, init=args.init, **options)
        if trainer.transfer_report is not None:
            print(trainer.transfer_report)
    epochs = None if args.epochs is None else max(0, args.epochs - trainer.epoch)
    history = trainer.fit(args.data, epochs=epochs, steps=args.steps, progress=not args.quiet,
                          checkpoint=args.checkpoint, metrics=args.metrics, plot=args.plot,
                          validation=args.validation)
    if history and args.quiet:
        from .runtime.trainer import format_record
        print(format_record(history[-1]))
    if args.save:
        trainer.net.save_weights(args.save)
        print(f"weights: {args.save}")
    return 0


def print_tuning_report(path: str) -> int:
    from pathlib import Path

    from .schedule import from_dict
    from .target import cpu
    from .tuning.db import Context, TuningDB
    from .tuning.workload import template_hash
    if not Path(path).is_file():
        raise CnngenError(f"cnngen tune --report: no tuning database at {path}.")
    with TuningDB(path, readonly=True) as db:
        rows = db.report(Context.current(cpu(), template_hash()))
    print(f"{path}: {len(rows)} workload/batch/machine groups")
    print(f"{'kernel':<9} {'batch':>5} {'trials':>6} {'ok':>4} {'best ms':>9} {'GFLOP/s':>7} "
          f"{'state':<12} {'schedule':<22} cpu")
    for r in rows:
        state = ("stale" if r["stale"] else "this CPU" if r["this_cpu"] else "other CPU")
        best = f"{r['best_seconds'] * 1e3:.3f}" if r["best_seconds"] else "-"
        gflops = f"{r['best_gflops']:.0f}" if r["best_gflops"] else "-"
        text = str(from_dict(r["best_schedule"])) if r["best_schedule"] else "-"
        print(f"{r['kernel']:<9} {r['batch']:>5} {r['trials']:>6} {r['ok']:>4} {best:>9} "
              f"{gflops:>7} {state:<12} {text:<22} {r['cpu']}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnngen", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="validate a spec and print per-layer shapes, "
                                     "parameters and multiply-adds")
    c.add_argument("spec", help="a .yaml/.json spec file, or zoo:NAME")
    c.add_argument("--json", action="store_true", help="print the summary as JSON")
    c.set_defaults(run=cmd_check)
    k = sub.add_parser("compile", help="generate and compile the kernels of a spec; print "
                                       "each kernel, its compile time and cache hits")
    add_compile_arguments(k)
    k.set_defaults(run=cmd_compile)
    e = sub.add_parser("explain", help="show each kernel: fused op chain, schedule and where "
                                       "it came from, source path, FLOPs and bytes")
    add_compile_arguments(e)
    e.add_argument("--source", action="store_true", help="also print every generated source")
    e.add_argument("--profile", action="store_true",
                   help="time each kernel on a random input and show its share of the run")
    e.add_argument("--repeats", type=int, default=20,
                   help="launches per kernel when profiling (median; default 20)")
    e.set_defaults(run=cmd_explain)
    t = sub.add_parser("tune", help="search each kernel's schedules on this machine and "
                                    "record the fastest in a tuning database")
    t.add_argument("spec", nargs="?", help="a .yaml/.json spec file, or zoo:NAME")
    t.add_argument("--batch", type=int, default=1, help="batch size to tune for (1)")
    t.add_argument("--target", default="cpu", help="cpu (the host), cpu-avx2 or cpu-sse")
    t.add_argument("--cache-dir", default=None, type=directory,
                   help="kernel cache (default: $CNNGEN_CACHE_DIR or ~/.cache/cnngen)")
    t.add_argument("--trials", type=int, default=64, help="new candidates per kernel (64)")
    t.add_argument("--time-budget", type=float, default=None,
                   help="seconds for the whole run, shared by the kernels (default: none)")
    t.add_argument("--strategy", default="evolve", choices=("grid", "random", "evolve"))
    t.add_argument("--db", default=None,
                   help="tuning database (default: tuning.db in the kernel cache, where "
                        "compile looks)")
    t.add_argument("--workers", type=int, default=1,
                   help="measure on a Dask LocalCluster of N worker processes")
    t.add_argument("--scheduler", default=None,
                   help="measure on an existing Dask cluster (tcp://host:port) of identical machines")
    t.add_argument("--seed", type=int, default=0, help="search seed (0)")
    t.add_argument("--layers", default=None, help="only the kernels of these spec layers (a,b)")
    t.add_argument("--plot", default=None, help="write a PNG convergence plot here (matplotlib)")
    t.add_argument("--training", action="store_true",
                   help="tune the training step's weight-gradient kernels at --batch (what "
                        "cnngen train applies) instead of the inference kernels")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--report", metavar="DB", default=None,
                   help="summarise the records of a tuning database and exit")
    t.set_defaults(run=cmd_tune)
    r = sub.add_parser("train", help="train a spec on generated kernels: progress, "
                                     "validation, checkpoints, metrics")
    r.add_argument("spec", nargs="?", help="a .yaml/.json spec file, or zoo:NAME "
                                           "(not needed with --resume)")
    r.add_argument("--data", required=True,
                   help="digits, mnist1d, an .npz (x_train, y_train, x_test, y_test)")
    r.add_argument("--epochs", type=int, default=None,
                   help="train until this many epochs in all (with --resume: the total)")
    r.add_argument("--steps", type=int, default=None, help="stop after this many steps in all")
    r.add_argument("--batch-size", type=int, default=64, help="mini-batch size (64)")
    r.add_argument("--optimizer", default="adam",
                   help="sgd, adam, adamw, or evolution (gradient-free); default adam")
    r.add_argument("--lr", type=float, default=1e-3, help="learning rate (1e-3)")
    r.add_argument("--momentum", type=float, default=None, help="sgd: momentum (0)")
    r.add_argument("--nesterov", action="store_true", help="sgd: Nesterov momentum")
    r.add_argument("--schedule", default=None, choices=("constant", "step", "cosine"),
                   help="learning-rate schedule (constant); step needs --step-every, cosine "
                        "--total-steps")
    r.add_argument("--total-steps", type=int, default=None, help="cosine: steps to decay over")
    r.add_argument("--step-every", type=int, default=None, help="step: steps between decays")
    r.add_argument("--warmup-steps", type=int, default=None,
                   help="linear learning-rate warm-up over the first N steps")
    r.add_argument("--seed", type=int, default=0, help="seed of weights, order, dropout (0)")
    r.add_argument("--init", default="he", choices=("he", "pytorch"),
                   help="initial weights: He-normal (he), or PyTorch's defaults (pytorch)")
    r.add_argument("--augment", default=None, help="e.g. flip_h,crop=4,rotate=10")
    r.add_argument("--validation", type=float, default=0.0,
                   help="fraction of the training set held out for validation (0: the test set)")
    r.add_argument("--weights", default=None,
                   help="start from these weights (.npz), matched by layer name")
    r.add_argument("--freeze", default=None, help="layers to keep fixed: glob patterns, a,b")
    r.add_argument("--checkpoint", default=None, help="directory for last.ckpt, after each epoch")
    r.add_argument("--resume", action="store_true", help="go on from --checkpoint DIR/last.ckpt")
    r.add_argument("--metrics", default=None, help="write the history here (.csv or .json)")
    r.add_argument("--plot", default=None, help="write a PNG of the curves here (matplotlib)")
    r.add_argument("--save", default=None, help="write the trained weights here (.npz)")
    r.add_argument("--target", default="cpu", help="cpu (the host), cpu-avx2 or cpu-sse")
    r.add_argument("--cache-dir", default=None, type=directory,
                   help="kernel cache (default: $CNNGEN_CACHE_DIR or ~/.cache/cnngen)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(run=cmd_train)
    z = sub.add_parser("zoo", help="list the built-in architectures")
    z.set_defaults(run=cmd_zoo)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        return args.run(args)
    except CnngenError as e:
        print(f"cnngen: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader (e.g. `| head`) stopped early; that is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:  # Ctrl-C: the user knows; a traceback would only bury that
        print("cnngen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
