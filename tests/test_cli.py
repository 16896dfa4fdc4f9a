"""The ``cnngen`` command line, run as a user would: a subprocess per call."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def cnngen(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cnngen", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def test_check_prints_the_summary_table():
    result = cnngen("check", str(EXAMPLES / "lenet5.yaml"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "lenet5: 8 layers, input (N, 1, 32, 32), loss softmax_cross_entropy (l2=0.0005)"
    assert lines[1].split() == ["layer", "op", "output", "shape", "params", "mult-adds"]
    assert "c1     conv2d     (N, 6, 28, 28)      156    117,600" in lines
    assert lines[-2].split() == ["total", "61,706", "416,520"]


def test_check_json():
    result = cnngen("check", str(EXAMPLES / "lenet5.yaml"), "--json")
    summary = json.loads(result.stdout)
    assert summary["params"] == 61_706
    assert [layer["shape"] for layer in summary["layers"]][:2] == [[6, 28, 28], [6, 14, 14]]


def test_invalid_spec_exits_1_with_the_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((EXAMPLES / "lenet5.yaml").read_text().replace("filters: 16", "filters: 16, groups: 4"))
    result = cnngen("check", str(bad))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("cnngen: error: layer 'c3' (conv2d), field 'groups': "
                                    "input channels must be divisible by groups")
    assert "Traceback" not in result.stderr


def test_missing_file_exits_1():
    result = cnngen("check", "missing.yaml")
    assert (result.returncode, result.stderr) == (1, "cnngen: error: spec file 'missing.yaml' not found.\n")


def test_usage_error_exits_2():
    assert cnngen("chekc", "x.yaml").returncode == 2


@pytest.mark.parametrize("model", ["resnet18", "efficientnet_b0"])
def test_check_zoo_model(model):
    result = cnngen("check", f"zoo:{model}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2].startswith("total")


def test_zoo_lists_models_and_each_checks():
    listed = cnngen("zoo").stdout.split()
    assert "zoo:resnet50" in listed and "zoo:googlenet" in listed
    unknown = cnngen("check", "zoo:resnet81")
    assert unknown.returncode == 1 and "resnet18" in unknown.stderr


def test_every_zoo_model_checks_with_its_parameter_count(capsys):
    from cnngen import check, cli, zoo
    for name in zoo.MODELS:
        assert cli.main(["check", f"zoo:{name}"]) == 0
        total = capsys.readouterr().out.splitlines()[-2].split()
        assert total[:2] == ["total", f"{check(zoo.get(name)).params:,}"], name


def test_output_cut_short_by_a_closed_pipe_is_not_an_error():
    command = f"{sys.executable} -m cnngen check zoo:efficientnet_b0 | head -1"
    result = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120)
    assert result.stderr == ""


def test_compile_builds_then_loads_from_the_cache_in_a_fresh_process(tmp_path):
    spec = tmp_path / "two.yaml"
    spec.write_text("cnngen: 1\nname: two\ninput: {shape: [3, 12, 12]}\nlayers:\n"
                    "  - {name: c1, op: conv2d, filters: 8, kernel: 3, padding: same, activation: relu}\n"
                    "  - {name: c2, op: conv2d, filters: 4, kernel: 3, stride: 2}\n")
    cache = tmp_path / "kernels"
    first = cnngen("compile", str(spec), "--cache-dir", str(cache), "--batch", "2")
    assert first.returncode == 0, first.stderr
    assert "two: batch 2" in first.stdout
    assert "conv2d_relu__nchw" in first.stdout and "compiled" in first.stdout
    assert "4 kernels for 4 steps: 4 compiled" in first.stdout
    second = cnngen("compile", str(spec), "--cache-dir", str(cache), "--batch", "2")
    assert second.returncode == 0, second.stderr
    assert "0 compiled in 0.00 s, 4 loaded from the cache" in second.stdout


def test_compile_reports_spec_errors(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("cnngen: 1\nname: bad\ninput: {shape: [3, 4, 4]}\nlayers:\n"
                    "  - {name: c1, op: conv2d, filters: 8, kernel: 5}\n")
    result = cnngen("compile", str(spec), "--cache-dir", str(tmp_path / "k"))
    assert result.returncode == 1
    assert "c1" in result.stderr and "kernel" in result.stderr


def test_explain_shows_each_kernel_its_chain_schedule_source_and_profile(tmp_path):
    spec = tmp_path / "block.yaml"
    spec.write_text("cnngen: 1\nname: block\ninput: {shape: [3, 12, 12]}\nlayers:\n"
                    "  - {name: c1, op: conv2d, filters: 16, kernel: 3, padding: 1, bias: false}\n"
                    "  - {name: bn1, op: batchnorm}\n"
                    "  - {name: r1, op: relu}\n"
                    "  - {name: p1, op: maxpool2d, size: 2}\n"
                    "  - {name: gap, op: global_avgpool}\n"
                    "  - {name: fc, op: dense, units: 5}\n")
    result = cnngen("explain", str(spec), "--cache-dir", str(tmp_path / "k"), "--batch", "2",
                    "--profile", "--repeats", "3", "--source")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("block: batch 2")
    assert "layers:   c1, bn1, r1, p1" in out
    assert "ops:      conv2d -> bn -> relu -> maxpool2d" in out
    assert f"from heuristic (no tuning database at {tmp_path / 'k' / 'tuning.db'})" in out
    # 2 images x 16 filters x 12 x 12 pixels x 27 multiply-adds x 2
    assert "work:     249kFLOP" in out
    paths = [line.split("source:   ", 1)[1] for line in out.splitlines() if "source:   " in line]
    assert len(paths) == 5 and all(Path(p).is_file() for p in paths)   # edge, block, gap, fc, edge
    assert "# ops: conv2d -> bn -> relu -> maxpool2d" in out            # --source printed it
    shares = [float(line.split("%")[0].rsplit(None, 1)[1]) for line in out.splitlines()
              if line.startswith("[") and "%" in line]
    assert len(shares) == 5 and abs(sum(shares) - 100) < 0.5
    assert "profile: whole run" in out
    assert "activation memory" in out and "live at the peak" in out


def test_explain_names_an_explicit_schedule_by_the_spec_layer_it_was_given_for(kernel_cache):
    import cnngen as cg
    from cnngen.explain import explain
    from cnngen.schedule import ConvSchedule
    spec = {"cnngen": 1, "name": "one", "input": {"shape": [3, 8, 8]},
            "layers": [{"name": "c", "op": "conv2d", "filters": 16, "kernel": 3},
                       {"name": "r", "op": "relu"}]}
    net = cg.compile(spec, cache_dir=kernel_cache,
                     schedules={"c": ConvSchedule(oc_vecs=1, ow_tile=3, ic_block=1, rows=2)})
    (conv,) = [k for k in explain(net).kernels if not k.edge]
    assert conv.layers == ("c", "r") and conv.schedule == "oc1_ow3_ic1_rows2"
    assert conv.schedule_source == "explicit (schedules['c'])"


def test_explain_refuses_a_profile_of_no_launches(tmp_path):
    result = cnngen("explain", str(EXAMPLES / "lenet5.yaml"), "--cache-dir", str(tmp_path / "k"),
                    "--profile", "--repeats", "0")
    assert result.returncode == 1
    assert "repeats: expected an integer >= 1; received 0" in result.stderr


def test_empty_cache_dir_is_a_usage_error(tmp_path):
    """An empty --cache-dir (an unset shell variable) would mean the current directory."""
    result = cnngen("compile", str(EXAMPLES / "lenet5.yaml"), "--cache-dir", "", cwd=tmp_path)
    assert result.returncode == 2
    assert ("cnngen compile: error: argument --cache-dir: expected a directory path; received "
            "''. Omit --cache-dir for the default") in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_compile_prints_one_line(tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it, once the first
    kernel source is written (compiling has begun): one line, exit status 130."""
    cache = tmp_path / "kernels"
    # a suite started in the background of a shell inherits SIGINT ignored: undo that here
    proc = subprocess.Popen([sys.executable, "-m", "cnngen", "compile", "zoo:resnet18",
                             "--cache-dir", str(cache)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not any(cache.rglob("*.py")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert (proc.returncode, err) == (130, "cnngen: interrupted\n")


def test_interrupt_in_any_command_exits_130(monkeypatch, capsys):
    from cnngen import cli

    def interrupted(spec):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "check", interrupted)
    assert cli.main(["check", str(EXAMPLES / "lenet5.yaml")]) == 130
    assert capsys.readouterr().err == "cnngen: interrupted\n"


def test_check_refuses_a_device_and_an_impossible_size(tmp_path):
    result = cnngen("check", "/dev/zero")
    assert (result.returncode, result.stderr) == (
        1, "cnngen: error: spec path '/dev/zero' is a character device, not a regular file; "
           "expected a .yaml or .json file.\n")
    spec = tmp_path / "huge.yaml"
    spec.write_text("cnngen: 1\ninput: {shape: [2147483647, 2147483647, 2147483647]}\n"
                    "layers:\n  - {name: r, op: relu}\n")
    result = cnngen("check", str(spec))
    assert result.returncode == 1
    assert result.stderr.startswith("cnngen: error: field 'input.shape': the input (N, "
                                    "2147483647, 2147483647, 2147483647) has ")
    assert "the limit is 2,147,483,647 (2**31 - 1)" in result.stderr
