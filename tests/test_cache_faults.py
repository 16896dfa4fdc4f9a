"""The kernel cache under load and under faults: kernels shared in-process and across threads,
compile workers recycled, $NUMBA_CACHE_DIR, a read-only pre-built cache, and file-system errors
that name the path and the fix."""
import builtins
import collections
import errno
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import numba.core.caching
import pytest

from cnngen import files
from cnngen.codegen import cache, workers
from cnngen.codegen.cache import KernelCache, kernel_key
from cnngen.codegen.locator import has_machine_code
from cnngen.errors import CnngenError
from cnngen.target import host
from tests.test_codegen_infra import KERNEL, run_kernel

# The compile workers start only for 2+ cores; a 2-core target makes the tests take that path.
TWO_CORES = replace(host(), cores=2)
NET = {"cnngen": 1, "name": "ro", "input": {"shape": [3, 8, 8]},
       "layers": [{"name": "c", "op": "conv2d", "filters": 4, "kernel": 3},
                  {"name": "p", "op": "maxpool2d", "size": 2},
                  {"name": "c2", "op": "conv2d", "filters": 4, "kernel": 1}]}
# A fresh process that loads kernels and reports them as JSON on its last line.
LOAD_SCRIPT = textwrap.dedent('''
    import json, sys
    from dataclasses import replace
    import numpy as np
    from cnngen.codegen import workers
    from cnngen.codegen.cache import KernelCache
    from cnngen.codegen.parallel import run_serial
    from cnngen.target import host
    directory, sources = sys.argv[1], json.loads(sys.argv[2])
    kernels = KernelCache(directory).load_all([("scale", s) for s in sources],
                                              replace(host(), cores=2))
    values = []
    for k in kernels:
        x = np.ones(2, np.float32); run_serial(k.fn.address, k.task_count(1), 1, x, x, x, x, x, x)
        values.append(float(x[0]))
    print(json.dumps({"hits": [k.cache_hit for k in kernels], "values": values,
                      "stems": [k.path.stem for k in kernels],
                      "workers": sum(p.started for p in workers._pools.values())}))
''')


def scale_sources(*scales):
    return [KERNEL.format(scale=s) for s in scales]


def run_fresh(script, *args, env=None):
    out = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


# -- item 5: one import per kernel per process ------------------------------------------------

def test_every_cache_in_a_process_shares_one_import_of_a_kernel(tmp_path, monkeypatch):
    source = KERNEL.format(scale=6.0)
    first = KernelCache(tmp_path).load("scale", source, host())
    assert not first.from_memory and run_kernel(first, [1]) == [6]
    monkeypatch.setattr(cache, "_import", lambda *a: pytest.fail("a kernel was imported again"))
    (tmp_path.parent / f"{tmp_path.name}-link").symlink_to(tmp_path)
    again = [KernelCache(d).load("scale", source, host())
             for d in [tmp_path] * 200 + [f"{tmp_path}/../{tmp_path.name}", f"{tmp_path}-link"]]
    again += KernelCache(tmp_path).load_all([("scale", source)] * 3, host())
    assert all(k is again[0] for k in again)
    shared = again[0]
    assert shared.fn is first.fn and shared.path == first.path and shared.task_count is first.task_count
    assert shared.from_memory and shared.cache_hit and shared.seconds == 0.0


def test_the_same_kernel_in_another_directory_is_its_own(tmp_path):
    source = KERNEL.format(scale=8.0)
    a = KernelCache(tmp_path / "a").load("scale", source, host())
    b = KernelCache(tmp_path / "b").load("scale", source, host())
    assert a.fn is not b.fn and a.path.name == b.path.name and a.path != b.path
    assert run_kernel(a, [1]) == run_kernel(b, [1]) == [8]


