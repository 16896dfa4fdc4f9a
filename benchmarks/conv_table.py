"""Side-by-side convolution table: cnngen against PyTorch and ONNX Runtime, samples interleaved.

    python benchmarks/conv_table.py [--rows resnet_l1_b1,ts_c64_b16] [--samples 15]
                                    [--target avx2] [--json out.json] [--peers-only]
                                    [--tuning-db rows.db]

For each row of ``shapes.json`` (conv2d, then conv1d) cnngen runs in this process and each
peer in its own worker process (``peers.py``). After a correctness check against PyTorch,
the samples go round-robin: cnngen, its edge conversions, cnngen as a user calls it
(``net(x)``: numpy in, numpy out, input checks and output copy included), torch NCHW,
torch channels_last, ORT, then again, with the starting runner rotated each round. A sample is ``k`` timed calls
after one untimed warm-up call, with ``k`` chosen so that a sample takes about
``--sample-ms``. Each runner waits for its own thread pool to stop spinning before the next
runner starts (``cnngen.tuning.measure.settle``). Reported: the median per-call time over all samples and its
interquartile range; ratios are peer_ms / cnngen_ms, so > 1 means cnngen is faster.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import PEERS, NetRow, PeerProcess, Row, load_rows, time_calls  # noqa: E402

from cnngen.tuning.measure import settle  # noqa: E402


class CnngenUnavailable(RuntimeError):
    pass


def spec_for(row: Row) -> dict:
    """A one-layer cnngen spec for ``row`` (no bias)."""
    shape = [row.c_in, row.h_in, row.w_in] if row.nd == 2 else [row.c_in, row.w_in]
    kernel = [row.k_h, row.k_w] if row.nd == 2 else [row.k_w]
    return {"cnngen": 1, "name": "bench", "input": {"shape": shape},
            "layers": [{"name": "conv", "op": row.op, "filters": row.c_out, "kernel": kernel,
                        "stride": row.stride, "padding": row.pad, "groups": row.groups,
                        "bias": False}]}


def spec_and_weights(row) -> tuple[dict, dict]:
    """The cnngen spec of a row and its weights (the data every peer uses)."""
    if isinstance(row, Row):
        return spec_for(row), {"conv": {"w": row.data()[1]}}
    return row.spec(), row.weights()


def input_of(row) -> np.ndarray:
    return row.data() if isinstance(row, NetRow) else row.data()[0]


class CnngenRunner:
    """``row`` compiled by cnngen for its batch, weights loaded. For a layer or block row,
    ``calls`` are "conv" (the non-edge steps, on the blocked layout, as a network runs
    them) and "edge_in" / "edge_out" (the layout conversions at the edges). For a network
    row "conv" is the whole inference, NCHW input copied in to NCHW output, edges included.
    ``tuning_db``: the heuristic's schedules (False) or a tuning database's records (a path)."""

    def __init__(self, row, target: str | None = None, tuning_db=False):
        import cnngen
        if not hasattr(cnngen, "compile"):
            raise CnngenUnavailable("cnngen.compile does not exist yet in this checkout")
        self.row = row
        self.x = input_of(row)
        self.spec, weights = spec_and_weights(row)
        self.net = cnngen.compile(self.spec, target=target or "cpu", tuning_db=tuning_db)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "w.npz"
            cnngen.save_npz(weights, path)
            self.net.load_weights(path)
        self.plan = self.net.plan(row.n_batch)
        self.plan.set_input(self.x)
        steps = list(self.plan.steps)
        compute = [s for s in steps if not s.edge]
        if not compute:
            raise CnngenUnavailable(f"{row.name}: the plan has no non-edge step")
        self.kernel_names = [s.kernel.name for s in compute]
        if isinstance(row, NetRow):
            whole = _chain(steps)
            self.calls = {"conv": lambda: (self.plan.set_input(self.x), whole())}
            return
        first = steps.index(compute[0])
        edge_in, edge_out = steps[:first], [s for s in steps[first:] if s.edge]
        # a plan whose conversions live in set_input/output has no edge steps: time those
        set_input = partial(self.plan.set_input, self.x)
        self.calls = {"conv": _chain(compute),
                      "edge_in": _chain(edge_in) if edge_in else set_input,
                      "edge_out": _chain(edge_out) if edge_out else self.plan.output,
                      "user": partial(self.net, self.x)}

    def output(self) -> np.ndarray:
        self.plan.set_input(self.x)
        self.plan.run()
        return np.asarray(self.plan.output())


def _chain(steps):
    steps = tuple(steps)
    if len(steps) == 1:
        return steps[0]

    def run():
        for step in steps:
            step()
    return run


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| relative to max |ref|."""
    if got.shape != ref.shape:
        return math.inf
    return float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-30))


