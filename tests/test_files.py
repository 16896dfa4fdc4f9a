"""write_atomic: the new bytes or the old ones, never a mix; no temporary file survives an
error or an interrupt at any stage; the saved file gets the permissions a plain open gives."""
import errno
import os

import pytest

from cnngen import files
from cnngen.files import NoTempFile, cannot_save, write_atomic


def entries(folder):
    return sorted(p.name for p in folder.iterdir())


def test_writes_the_bytes_and_leaves_only_the_file(tmp_path):
    path = tmp_path / "out.bin"
    write_atomic(path, lambda f: f.write(b"first"))
    write_atomic(str(path), lambda f: (f.write(b"second, "), f.write(b"longer")))
    assert path.read_bytes() == b"second, longer"
    assert entries(tmp_path) == ["out.bin"]


def test_the_file_gets_the_umask_permissions_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "shared.npz", lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert (tmp_path / "shared.npz").stat().st_mode & 0o777 == 0o644


def half_then(error):
    def write(f):
        f.write(b"half a ")
        f.flush()
        raise error
    return write


@pytest.mark.parametrize("error", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space"),
                                   ValueError("bad value")], ids=lambda e: type(e).__name__)
def test_an_interrupted_write_leaves_the_old_file_and_no_temp(tmp_path, error):
    path = tmp_path / "run.ckpt"
    path.write_bytes(b"the old checkpoint")
    with pytest.raises(type(error)):
        write_atomic(path, half_then(error))
    assert path.read_bytes() == b"the old checkpoint"
    assert entries(tmp_path) == ["run.ckpt"]


def test_an_interrupt_at_the_rename_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "w.npz"
    path.write_bytes(b"old")

    def interrupted(src, dst):
        name = os.path.basename(src)
        assert name.startswith(".w.npz.") and name.endswith(".tmp") and os.path.exists(src)
        raise KeyboardInterrupt
    monkeypatch.setattr(files.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"old" and entries(tmp_path) == ["w.npz"]


def test_a_failed_write_to_a_new_path_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "new.csv", half_then(KeyboardInterrupt()))
    assert entries(tmp_path) == []


def test_nowhere_to_write_fails_before_writing(tmp_path):
    def never(f):
        pytest.fail("write ran although the file cannot be saved there")
    with pytest.raises(IsADirectoryError):
        write_atomic(tmp_path, never)
    with pytest.raises(NoTempFile) as missing:
        write_atomic(tmp_path / "missing" / "w.npz", never)
    assert missing.value.errno == errno.ENOENT
    (tmp_path / "file").write_text("")
    with pytest.raises(NoTempFile) as under_a_file:
        write_atomic(tmp_path / "file" / "w.npz", never)
    assert under_a_file.value.errno == errno.ENOTDIR
    assert entries(tmp_path) == ["file"]


def test_cannot_save_names_the_file_the_cause_and_the_fix(tmp_path):
    def message(path):
        with pytest.raises(OSError) as raised:
            write_atomic(path, half_then(OSError(errno.ENOSPC, "No space left on device")))
        return cannot_save("weights", path, raised.value, "weights.npz")

    (tmp_path / "file").write_text("")
    assert message(tmp_path) == (f"cannot save weights to '{tmp_path}': it is a directory; "
                                 f"expected a file path such as '{tmp_path}/weights.npz'.")
    assert message(tmp_path / "no" / "w.npz") == (
        f"cannot save weights to '{tmp_path}/no/w.npz': its directory '{tmp_path}/no' does "
        f"not exist. Create it first.")
    assert message(tmp_path / "file" / "w.npz") == (
        f"cannot save weights to '{tmp_path}/file/w.npz': '{tmp_path}/file' is not a "
        f"directory (it, or a folder above it, is a file).")
    assert message(tmp_path / "w.npz") == (
        f"cannot save weights to '{tmp_path}/w.npz': No space left on device; the file there "
        f"before, if any, is unchanged.")
