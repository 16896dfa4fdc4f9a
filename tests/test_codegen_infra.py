"""Target detection, template rendering and the kernel cache."""
import os
import subprocess
import sys
import textwrap

import pytest

import cnngen
from cnngen.codegen import render
from cnngen.codegen.cache import KernelCache
from cnngen.errors import CnngenError
from cnngen.target import ISA_WIDTH, cpu, host, resolve


def test_host_target_is_stable_and_readable():
    t = host()
    assert t.vector == ISA_WIDTH[t.isa]
    assert t.cores >= 1 and t.l1d_bytes > 0
    assert t.fingerprint == host().fingerprint
    assert t.isa in str(t) and t.cpu_name in str(t)


def test_narrowed_target_has_its_own_width_and_fingerprint():
    if host().vector < 8:
        pytest.skip("host has no AVX2")
    avx2 = resolve("cpu-avx2")
    assert avx2.vector == 8 and avx2.isa == "avx2"
    assert avx2.fingerprint != host().fingerprint or host().isa == "avx2"
    assert resolve("cpu-sse").vector == 4


def test_unknown_or_unavailable_targets_are_errors():
    with pytest.raises(CnngenError, match="unknown target 'tpu'"):
        resolve("tpu")
    with pytest.raises(CnngenError, match="unknown instruction set 'neon'"):
        cpu("neon")
    if host().isa != "avx512":
        with pytest.raises(CnngenError, match="has no avx512"):
            cpu("avx512")


def test_render_refuses_missing_and_unused_holes(monkeypatch, tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "t.py.tmpl").write_text("# ${kernel_name}\nA = ${a}\nB = ${b}\n")
    monkeypatch.setattr(render, "templates_dir", lambda: tmp_path)
    render.template_text.cache_clear()
    try:
        assert render.render("cpu", "t", {"a": 1, "b": 2.5}, {"kernel_name": "k"}) == "# k\nA = 1\nB = 2.5\n"
        with pytest.raises(KeyError, match=r"missing holes \['b'\]"):
            render.render("cpu", "t", {"a": 1}, {"kernel_name": "k"})
        with pytest.raises(KeyError, match=r"unused values \['c'\]"):
            render.render("cpu", "t", {"a": 1, "b": 2, "c": 3}, {"kernel_name": "k"})
    finally:
        render.template_text.cache_clear()


@pytest.mark.parametrize("value", ["x; import os", "a b", float("inf"), float("nan"), [1, 2], None, (1, "a")])
def test_only_checked_literals_reach_source(value):
    with pytest.raises(ValueError):
        render.literal(value)


def test_literals():
    assert render.literal(3) == "3"
    assert render.literal(True) == "True"
    assert render.literal(0.01) == "0.01"
    assert render.literal("relu") == "relu"
    assert render.literal((1, 2)) == "(1, 2, )"


def test_header_text_cannot_inject_code(monkeypatch, tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "t.py.tmpl").write_text("# ${kernel_name}\nA = 1\n")
    monkeypatch.setattr(render, "templates_dir", lambda: tmp_path)
    render.template_text.cache_clear()
    try:
        text = render.render("cpu", "t", {}, {"kernel_name": "k\nimport os"})
        assert text.splitlines()[0] == "# k import os" and len(text.splitlines()) == 2
    finally:
        render.template_text.cache_clear()


KERNEL = textwrap.dedent('''
    from numba import cfunc
    from cnngen.codegen.parallel import TASK
    SCALE = {scale}
    TASKS = 2

    @cfunc(TASK, cache=True)
    def task(task_id, n_batch, x, a1, a2, a3, a4, a5):
        x[task_id] *= SCALE
''')


def run_kernel(loaded, values):
    import numpy as np
    from cnngen.codegen.parallel import run_serial
    x = np.array(values + [0.0] * (2 - len(values)), np.float32)
    run_serial(loaded.fn.address, loaded.task_count(1), 1, x, x, x, x, x, x)
    return x[:len(values)].tolist()


