"""Checks on a plan's buffers after a run, shared by the kernel tests."""
import numpy as np

from cnngen.codegen.layout import FlatView


def assert_buffers_sound(plan):
    """Every halo still zero (no kernel wrote it) and every value finite.

    (A flatten read in place has no buffer of its own: its source is checked.)"""
    for name, layout in plan.layouts.items():
        if isinstance(layout, FlatView):
            continue
        view = layout.view(plan.buffers[name], plan.n_batch)
        top, bottom, left, right = layout.halo
        assert np.isfinite(view).all(), f"{name}: non-finite values"
        for part in (view[:, :, :top], view[:, :, layout.rows - bottom:],
                     view[:, :, :, :left], view[:, :, :, layout.cols - right:]):
            assert not part.any(), f"{name}: halo {layout.halo} was written"


def run_keeping_activations(net, x):
    """Run ``x`` through the plan that keeps every layer's activation (no buffer reuse), so
    that ``plan.tensor(layer)`` works for every layer; returns that plan."""
    plan = net.plan(x.shape[0], reuse=False)
    plan.set_input(np.ascontiguousarray(x, np.float32))
    plan.run()
    return plan


def assert_live_tensors_never_share(plan):
    """Two tensors in one buffer are never live at once: one's last reader runs before the
    other's writer. (A view shares its whole tensor's buffer by design and counts as it.)"""
    graph = plan.graph
    order = {graph.input_name: -1, **{n.name: i for i, n in enumerate(graph.nodes)}}

    def owner(name):
        while name in plan.views:
            name = plan.views[name]
        return name

    span = {}
    for name, i in order.items():
        lo, hi = span.get(owner(name), (i, i))
        span[owner(name)] = (min(lo, i), max(hi, i))
    for node in graph.nodes:
        for dep in node.deps:
            lo, hi = span[owner(dep)]
            span[owner(dep)] = (lo, max(hi, order[node.name]))
    out = owner(graph.output.name)
    span[out] = (span[out][0], len(graph.nodes))
    owners = sorted(span, key=lambda o: span[o])
    for i, a in enumerate(owners):
        for b in owners[i + 1:]:
            if np.shares_memory(plan.buffers[a], plan.buffers[b]):
                assert span[a][1] < span[b][0], (
                    f"{a} (live {span[a]}) and {b} (live {span[b]}) share a buffer")
