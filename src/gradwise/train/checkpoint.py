"""Checkpoints that survive a crash at any moment and never execute code when loaded.

File layout: one header line, then the payload as written by ``torch.save``::

    GRADWISE-CHECKPOINT 1 sha256=<hex digest of the payload bytes>\\n
    <payload>

Writing goes to a temporary file in the same folder, which is flushed and fsynced and then
renamed over ``checkpoint.pt`` (the previous one is first kept as ``checkpoint.prev.pt``), so a
complete checkpoint is on disk at every moment. Loading checks the header, the version and the
checksum, then unpickles with ``torch.load(..., weights_only=True)``, which refuses any object
that is not plain data (tensors, numbers, strings, lists, dicts): a planted pickle cannot run.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path

import torch

from gradwise.errors import CheckpointError

MAGIC = b"GRADWISE-CHECKPOINT"
VERSION = 1
CURRENT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"


def save(payload: dict, folder: str | Path) -> Path:
    """Atomically write ``payload`` as ``folder/checkpoint.pt``; returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    header = b"%s %d sha256=%s\n" % (MAGIC, VERSION, hashlib.sha256(body).hexdigest().encode())
    target, previous = folder / CURRENT, folder / PREVIOUS
    tmp = folder / f".{CURRENT}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(header)
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    if target.exists():
        os.replace(target, previous)
    os.replace(tmp, target)
    _fsync_dir(folder)
    return target


def load_file(path: str | Path) -> dict:
    """Load one checkpoint file, verifying header, version and checksum (``CheckpointError``)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e.strerror}") from None
    header, _, body = data.partition(b"\n")
    parts = header.split(b" ")
    if len(parts) != 3 or parts[0] != MAGIC or not parts[2].startswith(b"sha256="):
        raise CheckpointError(f"{path} is not a gradwise checkpoint (no valid header)")
    if parts[1] != str(VERSION).encode():
        raise CheckpointError(
            f"{path} has checkpoint format version {parts[1].decode(errors='replace')}; "
            f"this gradwise reads version {VERSION}"
        )
    if hashlib.sha256(body).hexdigest().encode() != parts[2][len(b"sha256=") :]:
        raise CheckpointError(f"{path} is corrupted or truncated (checksum mismatch)")
    try:
        return torch.load(io.BytesIO(body), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsafe content"
        raise CheckpointError(
            f"{path} contains objects that are not plain data and was refused ({first})"
        ) from None


def load_latest(folder: str | Path) -> tuple[dict, Path, list[str]]:
    """The newest good checkpoint in ``folder``: (payload, path, problems with newer files).

    Falls back to ``checkpoint.prev.pt`` when ``checkpoint.pt`` is missing or damaged.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"cannot resume: {folder} is not a folder")
    problems = []
    for name in (CURRENT, PREVIOUS):
        path = folder / name
        if not path.exists():
            continue
        try:
            return load_file(path), path, problems
        except CheckpointError as e:
            problems.append(str(e))
    detail = ("; ".join(problems)) if problems else f"no {CURRENT} in it"
    raise CheckpointError(f"cannot resume from {folder}: {detail}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
