"""Batch-norm statistics in the conv's epilogue against the separate statistics kernel.

    python benchmarks/bn_statistics.py [--size 56] [--channels 64] [--batch 16]
                                       [--target cpu-avx2] [--samples 30]

A training forward of conv (3x3, same padding, no bias) -> batch norm -> relu: the time of
the conv, the batch norm's statistics and its finalize, with the statistics written by the
conv's epilogue per row band (``norm_grad.statistics_in_conv``, what training does) and
with the separate ``batchnorm_stats_train`` pass over the conv's output. Both plans are
built in one process and their samples alternate; median ms and IQR.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conv_table import machine  # noqa: E402

KERNELS = ("conv2d", "batchnorm_stats_train", "batchnorm_finalize_train")


def spec_of(size: int, channels: int) -> dict:
    return {"cnngen": 1, "name": "bn_statistics", "input": {"shape": [channels, size, size]},
            "layers": [{"name": "c1", "op": "conv2d", "filters": channels, "kernel": 3,
                        "padding": 1, "bias": False},
                       {"name": "bn1", "op": "batchnorm"}, {"name": "r1", "op": "relu"},
                       {"name": "gp", "op": "global_avgpool"},
                       {"name": "out", "op": "dense", "units": 10}],
            "loss": {"op": "softmax_cross_entropy"}}


def plans(spec: dict, batch: int, target: str) -> dict:
    import cnngen
    from cnngen import target as targets
    from cnngen.codegen.cache import KernelCache
    from cnngen.runtime import training
    from cnngen.runtime.parameters import Parameters
    graph = cnngen.build_graph(spec)
    weights = cnngen.init_weights(graph, 0)
    epilogue = training.statistics_in_conv
    built = {}
    try:
        for name, rewrite in (("epilogue", epilogue), ("separate", lambda calls, layouts: calls)):
            training.statistics_in_conv = rewrite
            plan = training.TrainPlan(graph, batch, targets.resolve(target),
                                      Parameters(graph, weights))
            plan.compile(KernelCache())
            built[name] = plan
    finally:
        training.statistics_in_conv = epilogue
    return built


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=56)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--target", default="cpu")
    p.add_argument("--samples", type=int, default=30)
    args = p.parse_args()
    built = plans(spec_of(args.size, args.channels), args.batch, args.target)
    x = np.random.default_rng(0).standard_normal(
        (args.batch, args.channels, args.size, args.size)).astype(np.float32)
    steps = {}
    for name, plan in built.items():
        plan.run(x, np.zeros(args.batch))
        steps[name] = [s for s in plan.steps[:plan.n_scored] if s.call.kernel.template in KERNELS]
    times = {name: [] for name in built}
    for _ in range(args.samples):
        for name, chosen in steps.items():
            t0 = time.perf_counter()
            for step in chosen:
                step()
            times[name].append((time.perf_counter() - t0) * 1e3)
    m = machine()
    print(f"machine: {m['cpu']}, {m['cores']} cores, best SIMD {m['simd']}; target "
          f"{args.target}; {args.size}x{args.size}, {args.channels} channels, batch {args.batch}")
    for name, samples in times.items():
        q1, med, q3 = np.percentile(samples, [25, 50, 75])
        print(f"{name:<9} conv + statistics + finalize {med:.3f} ms [{q1:.3f}-{q3:.3f}]")


if __name__ == "__main__":
    main()
