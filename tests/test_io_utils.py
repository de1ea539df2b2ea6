"""Atomic writes: complete or absent, never half-written, and created with the permissions a plain write gives."""

import os
import stat

import pytest

from peft_continual.io_utils import atomic_directory, atomic_write_bytes, atomic_write_text, staged_entries


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


@pytest.mark.parametrize("writer", ["atomic_directory", "staged_entries"])
def test_private_files_written_into_a_staging_folder_become_plain(writer, tmp_path, umask_022):
    """safetensors' save_file creates 0600 files: a saved run folder was unreadable by the other users of a server."""
    import safetensors.torch
    import torch

    def save(staging):
        safetensors.torch.save_file({"w": torch.zeros(2)}, str(staging / "adapter_model.safetensors"))
        (staging / "sub").mkdir(mode=0o700)
        (staging / "done.json").write_text("{}")

    for _ in range(2):  # a new folder, then the same folder again
        with (atomic_directory(tmp_path / "run") if writer == "atomic_directory"
              else staged_entries(tmp_path / "run", marker="done.json")) as staging:  # fmt: skip
            save(staging)
        assert mode(tmp_path / "run" / "adapter_model.safetensors") == 0o644
        assert mode(tmp_path / "run" / "sub") == 0o755


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


def test_staged_entries_replace_their_own_entries_only(tmp_path):
    folder = tmp_path / "run"
    with staged_entries(folder, marker="done.json") as staging:  # a new folder appears whole
        (staging / "done.json").write_text("1")
        (staging / "weights").write_text("1")
        (staging / "old_adapter").mkdir()
        (staging / "old_adapter" / "config").write_text("1")
        (staging / "task").mkdir()
        (staging / "task" / "config").write_text("1")
    (folder / "user.txt").write_text("mine")
    (folder / "task" / "checkpoint").mkdir()
    with staged_entries(folder, marker="done.json", stale=["old_adapter/config"]) as staging:
        (staging / "done.json").write_text("2")
        (staging / "weights").write_text("2")
        (staging / "task").mkdir()
        (staging / "task" / "config").write_text("2")
    assert sorted(p.name for p in folder.iterdir()) == ["done.json", "task", "user.txt", "weights"]
    assert sorted(p.name for p in (folder / "task").iterdir()) == ["checkpoint", "config"]
    assert (folder / "task" / "config").read_text() == "2"
    assert (folder / "weights").read_text() == "2" and (folder / "user.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_staged_entries_that_fail_change_nothing(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "done.json").write_text("old")

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with staged_entries(folder, marker="done.json") as staging:
            (staging / "done.json").write_text("new")
            raise Boom
    assert (folder / "done.json").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
