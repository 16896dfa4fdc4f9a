"""The ``cnngen`` command line. ``cnngen check SPEC`` validates a spec and prints its
per-layer summary; SPEC is a .yaml/.json path or ``zoo:NAME`` (see ``cnngen zoo``).

Exit status: 0 when valid, 1 for an invalid spec (the message goes to stderr), 2 for a
command-line mistake.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

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


def cmd_zoo(args) -> int:
    for name in zoo.MODELS:
        print(f"{ZOO_PREFIX}{name}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnngen", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="validate a spec and print per-layer shapes, "
                                     "parameters and multiply-adds")
    c.add_argument("spec", help="a .yaml/.json spec file, or zoo:NAME")
    c.add_argument("--json", action="store_true", help="print the summary as JSON")
    c.set_defaults(run=cmd_check)
    z = sub.add_parser("zoo", help="list the built-in architectures")
    z.set_defaults(run=cmd_zoo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except CnngenError as e:
        print(f"cnngen: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader (e.g. `| head`) stopped early; that is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
