"""The spill check: vector spills in a kernel's reduction loops, read from its assembly,
kept with the cache entry, shown by explain, and never left in a heuristic schedule."""
import numpy as np
import pytest

import cnngen
from cnngen import schedule as sched
from cnngen.codegen.locator import spill_report_path
from cnngen.codegen.spills import count_spills
from cnngen.explain import explain
from cnngen.schedule import ConvSchedule

# A reduction loop (.LBB0_2 .. jne .LBB0_2) nested in an outer loop, with an FMA and a
# spill/reload pair inside; a vector spill before the loops and a scalar reload inside.
ASM = """\
f:
\tvmovups\t%zmm3, 64(%rsp)                  # 64-byte Spill
.LBB0_1:
\taddq\t$1, %rax
.LBB0_2:
\tvfmadd231ps\t%zmm1, %zmm2, %zmm0
\tvmovups\t%zmm5, (%rsp)                    # 64-byte Spill
\tvfmadd231ps\t128(%rsp), %zmm2, %zmm4      # 64-byte Folded Reload
\tmovq\t8(%rsp), %rcx                        # 8-byte Reload
\tjne\t.LBB0_2
\tvmovups\t(%rsp), %zmm5                    # 64-byte Reload
\tjne\t.LBB0_1
.LBB0_3:
\tvaddps\t%zmm1, %zmm2, %zmm0
\tvmovups\t%zmm7, 192(%rsp)                 # 32-byte Spill
\tjne\t.LBB0_3
.Lfunc_end0:
"""

CONV = {"cnngen": 1, "name": "spill", "input": {"shape": [64, 6, 14]},
        "layers": [{"name": "c", "op": "conv2d", "filters": 64, "kernel": 3, "padding": 1}]}


def test_count_spills_reads_the_innermost_fma_loops():
    report = count_spills(ASM)
    # Inside .LBB0_2: one spill and one folded reload of vectors; the 8-byte reload is a
    # scalar; the reload after it is in the outer loop; .LBB0_3 has no FMA.
    assert (report.in_loops, report.loops) == (2, 1)
    assert report.anywhere == 5


def test_count_spills_of_code_without_loops():
    assert count_spills("g:\n\tvmovups\t%zmm3, (%rsp)   # 64-byte Spill\n\tretq\n").in_loops == 0


def conv_kernel(net, n=1):
    return next(s.kernel for s in net.plan(n).steps if s.kernel.name.startswith("conv2d"))


@pytest.mark.parametrize("target", ["cpu", "cpu-avx2"])
def test_a_tile_too_large_for_the_registers_spills_and_a_small_one_does_not(tmp_path, target):
    # 4 x 8 = 32 accumulators plus 4 weight vectors: more than 32 zmm or 16 ymm.
    big = cnngen.compile(CONV, cache_dir=tmp_path, target=target,
                         schedules={"c": ConvSchedule(4, 8, 1, 1)})
    # 2 x 4 = 8 accumulators, 2 weights and a broadcast fit 16 registers.
    small = cnngen.compile(CONV, cache_dir=tmp_path, target=target,
                           schedules={"c": ConvSchedule(2, 4, 1, 1)})
    assert conv_kernel(big).spills > 0
    assert conv_kernel(small).spills == 0
    # an explicit schedule is the user's choice: it runs, and stays correct
    x = np.random.default_rng(0).standard_normal((1, 64, 6, 14), np.float32)
    np.testing.assert_allclose(big(x), small(x), rtol=1e-4, atol=1e-4)


def test_the_count_is_kept_with_the_cache_entry(tmp_path):
    net = cnngen.compile(CONV, cache_dir=tmp_path, schedules={"c": ConvSchedule(4, 8, 1, 1)})
    kernel = conv_kernel(net)
    assert spill_report_path(kernel.path).is_file()
    # deleting the report makes the entry incomplete: the next process compiles it again
    spill_report_path(kernel.path).unlink()
    from cnngen.codegen.locator import has_machine_code
    assert not has_machine_code(kernel.path)


def test_a_heuristic_tile_that_spills_is_replaced_by_the_next_best(tmp_path, monkeypatch):
    spilling, clean = ConvSchedule(4, 8, 1, 1), ConvSchedule(2, 4, 1, 1)
    monkeypatch.setattr(sched, "conv_ranked", lambda work, target: [spilling, clean])
    net = cnngen.compile(CONV, cache_dir=tmp_path)
    kernel = conv_kernel(net)
    assert str(clean) in kernel.name and kernel.spills == 0
    report = explain(net)
    entry = next(k for k in report.kernels if k.kernel == kernel.name)
    assert entry.spills == 0
    assert f"replaced tiles that spilled: {spilling} spilled" in entry.schedule_source
    assert "spills:   0 in its reduction loops" in str(report)


@pytest.mark.parametrize("zoo", ["resnet18", "vgg16"])
@pytest.mark.parametrize("target", ["cpu", "cpu-avx2"])
@pytest.mark.slow
def test_no_default_conv_tile_of_resnet18_or_vgg16_spills(zoo, target):
    net = cnngen.compile(getattr(cnngen.zoo, zoo)(), target=target)
    kernels = [s.kernel for s in net.plan(1).steps if s.call.kernel.schedule is not None]
    assert kernels and all(k.spills == 0 for k in kernels), \
        [(k.name, k.spills) for k in kernels if k.spills]
