"""Stack spills in a kernel's inner loops, read from its machine code.

Register arithmetic is a guess about LLVM (it unrolls lane loops and hoists broadcasts), so
the assembly decides whether a register tile fits. After a kernel compiles, its optimised
LLVM module is emitted once more as verbose assembly, where LLVM marks every stack spill
and reload (``# 32-byte Spill``, ``# 64-byte Folded Reload``), for the kernel's target:

- the host's own CPU when the target is the host (the code that will run);
- a generic CPU of the target's instruction set when the target is narrowed
  (``cpu-avx2`` on an AVX-512 machine), so that the 16-register file of a real AVX2 CPU
  is what is checked, not the 32 registers this machine happens to have.

Loops are read off the assembly: a jump back to an earlier label of the same function closes
a loop. The count is the vector (16 bytes or wider) spills and reloads inside the innermost
loops that hold an FMA, the reduction loops where a spill costs a memory round trip per
multiply-add. Spills outside them (set-up, epilogue) are cheap and not counted.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from ..target import detected

# A generic CPU per instruction set: its register file is what a kernel must fit.
ISA_CPU = {"avx512": ("x86-64-v4", ""), "avx2": ("x86-64-v3", ""), "sse": ("x86-64-v2", "")}
LABEL = re.compile(r"^(\.LBB\d+_\d+):")
JUMP = re.compile(r"^\s+j[a-z]+\s+(\.LBB\d+_\d+)")
SPILL = re.compile(r"#\s+(\d+)-byte (?:Folded )?(Spill|Reload)")
FMA = re.compile(r"^\s+v?f(?:n?m(?:add|sub))\w*\s")


@dataclass(frozen=True)
class SpillReport:
    """Vector spills and reloads: in the reduction loops (what counts) and in the whole kernel."""

    in_loops: int
    anywhere: int
    loops: int          # reduction loops found

    def __str__(self) -> str:
        return f"{self.in_loops} in {self.loops} reduction loop(s), {self.anywhere} in all"


def count_spills(asm: str) -> SpillReport:
    """The vector spills and reloads in ``asm`` (verbose assembly of a kernel module)."""
    lines = asm.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := LABEL.match(line))}
    loops = sorted({(labels[m.group(1)], i) for i, line in enumerate(lines)
                    if (m := JUMP.match(line)) and labels.get(m.group(1), i + 1) <= i})
    innermost = [(a, b) for a, b in loops
                 if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in loops)]
    reduction = [(a, b) for a, b in innermost
                 if any(FMA.match(lines[i]) for i in range(a, b + 1))]

    def vector_spill(i: int) -> bool:
        m = SPILL.search(lines[i])
        return m is not None and int(m.group(1)) >= 16

    in_loops = sum(vector_spill(i) for a, b in reduction for i in range(a, b + 1))
    return SpillReport(in_loops, sum(map(vector_spill, range(len(lines)))), len(reduction))


@functools.lru_cache(maxsize=4)
def _machine(cpu_name: str, features: str):
    from llvmlite import binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    machine = llvm.Target.from_default_triple().create_target_machine(
        cpu=cpu_name, features=features, opt=3, reloc="default", codemodel="jitdefault")
    machine.set_asm_verbosity(True)
    return machine


def _machine_for(isa: str):
    host = detected()
    if isa == host.isa:
        return _machine(host.cpu_name, ",".join(f"+{f}" for f in host.features))
    return _machine(*ISA_CPU[isa])


def kernel_spills(cfunc, isa: str) -> SpillReport:
    """The spill report of a just-compiled cfunc (its optimised module, emitted for ``isa``)."""
    from llvmlite import binding as llvm

    module = llvm.parse_assembly(str(cfunc._library._final_module))
    return count_spills(_machine_for(isa).emit_assembly(module))