def test_cache_compiles_once_then_hits_in_a_fresh_process(tmp_path):
    source = KERNEL.format(scale=3.0)
    first = KernelCache(tmp_path).load("scale", source, host())
    assert not first.cache_hit and first.path.parent == tmp_path
    assert run_kernel(first, [1, 2]) == [3, 6]
    script = textwrap.dedent(f'''
        from cnngen.codegen.cache import KernelCache
        from cnngen.target import host
        k = KernelCache({str(tmp_path)!r}).load("scale", {source!r}, host())
        print(k.cache_hit, k.path.name)
    ''')
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", first.path.name]


def test_cache_key_covers_source_and_target(tmp_path):
    cache = KernelCache(tmp_path)
    a = cache.load("scale", KERNEL.format(scale=2.0), host())
    b = cache.load("scale", KERNEL.format(scale=5.0), host())
    assert a.path != b.path
    assert run_kernel(a, [1]) == [2] and run_kernel(b, [1]) == [5]
    if host().isa == "sse":
        pytest.skip("the host is SSE-only: no narrower target to compare its cache key with")
    c = cache.load("scale", KERNEL.format(scale=2.0), resolve("cpu-sse"))
    assert c.path != a.path


def run_in_fresh_process(cache_dir, source) -> list[float]:
    """Load the scale kernel ``source`` from ``cache_dir`` in a new process and run it on ones."""
    script = textwrap.dedent(f'''
        import numpy as np
        from cnngen.codegen.cache import KernelCache
        from cnngen.codegen.parallel import run_serial
        from cnngen.target import host
        k = KernelCache({str(cache_dir)!r}).load("scale", {source!r}, host())
        x = np.ones(2, np.float32); run_serial(k.fn.address, k.task_count(1), 1, x, x, x, x, x, x)
        print(x.tolist())
    ''')
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [float(v) for v in out.stdout.strip().strip("[]").split(",")]


def test_corrupt_source_file_is_rewritten_not_trusted(tmp_path):
    source = KERNEL.format(scale=7.0)
    path = KernelCache(tmp_path).load("scale", source, host()).path
    path.write_text(source.replace("SCALE = 7.0", "SCALE = -1.0"))
    # this process keeps the kernel it loaded; a fresh one finds the edit and rewrites the file
    assert run_kernel(KernelCache(tmp_path).load("scale", source, host()), [1]) == [7]
    assert run_in_fresh_process(tmp_path, source) == [7.0, 7.0]
    assert path.read_text() == source


def test_corrupt_numba_cache_entry_is_rebuilt(tmp_path):
    source = KERNEL.format(scale=4.0)
    path = KernelCache(tmp_path).load("scale", source, host()).path
    entries = list((tmp_path / "__pycache__").glob(f"{path.stem}.*"))
    assert entries
    for entry in entries:
        entry.write_bytes(b"\x80garbage")
    assert run_in_fresh_process(tmp_path, source) == [4.0, 4.0]


def test_no_temporary_files_are_left_behind(tmp_path):
    KernelCache(tmp_path).load("scale", KERNEL.format(scale=1.5), host())
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    from cnngen.codegen.cache import default_dir
    monkeypatch.setenv("CNNGEN_CACHE_DIR", str(tmp_path / "k"))
    assert default_dir() == tmp_path / "k"
    monkeypatch.delenv("CNNGEN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_dir() == tmp_path / "cnngen"


def test_parallel_compile_works_from_a_script_without_a_main_guard(tmp_path):
    """New kernels compile in worker processes; a plain script is never re-imported by them."""
    script = tmp_path / "plain.py"
    script.write_text(textwrap.dedent(f'''
        import numpy as np, cnngen
        spec = {{"cnngen": 1, "name": "p", "input": {{"shape": [3, 8, 8]}},
                "layers": [{{"name": "c", "op": "conv2d", "filters": 4, "kernel": 3}},
                           {{"name": "p", "op": "maxpool2d", "size": 2}},
                           {{"name": "c2", "op": "conv2d", "filters": 4, "kernel": 1}}]}}
        net = cnngen.compile(spec, cache_dir={str(tmp_path / "k")!r})
        print("ran", net(np.ones((1, 3, 8, 8), np.float32)).shape,
              sum(not k.cache_hit for k in net.kernels))
    '''))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    # to_blocked, conv+maxpool (one fused kernel), conv, from_blocked: enough to compile in parallel
    assert out.stdout.split() == ["ran", "(1,", "4,", "3,", "3)", "4"]