class OtherLoad:
    """CPU that everything but this benchmark's processes used since creation, in cores.

    From /proc/stat's busy and steal time minus our processes' own CPU time; None without
    /proc. On a 2-core machine, 1.0 means another program held a core throughout, and
    2-thread runners then wait whole scheduler slices (times in multiples of ~4-8 ms)."""

    def __init__(self, pids: list[int]):
        self.pids, self.t0 = pids, time.monotonic()
        self.busy0 = self._busy()

    def _busy(self) -> int | None:
        try:
            cpu = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            ours = 0
            for pid in self.pids:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                ours += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, ValueError, IndexError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = cpu[:8]
        return user + nice + system + irq + softirq + steal - ours

    def cores(self) -> float | None:
        busy = self._busy()
        if busy is None or self.busy0 is None:
            return None
        seconds = max(time.monotonic() - self.t0, 1e-3)
        return max(busy - self.busy0, 0) / os.sysconf("SC_CLK_TCK") / seconds


def stats(times_ms: list[float]) -> dict:
    p25, med, p75 = np.percentile(times_ms, [25, 50, 75])
    return {"median_ms": float(med), "p25_ms": float(p25), "p75_ms": float(p75),
            "min_ms": float(min(times_ms)), "max_ms": float(max(times_ms)), "calls": len(times_ms)}


def measure_row(row: Row, cn: CnngenRunner | None, peers: dict[str, PeerProcess],
                samples: int, sample_ms: float, rtol: float,
                tuned: CnngenRunner | None = None) -> dict:
    """Check every runner against the reference output, then time them interleaved.
    ``tuned``: cnngen with a tuning database's records, timed as "cnngen:tuned"."""
    runners = {}  # label -> sample(k) -> per-call ms
    if cn is not None:
        for part, fn in cn.calls.items():
            label = "cnngen" if part == "conv" else f"cnngen:{part}"
            runners[label] = lambda k, fn=fn: _local_sample(fn, k)
    outputs = {}
    if tuned is not None:
        runners["cnngen:tuned"] = lambda k, fn=tuned.calls["conv"]: _local_sample(fn, k)
        outputs["cnngen:tuned"] = tuned.output()
    for name, proc in peers.items():
        for variant in proc.prepare(row):
            runners[f"{name}:{variant}"] = lambda k, p=proc, v=variant: p.time(v, k)
            outputs[f"{name}:{variant}"] = proc.output(variant)
    if cn is not None:
        outputs["cnngen"] = cn.output()
    ref_label = next((lab for lab in outputs if lab.startswith("torch:")), None)
    if ref_label is None:
        ref_label, ref = "float64 reference", reference_output(row)
    else:
        ref = outputs[ref_label]
    errors = {lab: rel_err(out, ref) for lab, out in outputs.items()}
    bad = {lab: e for lab, e in errors.items() if not e <= rtol}
    if bad:
        raise SystemExit(f"{row.name}: output differs from {ref_label} (max abs error relative "
                         f"to max |ref|, tolerance {rtol:g}): "
                         + ", ".join(f"{lab} {e:.3g}" for lab, e in bad.items()))
    load = OtherLoad([os.getpid(), *(p.proc.pid for p in peers.values())])
    k = {lab: _calls_per_sample(run, sample_ms) for lab, run in runners.items()}
    times = {lab: [] for lab in runners}
    sample_medians = {lab: [] for lab in runners}
    labels = list(runners)
    for i in range(samples):
        for lab in labels[i % len(labels):] + labels[:i % len(labels)]:
            got = runners[lab](k[lab])
            times[lab] += got
            sample_medians[lab].append(float(np.median(got)))
    result = {"row": row.name, "op": row.op, "gflop": row.flops / 1e9, "reference": ref_label,
              "rel_err": errors, "calls_per_sample": k, "other_load_cores": load.cores(),
              "runners": {lab: {**stats(t), "sample_medians_ms": sample_medians[lab]}
                          for lab, t in times.items()}}
    if cn is not None:
        result["kernels"] = cn.kernel_names
    if tuned is not None:
        result["tuned_kernels"] = tuned.kernel_names
    return summarise(result)


