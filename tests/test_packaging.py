"""The wheel carries the package and the top-level templates/ folder."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_templates_and_package(tmp_path):
    pytest.importorskip("build", reason="the 'build' package (dev extra) is needed to build a wheel")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel, = tmp_path.glob("cnngen-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    templates = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "templates").rglob("*")
                       if p.is_file())
    assert templates
    assert all(f"cnngen/{t}" in names for t in templates)
    assert "cnngen/spec/build.py" in names and "cnngen/ops/conv.py" in names
