"""Atomic writes: a folder or file either appears complete or not at all, and never takes what it did not write."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence


def _umask() -> int:
    """The process's umask (reading it means setting it; it is restored at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # as open() would create it: mkstemp makes it private (0600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _plain_permissions(folder: Path) -> None:
    """Give everything under ``folder`` the permissions a plain write gives: some writers (safetensors' ``save_file``,
    ``tempfile``) create private 0600 files, which other users of a shared run folder then cannot read."""
    mask = _umask()
    for root, folders, files in os.walk(folder):
        for name in folders:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def _staging_beside(path: Path) -> Path:
    """An empty hidden folder next to ``path`` (same file system, so it can be renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.staging-"))
    os.chmod(staging, 0o777 & ~_umask())  # as mkdir would create it: mkdtemp makes it private (0700)
    return staging


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike):
    """Yield a staging folder beside ``path``; on success it replaces ``path`` whole, on error it is removed."""
    path = Path(path)
    staging = _staging_beside(path)
    try:
        yield staging
        _plain_permissions(staging)
        if path.exists():
            backup = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
            os.replace(path, backup / "old")
            os.replace(staging, path)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def staged_entries(path: str | os.PathLike, *, marker: str, stale: Sequence[str] = ()):
    """Yield a staging folder whose files then replace the same-named files of ``path``; nothing else is touched.

    For saving into a folder that may hold other things (a run folder with its checkpoints, predictions and a
    user's files), which :func:`atomic_directory` would delete. Folders are merged, not replaced: a staged
    ``task_1/`` adds its files to an existing ``task_1/`` (where Trainer keeps that task's checkpoints). A new
    ``path`` appears whole. An existing one loses ``marker`` (the file that says the save is complete) first, gets
    every other file swapped in, then the new ``marker``: an interrupted save leaves a folder without one, never a
    mix that looks complete. ``stale``: files (paths relative to ``path``) an earlier save wrote that this one does
    not; they go too, and so do the folders they leave empty. On error, the staging folder is removed.
    """
    path = Path(path)
    staging = _staging_beside(path)
    try:
        yield staging
        _plain_permissions(staging)
        if not path.exists():
            os.replace(staging, path)
            return
        backup = Path(tempfile.mkdtemp(dir=path, prefix=".replaced-"))
        _move_aside(path, marker, backup)
        for name in stale:
            _move_aside(path, name, backup)
            parent = (path / name).parent
            while parent != path and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
        _merge(staging, path, backup, skip=marker)
        os.replace(staging / marker, path / marker)
        shutil.rmtree(backup, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_aside(root: Path, name: str, backup: Path) -> None:
    """Move ``root/name`` (if there) to the same relative place under ``backup``."""
    if (root / name).exists() or (root / name).is_symlink():
        (backup / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(root / name, backup / name)


def _merge(source: Path, target: Path, backup: Path, skip: str = "") -> None:
    """Move ``source``'s files into ``target``, into existing folders of the same name; replaced files go to ``backup``."""
    for entry in source.iterdir():
        destination = target / entry.name
        if entry.name == skip:
            continue
        if entry.is_dir() and destination.is_dir() and not destination.is_symlink():
            _merge(entry, destination, backup / entry.name)
            continue
        _move_aside(target, entry.name, backup)
        os.replace(entry, destination)