def _local_sample(fn, k: int) -> list[float]:
    times = time_calls(fn, k, warmup=1)
    settle()
    return times


def _calls_per_sample(run, sample_ms: float) -> int:
    run(2)  # warm caches and pools
    per_call = float(np.median(run(3)))
    return int(min(max(math.ceil(sample_ms / max(per_call, 1e-4)), 1), 2000))


def reference_output(row) -> np.ndarray:
    """The float64 reference executor's output for ``row``'s data."""
    import cnngen
    spec, weights = spec_and_weights(row)
    return cnngen.ReferenceExecutor(spec, weights).forward(input_of(row)).out


def family(label: str) -> str | None:
    """The peer a runner label compares as: "torch:nchw" -> "torch",
    "torch:eager/channels_last" -> "torch eager"; None for cnngen's own runners."""
    peer, _, variant = label.partition(":")
    if peer not in PEERS:
        return None
    return f"{peer} {variant.split('/')[0]}" if "/" in variant else peer


def summarise(result: dict) -> dict:
    """Add the best layout per peer (family), GFLOP/s, and peer_ms / cnngen_ms ratios."""
    runners = result["runners"]
    for lab, s in runners.items():
        s["gflops"] = result["gflop"] / (s["median_ms"] * 1e-3)
    best = {}
    for lab, s in runners.items():
        peer = family(lab)
        if peer is not None and (peer not in best
                              or s["median_ms"] < runners[best[peer]]["median_ms"]):
            best[peer] = lab
    result["best"] = best
    if "cnngen" in runners:
        cn_ms = runners["cnngen"]["median_ms"]
        result["ratios"] = {peer: runners[lab]["median_ms"] / cn_ms for peer, lab in best.items()}
    if "cnngen:tuned" in runners:
        tuned_ms = runners["cnngen:tuned"]["median_ms"]
        result["tuned_ratios"] = {peer: runners[lab]["median_ms"] / tuned_ms
                                  for peer, lab in best.items()}
        if "cnngen" in runners:
            result["tuned_ratios"]["cnngen default"] = runners["cnngen"]["median_ms"] / tuned_ms
    return result


def geomean(values: list[float]) -> float | None:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = next((f for f in ("avx512f", "avx2", "avx", "sse4_2") if f in flags), "unknown")
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": affinity, "simd": simd,
            "platform": platform.platform(), "python": platform.python_version(),
            "load_start": _load(), "load_end": None}


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def versions(peers: dict[str, PeerProcess], cn_ran: bool) -> dict[str, str]:
    import cnngen
    import numba
    v = {"cnngen": cnngen.__version__, "numpy": np.__version__, "numba": numba.__version__}
    if cn_ran:
        v["numba"] += (f" (threading layer {_threading_layer()}, "
                       f"{numba.config.NUMBA_NUM_THREADS} threads)")
    if "torch" in peers:
        i = peers["torch"].info
        v["torch"] = (f"{i['torch']} ({i['threads']} threads, mkldnn "
                      f"{'on' if i['mkldnn'] else 'off'}, OMP_WAIT_POLICY {i['OMP_WAIT_POLICY']})")
    if "ort" in peers:
        i = peers["ort"].info
        v["onnxruntime"] = f"{i['onnxruntime']} (onnx {i['onnx']}, {i['threads']} intra-op threads)"
    return v


def _threading_layer() -> str:
    import numba
    try:
        return numba.threading_layer()
    except ValueError:
        return "not initialised (no parallel kernel ran)"


def _ms(x: float | None) -> str:
    if x is None:
        return "-"
    return (f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 1
            else f"{x:.3f}")


