"""``check``: validate a spec and summarise it per layer (shapes, parameters, multiply-adds)."""
from __future__ import annotations

from dataclasses import dataclass

from .ir import Graph
from .spec import build_graph


@dataclass(frozen=True)
class Summary:
    """The checked graph and its per-layer table. ``str()`` prints the table."""

    graph: Graph

    @property
    def params(self) -> int:
        """Trainable parameters (batch-norm running statistics are buffers, not counted)."""
        return self.graph.n_params

    @property
    def macs(self) -> int:
        """Multiply-adds of one sample through conv, deconv and dense layers."""
        return self.graph.macs

    def rows(self) -> list[tuple[str, str, str, str, str]]:
        g = self.graph
        rows = [(g.input_name, "input", str(g.input), "", "")]
        rows += [(n.name, n.op, str(n.out), f"{n.n_params:,}", f"{n.macs:,}") for n in g.nodes]
        return rows

    def __str__(self) -> str:
        g = self.graph
        head = ("layer", "op", "output shape", "params", "mult-adds")
        body = self.rows()
        total = ("total", "", "", f"{self.params:,}", f"{self.macs:,}")
        widths = [max(len(r[i]) for r in [head, *body, total]) for i in range(5)]

        def line(r):
            cells = [r[i].ljust(widths[i]) if i < 3 else r[i].rjust(widths[i]) for i in range(5)]
            return "  ".join(cells).rstrip()

        rule = "  ".join("-" * w for w in widths)
        loss = f", loss {g.loss.op} (l2={g.loss.l2:g})" if g.loss else ""
        title = f"{g.name}: {len(g.nodes)} layers, input {g.input}{loss}"
        foot = "mult-adds are per sample (batch 1)"
        return "\n".join([title, line(head), rule, *map(line, body), rule, line(total), foot])


def check(spec) -> Summary:
    """Validate ``spec`` (path, YAML/JSON text, dict or Graph); raises SpecError."""
    return Summary(build_graph(spec))
