"""Atomic writes: complete or absent, never half-written, and created with the permissions a plain write gives."""

import os
import stat

import pytest

from peft_continual.io_utils import atomic_directory, atomic_write_bytes, atomic_write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_and_folders_get_the_permissions_of_a_plain_write(tmp_path, umask_022):
    atomic_write_text(tmp_path / "result.json", "{}\n")
    with atomic_directory(tmp_path / "adapter") as staging:
        (staging / "weights.bin").write_bytes(b"x")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain.json").write_text("{}\n")
    assert mode(tmp_path / "result.json") == mode(tmp_path / "plain.json") == 0o644
    assert mode(tmp_path / "adapter") == mode(tmp_path / "plain") == 0o755


def test_a_failed_write_leaves_the_old_content_and_no_temporary_file(tmp_path):
    atomic_write_text(tmp_path / "result.json", "old\n")

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with atomic_directory(tmp_path / "folder") as staging:
            (staging / "half").write_text("x")
            raise Boom
    assert not (tmp_path / "folder").exists()
    with pytest.raises(TypeError):
        atomic_write_bytes(tmp_path / "result.json", "not bytes")  # fails inside the write, after mkstemp
    assert (tmp_path / "result.json").read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_a_folder_is_replaced_whole(tmp_path):
    with atomic_directory(tmp_path / "folder") as staging:
        (staging / "a").write_text("1")
    with atomic_directory(tmp_path / "folder") as staging:
        (staging / "b").write_text("2")
    assert sorted(p.name for p in (tmp_path / "folder").iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]