def _cell(s: dict | None) -> str:
    return "-" if s is None else f"{_ms(s['median_ms'])} [{_ms(s['p25_ms'])}-{_ms(s['p75_ms'])}]"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _table(columns: list[tuple[str, int]], rows: list[list[str]]) -> None:
    print("  ".join(f"{name:<{w}}" for name, w in columns).rstrip())
    print("  ".join("-" * w for _, w in columns))
    for cells in rows:
        print("  ".join(f"{c:<{w}}" for c, (_, w) in zip(cells, columns)).rstrip())


def _main_cells(r: dict) -> list[str]:
    run, best, ratios = r["runners"], r["best"], r.get("ratios", {})
    cn, t, o = run.get("cnngen"), run.get(best.get("torch")), run.get(best.get("ort"))
    mflop = r["gflop"] * 1e3
    layout = best["torch"].split(":")[1].replace("channels_last", "cl") if t else "-"
    return [r["row"], _num(mflop, ".1f" if mflop < 100 else ".0f"),
            _cell(cn), _num(cn and cn["gflops"], ".0f"),
            _cell(t), layout, _num(t and t["gflops"], ".0f"), _num(ratios.get("torch"), ".2f"),
            _cell(o), _num(o and o["gflops"], ".0f"), _num(ratios.get("ort"), ".2f")]


def _user_cells(r: dict) -> list[str]:
    run, best = r["runners"], r["best"]
    user, cn = run.get("cnngen:user"), run.get("cnngen")
    t_user, t = run.get(best.get("torch user")), run.get(best.get("torch"))
    layout = best["torch user"].split("/")[1].replace("channels_last", "cl") if t_user else "-"
    return [r["row"], _cell(user), _ms(cn and cn["median_ms"]),
            _ms(t_user and t_user["median_ms"]), layout, _ms(t and t["median_ms"]),
            _num(user_ratio(r), ".2f"),
            _num(t["median_ms"] / cn["median_ms"] if t and cn else None, ".2f")]


def user_ratio(r: dict) -> float | None:
    """torch's best user-level ms / cnngen's ``net(x)`` ms for a row, None without both."""
    user = r["runners"].get("cnngen:user")
    t_user = r["runners"].get(r["best"].get("torch user"))
    return t_user["median_ms"] / user["median_ms"] if user and t_user else None


def _detail_cells(r: dict) -> list[str]:
    run = r["runners"]
    med = {lab: s["median_ms"] for lab, s in run.items()}
    edges = [med.get("cnngen:edge_in"), med.get("cnngen:edge_out")]
    per_conv = sum(edges) / med["cnngen"] if None not in edges and "cnngen" in med else None
    return [r["row"], _ms(med.get("torch:nchw", med.get("torch:ncl"))),
            _ms(med.get("torch:channels_last")), _ms(edges[0]), _ms(edges[1]),
            _num(per_conv, ".2f"), _num(r["other_load_cores"], ".2f")]


MAIN = [("row", 16), ("MFLOP", 6), ("cnngen ms [IQR]", 21), ("GF/s", 5), ("torch ms [IQR]", 21),
        ("layout", 6), ("GF/s", 5), ("torch/cn", 8), ("ort ms [IQR]", 21), ("GF/s", 5),
        ("ort/cn", 6)]
USER = [("row", 16), ("net(x) ms [IQR]", 21), ("kernel ms", 9), ("torch user ms", 13),
        ("layout", 6), ("torch kernel ms", 15), ("torch/net(x)", 12), ("torch/kernel", 12)]
TUNED = [("row", 16), ("default ms", 10), ("tuned ms [IQR]", 21), ("GF/s", 5),
         ("default/tuned", 13), ("torch/tuned", 11), ("ort/tuned", 9), ("tuned schedule", 40)]


def _tuned_cells(r: dict) -> list[str]:
    run, ratios = r["runners"], r["tuned_ratios"]
    tuned = run["cnngen:tuned"]
    schedules = sorted({k.split("__")[2] for k in r["tuned_kernels"] if k.count("__") >= 3})
    return [r["row"], _ms(run.get("cnngen", {}).get("median_ms")), _cell(tuned),
            _num(tuned["gflops"], ".0f"), _num(ratios.get("cnngen default"), ".2f"),
            _num(ratios.get("torch"), ".2f"), _num(ratios.get("ort"), ".2f"),
            ", ".join(schedules)]