def test_threads_compiling_one_net_import_and_compile_each_kernel_once(tmp_path, monkeypatch):
    imports, compiled = collections.Counter(), []
    real_import, real_compile = cache._import, workers.CompileWorkers.compile

    def slow_import(stem, path):
        imports[stem] += 1
        time.sleep(0.05)                   # widen the window in which a second import could start
        return real_import(stem, path)

    def counted_compile(self, files):
        compiled.extend(p.stem for p in files)
        return real_compile(self, files)

    monkeypatch.setattr(cache, "_import", slow_import)
    monkeypatch.setattr(workers.CompileWorkers, "compile", counted_compile)
    kernels = [("scale", s) for s in scale_sources(11.0, 12.0, 13.0)]
    start, results = threading.Barrier(4), [None] * 4

    def compile_net(i):
        start.wait()
        results[i] = KernelCache(tmp_path).load_all(kernels, TWO_CORES)

    threads = [threading.Thread(target=compile_net, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert all(r is not None for r in results)
    assert len(imports) == 3 and set(imports.values()) == {1}
    assert len(compiled) == len(set(compiled)) == 3
    for r in results:
        assert [run_kernel(k, [1]) for k in r] == [[11], [12], [13]]
        assert [k.fn for k in r] == [k.fn for k in results[0]]


# -- item 8: bounded compile workers ----------------------------------------------------------

def kernel_files(directory: Path, scales):
    """Kernel source files as KernelCache writes them; none compiled yet."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for source in scale_sources(*scales):
        path = directory / f"scale_{kernel_key(source, host())}.py"
        path.write_text(source)
        paths.append(path)
    return paths


@pytest.mark.parametrize("per_worker, rss_bytes, started", [(2, 2**40, 4), (10**6, 1, 7)])
def test_workers_are_replaced_after_a_bounded_number_of_kernels_or_bytes(
        tmp_path, monkeypatch, per_worker, rss_bytes, started):
    monkeypatch.setattr(workers, "KERNELS_PER_WORKER", per_worker)
    monkeypatch.setattr(workers, "WORKER_RSS_BYTES", rss_bytes)
    scales = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    files = kernel_files(tmp_path, scales)
    pool, retired = workers.CompileWorkers(2), []
    real_retire = pool._retire
    monkeypatch.setattr(pool, "_retire", lambda w: (retired.append(w), real_retire(w)))
    try:
        done = pool.compile(files)
        assert sorted(done) == sorted(p.stem for p in files)
        assert pool.started == started and len(pool.procs) <= 2
        assert all(w.kernels <= per_worker for w in retired + pool.procs)
        assert all(0 < w.rss_bytes < 2**31 for w in retired + pool.procs)
        for w in retired:                      # a retired worker exits: it does not linger
            assert w.proc.wait(timeout=60) == 0
    finally:
        pool.close()
    loaded = KernelCache(tmp_path).load_all([("scale", s) for s in scale_sources(*scales)], host())
    assert all(k.cache_hit for k in loaded)
    assert [run_kernel(k, [1])[0] for k in loaded] == scales


def test_a_dead_worker_is_replaced_in_the_next_batch(tmp_path):
    pool = workers.CompileWorkers(2)
    try:
        assert pool.compile(kernel_files(tmp_path / "a", [21.0, 22.0]))
        for w in pool.procs:
            w.proc.kill()
            w.proc.wait()
        assert len(pool.compile(kernel_files(tmp_path / "b", [23.0, 24.0]))) == 2
        assert pool.started == 4
    finally:
        pool.close()


# -- item 9: $NUMBA_CACHE_DIR ----------------------------------------------------------------

def test_numba_cache_dir_neither_hides_hits_nor_corrupt_entries(tmp_path):
    numba_dir, kernels = tmp_path / "numba", tmp_path / "kernels"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(numba_dir)}
    sources = json.dumps(scale_sources(2.0, 3.0, 5.0))
    first = run_fresh(LOAD_SCRIPT, kernels, sources, env=env)
    assert first["hits"] == [False] * 3 and first["values"] == [2, 3, 5] and first["workers"] > 0
    for stem in first["stems"]:
        assert list((kernels / "__pycache__").glob(f"{stem}.*.nbi"))
        assert not [p for p in numba_dir.rglob("*") if stem in p.name]
    again = run_fresh(LOAD_SCRIPT, kernels, sources, env=env)
    assert again["hits"] == [True] * 3 and again["workers"] == 0

    corrupt = [p for d in (kernels, numba_dir) for p in d.rglob("*.nbc")
               if any(stem in p.name for stem in first["stems"])]
    assert len(corrupt) == 3
    for p in corrupt:
        p.write_bytes(b"\x80garbage")
    repaired = run_fresh(LOAD_SCRIPT, kernels, sources, env=env)
    assert repaired["values"] == [2, 3, 5] and repaired["hits"] == [False] * 3
    assert run_fresh(LOAD_SCRIPT, kernels, sources, env=env)["hits"] == [True] * 3


# -- item 10: a read-only pre-built cache ------------------------------------------------------

@pytest.fixture
def read_only(tmp_path):
    """A directory to fill and then make read-only; writable again after the test."""
    directory = tmp_path / "ro"
    directory.mkdir()
    yield directory
    for dirpath, _, _ in os.walk(directory):
        os.chmod(dirpath, 0o755)


def snapshot(*roots: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
            for root in roots for p in [root, *root.rglob("*")]}


PROBE = textwrap.dedent("""
    import os, sys
    try:
        open(os.path.join(sys.argv[1], "probe"), "w").close()
        sys.exit("the cache is writable for this test's reader, so the test proves nothing")
    except OSError:
        pass
""")
# Bind-mounts $0 read-only in a private mount namespace, then runs the command.
READ_ONLY_MOUNT = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" || exit 97; exec "$@"'


def run_as_reader(script: str, read_only: Path, home: Path, *args) -> dict:
    """Run ``script`` in a fresh Python that cannot write ``read_only``; argv: read_only, *args.

    Root ignores permission bits, so as root the script runs in a private mount namespace
    where ``read_only`` is a read-only mount, as in a read-only container image; otherwise
    chmod makes it read-only. ``home`` (and $XDG_CACHE_HOME under it) stays writable, so a
    stray write, such as Numba's ~/.cache/numba fallback, lands there and is seen.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "CNNGEN_CACHE_DIR")}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    for dirpath, dirnames, filenames in os.walk(read_only):
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o444)
        os.chmod(dirpath, 0o555)
    command = [sys.executable, "-c", PROBE + script, str(read_only), *map(str, args)]
    if os.geteuid() == 0:
        if not shutil.which("unshare"):
            pytest.skip("running as root, which ignores chmod, and without `unshare` to mount "
                        "the cache read-only: cannot test a read-only cache here")
        command = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                   READ_ONLY_MOUNT, str(read_only), *command]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    if out.returncode == 97 or out.returncode and out.stderr.startswith("unshare:"):
        pytest.skip(f"running as root, which ignores chmod, and this machine refuses a private "
                    f"read-only mount: cannot test a read-only cache here ({out.stderr.strip()})")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_a_complete_read_only_cache_loads_with_no_compile_and_no_write(read_only, tmp_path):
    import cnngen
    kernels, home = read_only / "kernels", tmp_path / "home"
    home.mkdir()
    cnngen.compile(NET, cache_dir=kernels).plan(1)
    sources = scale_sources(2.0, 3.0, 5.0)
    KernelCache(kernels).load_all([("scale", s) for s in sources], TWO_CORES)
    before = snapshot(read_only, home)
    report = run_as_reader(textwrap.dedent(f"""
        import json, cnngen
        from dataclasses import replace
        from cnngen.codegen import workers
        from cnngen.codegen.cache import KernelCache
        from cnngen.target import host
        net = cnngen.compile({NET!r}, cache_dir=sys.argv[2])
        net.plan(1)
        scale = KernelCache(sys.argv[2]).load_all([("scale", s) for s in json.loads(sys.argv[3])],
                                                  replace(host(), cores=2))
        kernels = net.kernels + scale
        print(json.dumps({{"compiled": sum(not k.cache_hit for k in kernels),
                          "kernels": len(kernels),
                          "workers": sum(p.started for p in workers._pools.values())}}))
    """), read_only, home, kernels, json.dumps(sources))
    assert report == {"compiled": 0, "kernels": 7, "workers": 0}
    assert snapshot(read_only, home) == before


