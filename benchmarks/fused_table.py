"""Fused blocks and whole networks: cnngen against PyTorch and ONNX Runtime, samples interleaved.

    python benchmarks/fused_table.py [--rows conv_bn_relu_maxpool_l1_b1,resnet18_224_b1]
                                     [--samples 15] [--json out.json] [--tuning-db t.db]

Block rows are the ``fused_block`` rows of ``shapes.json``: conv (no bias) -> batch norm ->
ReLU -> 2x2 max pool at inference, which cnngen runs as one kernel. The peers run it as
PyTorch eager (four ops), PyTorch with the batch norm folded into the conv (three ops),
each in NCHW and channels_last, and ONNX Runtime (which fuses the block itself).

Network rows are ResNet-18 and EfficientNet-B0 (``cnngen.zoo``) at 224x224, batch 1 and
16, with the same seeded weights in every process: cnngen's whole inference (NCHW numpy in,
edges included) against the same graph run by PyTorch eager in NCHW and channels_last.

Timing, interleaving and the correctness check are ``conv_table.py``'s (see its docstring
and benchmarks/README.md). Ratios are peer_ms / cnngen_ms: > 1 means cnngen is faster.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conv_table import (CnngenRunner, _cell, _load, _ms, _num, _table, geomean,  # noqa: E402
                        machine, measure_row, parse_table_arguments, print_tuned,
                        start_peers, table_arguments, versions)
from peers import NetRow, load_blocks, select  # noqa: E402

NETWORKS = [NetRow(f"{model}_224_b{n}", model, n, 224)
            for model in ("resnet18", "efficientnet_b0") for n in (1, 16)]
FAMILIES = ("torch eager", "torch folded", "ort", "torch")


def load(names: list[str] | None) -> list:
    return select(load_blocks() + NETWORKS, names, "shapes.json fused_block and NETWORKS")


def _peer_cells(r: dict, peer: str) -> list[str]:
    lab = r["best"].get(peer)
    if lab is None:
        return ["-", "-", "-"]
    layout = lab.split("/")[-1].split(":")[-1].replace("channels_last", "cl")
    return [_cell(r["runners"][lab]), layout, _num(r["ratios"].get(peer), ".2f")]


BLOCK = [("row", 31), ("cnngen ms [IQR]", 21), ("GF/s", 5), ("eager ms [IQR]", 21),
         ("layout", 6), ("eager/cn", 8), ("folded ms [IQR]", 21), ("layout", 6),
         ("folded/cn", 9), ("ort ms [IQR]", 21), ("ort/cn", 6), ("edges ms", 8)]
NET = [("row", 24), ("cnngen ms [IQR]", 21), ("img/s", 6), ("torch ms [IQR]", 21),
       ("layout", 6), ("cn/torch", 8), ("torch/cn", 8), ("img/s", 6), ("kernels", 7)]


def print_report(report: dict) -> None:
    m, v = report["machine"], report["versions"]
    print(f"machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), best SIMD "
          f"{m['simd']}; load average (1 min) start / end {m['load_start']:.2f} / "
          f"{m['load_end']:.2f}")
    print("versions: " + "; ".join(f"{k} {val}" for k, val in v.items()))
    for peer, reason in report["skipped_peers"].items():
        print(f"skipped peer {peer}: {reason}")
    print(f"settings: {report['settings']['samples']} interleaved samples per runner; "
          "ms = median per call [p25-p75]; ratios peer_ms / cnngen_ms (> 1: cnngen faster)\n")
    blocks = [r for r in report["rows"] if r["op"] == "fused_block"]
    nets = [r for r in report["rows"] if r["op"] == "network"]
    if blocks:
        print("fused blocks (conv -> BN -> ReLU -> 2x2 max pool); cnngen on its blocked layout,"
              " its edge conversions (in + out) apart:")
        cells = []
        for r in blocks:
            run = r["runners"]
            edges = [run.get(f"cnngen:{e}", {}).get("median_ms") for e in ("edge_in", "edge_out")]
            ort_ms, _, ort_ratio = _peer_cells(r, "ort")
            cells.append([r["row"], _cell(run["cnngen"]), _num(run["cnngen"]["gflops"], ".0f"),
                          *_peer_cells(r, "torch eager"), *_peer_cells(r, "torch folded"),
                          ort_ms, ort_ratio, "-" if None in edges else _ms(sum(edges))])
        _table(BLOCK, cells)
        for peer in ("torch eager", "torch folded", "ort"):
            g = report["geomean"].get(peer)
            if g is not None:
                print(f"geomean {peer} / cnngen over the block rows: {g:.2f}x")
        print()
    if nets:
        print("whole networks, NCHW numpy input to output, edges included:")
        cells = []
        for r in nets:
            run, n = r["runners"], r["n_batch"]
            cn = run["cnngen"]["median_ms"]
            torch_lab = r["best"].get("torch")
            t = run[torch_lab]["median_ms"] if torch_lab else None
            cells.append([r["row"], _cell(run["cnngen"]), _num(n * 1e3 / cn, ".0f"),
                          *(_peer_cells(r, "torch")[:2]), _num(t and cn / t, ".2f"),
                          _num(r["ratios"].get("torch"), ".2f"), _num(t and n * 1e3 / t, ".0f"),
                          str(len(r["kernels"]))])
        _table(NET, cells)
    noisy = [r["row"] for r in report["rows"] if (r["other_load_cores"] or 0) > 0.2]
    if noisy:
        print(f"\nWARNING: other programs used more than 0.2 cores while timing "
              f"{', '.join(noisy)}; those times are not representative of an idle machine.")
    print_tuned(report["rows"])
    print("\ncnngen kernels:")
    for r in report["rows"]:
        names = r["kernels"]
        shown = names if len(names) <= 4 else names[:3] + [f"... ({len(names)} in all)"]
        print(f"  {r['row']}: {', '.join(shown)}")


def main(argv=None) -> int:
    ap = table_arguments(__doc__.split("\n\n")[0],
                         "comma-separated row names (default: all blocks and nets)", 50.0)
    ap.add_argument("--tuning-db", type=Path, default=None,
                    help="also time cnngen with this tuning database's records ('tuned')")
    args, rows = parse_table_arguments(ap, load, argv)
    peers = {}
    host = machine()
    try:
        peers, skipped = start_peers(args.peers)
        results = []
        for row in rows:
            print(f"  measuring {row.name} ...", file=sys.stderr, flush=True)
            tuned = CnngenRunner(row, tuning_db=args.tuning_db) if args.tuning_db else None
            result = measure_row(row, CnngenRunner(row), peers, args.samples, args.sample_ms,
                                 args.rtol, tuned)
            result["n_batch"] = row.n_batch
            results.append(result)
        host["load_end"] = _load()
    finally:
        for proc in peers.values():
            proc.close()
    blocks = [r for r in results if r["op"] == "fused_block"]
    report = {"machine": host, "versions": versions(peers, True), "skipped_peers": skipped,
              "settings": {"samples": args.samples, "sample_ms": args.sample_ms,
                           "rtol": args.rtol},
              "rows": results,
              "geomean": {peer: geomean([r["ratios"][peer] for r in blocks
                                         if peer in r["ratios"]]) for peer in FAMILIES}}
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