def print_tuned(rows: list[dict]) -> None:
    """The tuned table and its geometric means, for rows timed with a tuning database."""
    tuned = [r for r in rows if "tuned_ratios" in r]
    if not tuned:
        return
    print("\ntuned: cnngen with the tuning database's records (--tuning-db), in the same "
          "interleaved run;\nratios are the other's ms / tuned ms (> 1: tuned is faster):\n")
    _table(TUNED, [_tuned_cells(r) for r in tuned])
    for op in ("conv2d", "conv1d", "fused_block", "network"):
        for peer in ("cnngen default", "torch", "ort"):
            ratios = [r["tuned_ratios"][peer] for r in tuned
                      if r["op"] == op and peer in r["tuned_ratios"]]
            if ratios:
                print(f"geomean {peer}_ms / tuned_ms over {len(ratios)} {op} rows: "
                      f"{geomean(ratios):.2f}x (lowest {min(ratios):.2f}x)")


DETAIL = [("row", 16), ("torch nchw/ncl", 14), ("torch cl", 8), ("edge in ms", 10),
          ("edge out ms", 11), ("edges/conv", 10), ("other load", 10)]


def print_report(report: dict) -> None:
    """The machine, versions and settings; the table; the details; the geometric means."""
    m, v, st = report["machine"], report["versions"], report["settings"]
    print(f"machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
          f"best SIMD {m['simd']}; {m['platform']}; Python {m['python']}")
    print(f"load average (1 min) at start / end: {m['load_start']:.2f} / {m['load_end']:.2f}")
    print("versions: " + "; ".join(f"{k} {val}" for k, val in v.items()))
    for peer, reason in report["skipped_peers"].items():
        print(f"skipped peer {peer}: {reason}")
    print(f"settings: {st['samples']} interleaved samples per runner of ~{st['sample_ms']:g} ms; "
          f"cnngen target {st['target']}; outputs checked to rtol {st['rtol']:g} before timing"
          + ("; PEERS ONLY (cnngen not run)" if st["peers_only"] else ""))
    print("\nms: median per call over all samples [p25-p75]. GF/s: nominal FLOPs "
          "2*N*K*(C/g)*R*S*Ho*Wo per second.\ntorch: its faster layout (cl = channels_last). "
          "torch/cn, ort/cn: peer ms / cnngen ms, > 1 means cnngen is faster.\n")
    _table(MAIN, [_main_cells(r) for r in report["rows"]])
    print("\nboth torch layouts (median ms); cnngen's edge conversions NCHW -> blocked (in) and "
          "blocked -> NCHW (out),\ntheir sum over the conv's time; cores used by other programs "
          "while the row was timed:\n")
    _table(DETAIL, [_detail_cells(r) for r in report["rows"]])
    users = [r for r in report["rows"] if "cnngen:user" in r["runners"]]
    if users:
        print("\nuser level, numpy NCHW in and out: cnngen's net(x) (input checks, edge "
              "conversions, kernels)\nagainst torch's faster user path (from_numpy, and for "
              "channels_last its conversions in and out);\nthe kernels alone beside them:\n")
        _table(USER, [_user_cells(r) for r in users])
        for op in ("conv2d", "conv1d"):
            ratios = [x for x in (user_ratio(r) for r in users if r["op"] == op) if x]
            if ratios:
                print(f"geomean torch_ms / net(x)_ms over {len(ratios)} {op} rows: "
                      f"{geomean(ratios):.2f}x")
    print()
    noisy = [r["row"] for r in report["rows"] if (r["other_load_cores"] or 0) > 0.2]
    if noisy:
        print(f"WARNING: other programs used more than 0.2 cores while timing {', '.join(noisy)} "
              f"('other load'); those times are not representative of an idle machine.\n")
    for op, by_peer in report["geomean"].items():
        for peer, g in by_peer.items():
            n = sum(1 for r in report["rows"] if r["op"] == op and peer in r.get("ratios", {}))
            if g is not None:
                print(f"geomean {peer}_ms / cnngen_ms over {n} {op} rows: {g:.2f}x")
    print_tuned(report["rows"])
    kernels = [(r["row"], r["kernels"]) for r in report["rows"] if "kernels" in r]
    if kernels:
        print("\ncnngen kernels (the non-edge steps, timed as 'cnngen'):")
        for name, ks in kernels:
            print(f"  {name}: {', '.join(ks)}")