def test_a_read_only_cache_that_lacks_kernels_says_so(read_only, tmp_path):
    empty, partial, home = read_only / "empty", read_only / "partial", tmp_path / "home"
    empty.mkdir()
    home.mkdir()
    no_code, corrupt = (KernelCache(partial).load("scale", s, host()).path
                        for s in scale_sources(31.0, 32.0))
    for entry in (partial / "__pycache__").glob(f"{no_code.stem}.*"):
        entry.unlink()
    for entry in (partial / "__pycache__").glob(f"{corrupt.stem}.*.nbc"):
        entry.write_bytes(b"\x80garbage")
    messages = run_as_reader(textwrap.dedent("""
        import json
        from cnngen.codegen.cache import KernelCache
        from cnngen.errors import CnngenError
        from cnngen.target import host
        new, no_code, corrupt = json.loads(sys.argv[4])
        messages = []
        for directory, source in [(sys.argv[2], new), (sys.argv[3], new), (sys.argv[3], no_code),
                                  (sys.argv[3], corrupt)]:
            try:
                KernelCache(directory).load("scale", source, host())
                messages.append("loaded")
            except CnngenError as error:
                messages.append(str(error))
        print(json.dumps(messages))
    """), read_only, home, empty, partial, json.dumps(scale_sources(30.0, 31.0, 32.0)))
    fix = r"point CNNGEN_CACHE_DIR \(or cache_dir=, --cache-dir\) at a writable directory"
    empty, partial = re.escape(str(empty)), re.escape(str(partial))
    expected = [rf"{empty} is read-only and holds no kernels: there is nothing to load.*{fix}",
                rf"{partial} is read-only and lacks the source file for 1 kernel.*{fix}",
                rf"{partial} is read-only and lacks compiled code .* "
                rf"\(first: {re.escape(no_code.name)}\).*{fix}",
                rf"{partial} is read-only and its compiled code for {re.escape(corrupt.name)} "
                r"does not load"]
    for message, pattern in zip(messages, expected):
        assert re.search(pattern, message), message
    assert not list(home.rglob("*"))


