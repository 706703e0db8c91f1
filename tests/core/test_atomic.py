import os
import stat

import pytest

from core.atomic import write_atomic


def test_written_files_get_the_users_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "a.v", "module a; endmodule\n")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.umask(0o077)
        assert stat.S_IMODE(write_atomic(tmp_path / "b.bin", b"\x00").stat().st_mode) == 0o600
    finally:
        os.umask(old)
    assert (tmp_path / "a.v").read_text() == "module a; endmodule\n"


def test_failures_name_the_target_and_leave_nothing_behind(tmp_path):
    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'missing' / 'x.bin'}"):
        write_atomic(tmp_path / "missing" / "x.bin", b"1")
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        write_atomic(tmp_path / "folder", b"1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]