def table_arguments(description: str, rows_help: str, sample_ms: float) -> argparse.ArgumentParser:
    """The options every side-by-side table takes: rows, samples, peers, rtol, json."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--rows", help=rows_help)
    ap.add_argument("--samples", type=int, default=15, help="interleaved samples per runner")
    ap.add_argument("--sample-ms", type=float, default=sample_ms,
                    help="target length of one sample")
    ap.add_argument("--peers", default="torch,ort", help="peers to run (default: torch,ort)")
    ap.add_argument("--rtol", type=float, default=1e-3,
                    help="max |y - y_torch| / max |y_torch| allowed before timing")
    ap.add_argument("--json", type=Path, help="also write the results here")
    return ap


def parse_table_arguments(ap: argparse.ArgumentParser, load, argv):
    """(args, rows): ``load(names or None)`` picks the rows; unknown rows or peers are
    usage errors."""
    args = ap.parse_args(argv)
    try:
        rows = load(args.rows.split(",") if args.rows else None)
    except ValueError as e:
        ap.error(str(e))
    unknown = set(args.peers.split(",")) - set(PEERS)
    if unknown:
        ap.error(f"unknown peer(s) {', '.join(sorted(unknown))}; peers: {', '.join(PEERS)}")
    return args, rows


def start_peers(names: str) -> tuple[dict[str, PeerProcess], dict[str, str]]:
    """A worker process per available peer, and the reason for each one that is not."""
    peers, skipped = {}, {}
    for name in names.split(","):
        proc = PeerProcess(name)
        if proc.available:
            peers[name] = proc
        else:
            skipped[name] = proc.reason
    return peers, skipped


def main(argv=None) -> int:
    ap = table_arguments(__doc__.split("\n\n")[0],
                         "comma-separated row names from shapes.json (default: all)", 25.0)
    ap.add_argument("--target", default=None,
                    help='cnngen target: "cpu" (default: detected), "avx2" or "cpu-avx2", ...')
    ap.add_argument("--peers-only", action="store_true",
                    help="time the peers without cnngen (e.g. before cnngen.compile exists)")
    ap.add_argument("--tuning-db", type=Path, default=None,
                    help="also time cnngen with this tuning database's records ('tuned')")
    args, rows = parse_table_arguments(ap, load_rows, argv)
    target = args.target
    if target and not target.startswith("cpu") and target != "cuda":
        target = f"cpu-{target}"

    peers = {}
    host = machine()
    try:
        peers, skipped = start_peers(args.peers)
        results = []
        for row in rows:
            cn = tuned = None
            if not args.peers_only:
                try:
                    cn = CnngenRunner(row, target)
                    if args.tuning_db:
                        tuned = CnngenRunner(row, target, tuning_db=args.tuning_db)
                except CnngenUnavailable as e:
                    raise SystemExit(f"cnngen side unavailable: {e}. Run with --peers-only "
                                     f"to time the peers alone.")
            print(f"  measuring {row.name} ...", file=sys.stderr, flush=True)
            results.append(measure_row(row, cn, peers, args.samples, args.sample_ms, args.rtol,
                                       tuned))
        host["load_end"] = _load()
        report = {"machine": host, "versions": versions(peers, not args.peers_only),
                  "skipped_peers": skipped,
                  "settings": {"samples": args.samples, "sample_ms": args.sample_ms,
                               "target": target or "default", "rtol": args.rtol,
                               "peers_only": args.peers_only},
                  "rows": results}
        report["geomean"] = {op: {peer: geomean([r["ratios"][peer] for r in results
                                                 if r["op"] == op and peer in r.get("ratios", {})])
                                  for peer in peers} for op in ("conv2d", "conv1d")}
    finally:
        for proc in peers.values():
            proc.close()
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