# -- item 11 and 14: file-system faults -------------------------------------------------------

def test_a_cache_dir_that_is_a_file_or_lies_under_one_is_an_error(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    name = re.escape(str(afile))
    with pytest.raises(CnngenError, match=rf"expected a directory; received {name}, which is a"):
        KernelCache(afile)
    with pytest.raises(CnngenError, match=rf"{name}/k/x, which lies under the file {name}\."):
        KernelCache(afile / "k" / "x")


def test_an_empty_cache_dir_is_an_error_not_the_current_directory(tmp_path, monkeypatch):
    import cnngen
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CnngenError, match="received an empty string, which would put kernels "
                                          "in the current directory"):
        KernelCache("")
    with pytest.raises(CnngenError, match="empty string"):
        cnngen.compile(NET, cache_dir="")
    assert not os.listdir(tmp_path)


class FullDisk:
    """A file whose writes stop halfway with ENOSPC, as on a full disk."""

    def __init__(self, fd, *args, **kwargs):
        self.file = builtins.open(fd, *args, **kwargs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def write(self, text):
        self.file.write(text[:len(text) // 2])
        self.file.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_writing_a_kernel_leaves_nothing_and_says_what(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "open", FullDisk, raising=False)
    with pytest.raises(CnngenError, match=rf"disk is full: writing {re.escape(str(tmp_path))}/"
                                          r"scale_\w+\.py failed \(No space left on device\); "
                                          r"nothing was left half-written. Free some space"):
        KernelCache(tmp_path).load("scale", KERNEL.format(scale=41.0), host())
    assert os.listdir(tmp_path) == []


def test_a_full_disk_while_numba_saves_leaves_no_entry(tmp_path, monkeypatch):
    def full(self, name, data):
        with self._open_for_write(self._data_path(name)) as f:
            f.write(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(numba.core.caching.IndexDataCacheFile, "_save_data", full)
    source = KERNEL.format(scale=42.0)
    with pytest.raises(CnngenError,
                       match=rf"disk is full: compiling {re.escape(str(tmp_path))}/scale_\w+\.py"):
        KernelCache(tmp_path).load("scale", source, host())
    path = tmp_path / f"scale_{kernel_key(source, host())}.py"
    assert path.read_text() == source and path.stem not in sys.modules
    assert not [p.name for p in (tmp_path / "__pycache__").iterdir()
                if ".nb" in p.name or "tmp" in p.name]
    monkeypatch.undo()
    assert run_kernel(KernelCache(tmp_path).load("scale", source, host()), [1]) == [42]
    assert has_machine_code(path)


def test_a_directory_in_place_of_a_kernel_file_is_replaced(tmp_path):
    source = KERNEL.format(scale=43.0)
    path = tmp_path / f"scale_{kernel_key(source, host())}.py"
    (path / "inner").mkdir(parents=True)
    (path / "inner" / "x").write_text("stray")
    loaded = KernelCache(tmp_path).load("scale", source, host())
    assert path.is_file() and path.read_text() == source and run_kernel(loaded, [1]) == [43]


def test_a_file_in_place_of_pycache_is_replaced(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "__pycache__").write_text("stray")
    loaded = KernelCache(tmp_path).load("scale", KERNEL.format(scale=44.0), host())
    assert run_kernel(loaded, [1]) == [44] and has_machine_code(loaded.path)
    assert stat.S_ISDIR((tmp_path / "__pycache__").stat().st_mode)
