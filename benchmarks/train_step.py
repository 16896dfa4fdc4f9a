"""Training steps: cnngen's generated kernels against PyTorch eager, samples interleaved.

    python benchmarks/train_step.py [--rows lenet5_b64,mnist1d_b100,resnet18_64_b16]
                                    [--rounds 7] [--steps 10] [--target cpu-avx2] [--json out.json]
                                    [--torch-isa native|avx2]

A step is forward, loss, backward and the optimizer's update (Adam) on one mini-batch of
random data, with the same spec and initial weights on both sides. cnngen runs
``Trainer.train_step``; PyTorch runs the spec's graph node by node
(``cnngen.torch_graph``) in float32 with autograd and ``torch.optim.Adam``, in its own
process (its OpenMP pool and Numba's would fight in one), 2 threads, default OMP wait
policy. Each round times ``--steps`` steps on each side, alternating; the table gives the
median ms per step over the rounds, the interquartile range, and cnngen/torch (< 1 means
cnngen takes less time).

On an AVX-512 machine, ``--target cpu-avx2`` stands in for an AVX2-only CPU; PyTorch is then
held to AVX2 as well (``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2`` in its
worker), so both sides use the same instructions. ``--torch-isa native`` lets it use all.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conv_table import machine  # noqa: E402
from peers import THREADS, recv, send, settle  # noqa: E402


@dataclass(frozen=True)
class TrainRow:
    name: str
    model: str
    batch: int
    input_size: int


ROWS = [TrainRow("lenet5_b64", "lenet5", 64, 32), TrainRow("mnist1d_b100", "mnist1d_cnn", 100, 40),
        TrainRow("resnet18_64_b16", "resnet18", 16, 64)]


def batch_of(row: TrainRow, graph):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((row.batch, *graph.input.shape)).astype(np.float32)
    y = rng.integers(0, graph.output.out.channels, size=row.batch)
    return x, y


def spec_of(row: TrainRow) -> dict:
    import cnngen
    return cnngen.zoo.get(row.model, num_classes=10, input_size=row.input_size)


def torch_step(row: TrainRow):
    """PyTorch eager training step of a row's spec (float32, autograd, Adam)."""
    import torch

    import cnngen
    from cnngen.torch_graph import train_step
    torch.set_num_threads(THREADS)
    graph = cnngen.build_graph(spec_of(row))
    return train_step(graph, cnngen.init_weights(graph, 0), *batch_of(row, graph))


def time_steps(step, k: int) -> list[float]:
    step()                                  # wakes the thread pool
    times = []
    for _ in range(k):
        t0 = time.perf_counter_ns()
        step()
        times.append((time.perf_counter_ns() - t0) * 1e-6)
    return times


def torch_worker() -> None:
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    step = None
    while (msg := recv(sys.stdin.buffer)) is not None and msg[0] != "quit":
        if msg[0] == "prepare":
            step = torch_step(TrainRow(**msg[1]))
            send(out, ("ok", None))
        else:
            send(out, ("ok", time_steps(step, msg[1])))
            settle()


def summary(times: list[float]) -> dict:
    q1, med, q3 = np.percentile(times, [25, 50, 75])
    return {"median_ms": float(med), "q1_ms": float(q1), "q3_ms": float(q3)}


def measure(row: TrainRow, rounds: int, steps: int, worker, target: str) -> dict:
    import cnngen
    trainer = cnngen.Trainer(spec_of(row), optimizer="adam", lr=1e-3, batch_size=row.batch,
                             target=target)
    x, y = batch_of(row, trainer.graph)
    send(worker.stdin, ("prepare", asdict(row)))
    recv(worker.stdout)
    ours, theirs = [], []
    for _ in range(rounds):
        ours += time_steps(lambda: trainer.train_step(x, y), steps)
        settle()
        send(worker.stdin, ("time", steps))
        theirs += recv(worker.stdout)[1]
    result = {"row": row.name, "cnngen": summary(ours), "torch": summary(theirs)}
    result["ratio"] = result["cnngen"]["median_ms"] / result["torch"]["median_ms"]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default=",".join(r.name for r in ROWS))
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--json", default=None)
    p.add_argument("--target", default="cpu", help="cnngen's target: cpu (the host), cpu-avx2")
    p.add_argument("--torch-isa", choices=("native", "avx2"), default=None,
                   help="PyTorch's instruction set (default: avx2 with --target cpu-avx2)")
    p.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.torch_worker:
        return torch_worker()
    rows = {r.name: r for r in ROWS}
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    torch_isa = args.torch_isa or ("avx2" if args.target == "cpu-avx2" else "native")
    if torch_isa == "avx2":
        env.update(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    worker = subprocess.Popen([sys.executable, __file__, "--torch-worker"], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    m = machine()
    import cnngen
    print(f"machine: {m['cpu']}, {m['cores']} cores, best SIMD {m['simd']}; cnngen target "
          f"{cnngen.target.resolve(args.target)}; torch ({torch_isa} ISA) in its own process, "
          f"{THREADS} threads, default OMP wait policy; Adam; ms per step")
    print(f"{'row':<18} {'cnngen ms [IQR]':<24} {'torch ms [IQR]':<24} cnngen/torch")
    results = []
    try:
        for name in args.rows.split(","):
            r = measure(rows[name], args.rounds, args.steps, worker, args.target)
            results.append(r)
            cell = lambda s: f"{s['median_ms']:.3f} [{s['q1_ms']:.3f}-{s['q3_ms']:.3f}]"
            print(f"{name:<18} {cell(r['cnngen']):<24} {cell(r['torch']):<24} {r['ratio']:.2f}",
                  flush=True)
    finally:
        send(worker.stdin, ("quit",))
        worker.wait()
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": m, "target": args.target,
                                               "torch_isa": torch_isa, "rows": results}, indent=1))


if __name__ == "__main__":
    main()
