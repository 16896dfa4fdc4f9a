"""The direct conv's loop order knob: ic blocks outermost (order 0) or tiles outermost
(order 1), each against the float64 reference, with every epilogue the kernel fuses."""
import numpy as np
import pytest

import cnngen
from cnngen.schedule import ConvSchedule, conv_space, ConvWorkload
from cnngen.target import cpu


def block(name, *layers):
    return {"cnngen": 1, "name": name, "input": {"shape": [40, 9, 11]}, "layers": list(layers)}


SPECS = {
    "bias_relu": block("bias_relu", {"name": "c", "op": "conv2d", "filters": 24, "kernel": 3,
                                     "padding": 1, "activation": "relu"}),
    "bn_residual": block("bn_residual",
                         {"name": "c", "op": "conv2d", "filters": 40, "kernel": 3, "padding": 1,
                          "bias": False},
                         {"name": "bn", "op": "batchnorm"},
                         {"name": "res", "op": "add", "inputs": ["bn", "input"],
                          "activation": "relu"}),
    "pooled": block("pooled", {"name": "c", "op": "conv2d", "filters": 20, "kernel": [3, 2],
                               "stride": [1, 2], "padding": [1, 0], "activation": "relu"},
                    {"name": "p", "op": "maxpool2d", "size": 3, "stride": 2}),
}


@pytest.mark.parametrize("target", ["cpu", "cpu-avx2"])
@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("order", [0, 1])
def test_each_loop_order_matches_the_reference(tmp_path_factory, target, name, order):
    spec = SPECS[name]
    schedule = ConvSchedule(oc_vecs=1, ow_tile=4, ic_block=1, rows=2, order=order)
    net = cnngen.compile(spec, target=target, seed=3, schedules={"c": schedule},
                         cache_dir=tmp_path_factory.getbasetemp() / "loop_order")
    conv = next(s.kernel.name for s in net.plan(3).steps if s.kernel.name.startswith("conv2d"))
    assert str(schedule) in conv
    x = np.random.default_rng(1).standard_normal((3, 40, 9, 11))
    ref = cnngen.ReferenceExecutor(spec, seed=3).forward(x).out
    got = net(x.astype(np.float32))
    assert np.abs(got - ref).max() <= 2e-5 * np.abs(ref).max()


def test_the_order_is_searched_only_where_it_changes_the_loops():
    target = cpu()
    points = conv_space(ConvWorkload(40, 24, 9, 11, 3, 3), target)
    ic_vecs = -(-40 // target.vector)
    assert {p.order for p in points if p.ic_block < ic_vecs} == {0, 1}
    assert {p.order for p in points if p.ic_block == ic_vecs} == {0}


def test_order_zero_keeps_the_kernel_name_and_a_bad_order_is_refused():
    assert str(ConvSchedule(2, 7, 1, 4)) == "oc2_ow7_ic1_rows4"
    assert str(ConvSchedule(2, 7, 1, 4, 1)) == "oc2_ow7_ic1_rows4_lo1"
    with pytest.raises(cnngen.InputError, match="order=2 must be 0"):
        cnngen.compile(SPECS["bias_relu"], schedules={"c": ConvSchedule(1, 4, 1, 1, 2)}).plan(1)
