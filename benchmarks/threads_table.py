"""Calls per second when several threads call compiled nets: one shared net (its lock
serialises the calls) against a net per thread (kernels shared in-process, buffers and
packed weights per net), beside one thread alone. Samples of each setting are interleaved.

    python benchmarks/threads_table.py [--spec examples/lenet5.yaml] [--batches 1,16]
                                       [--threads 4] [--calls 300] [--samples 5]
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conv_table import machine  # noqa: E402


def calls_per_second(nets: list, x: np.ndarray, threads: int, calls: int) -> float:
    """``threads`` threads, thread i calling ``nets[i % len(nets)]`` ``calls`` times."""
    def work(i):
        net = nets[i % len(nets)]
        for _ in range(calls):
            net(x)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return threads * calls / (time.perf_counter() - start)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default=str(Path(__file__).parents[1] / "examples" / "lenet5.yaml"))
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--calls", type=int, default=300, help="calls per thread per sample")
    ap.add_argument("--samples", type=int, default=5)
    args = ap.parse_args(argv)
    import cnngen

    m = machine()
    print(f"machine: {m['cpu']}, {m['cores']} cores, best SIMD {m['simd']}; "
          f"{args.threads} threads x {args.calls} calls per sample, {args.samples} samples")
    print(f"{'batch':>5}  {'setting':<28} {'calls/s median':>14}  spread")
    for n in map(int, args.batches.split(",")):
        shape = cnngen.compile(args.spec).graph.input.shape
        x = np.random.default_rng(0).random((n, *shape)).astype(np.float32)
        shared = [cnngen.compile(args.spec)]
        own = [cnngen.compile(args.spec) for _ in range(args.threads)]
        for net in shared + own:
            net(x)
        settings = {"1 thread": (shared, 1), "one shared net (lock)": (shared, args.threads),
                    "a net per thread": (own, args.threads)}
        rates = {name: [] for name in settings}
        for _ in range(args.samples):
            for name, (nets, threads) in settings.items():
                rates[name].append(calls_per_second(nets, x, threads, args.calls))
        for name, r in rates.items():
            print(f"{n:>5}  {name:<28} {np.median(r):>14.0f}  {min(r):.0f}-{max(r):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
