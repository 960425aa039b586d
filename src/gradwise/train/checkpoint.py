"""Checkpoints that survive a crash at any moment and never execute code when loaded.

File layout (version 2): the payload as ``torch.save`` writes it, a zip archive, whose comment
(the archive's last bytes) is the stamp::

    <payload: torch.save's zip, its end record giving the comment's length>
    GRADWISE-CHECKPOINT 2 sha256=<hex digest of the payload with an empty comment>

so that ``torch.load("checkpoint.pt", weights_only=True)`` reads a checkpoint as it is (zip
readers skip the comment). Version 1 files (a header line ``GRADWISE-CHECKPOINT 1 sha256=…``
before the payload), written by gradwise before, are still read.

Writing goes to a temporary file in the same folder, which is flushed and fsynced; the current
``checkpoint.pt`` is then hard-linked to ``checkpoint.prev.pt`` and the temporary file renamed over
``checkpoint.pt``. Each step is atomic, so whenever the process dies (SIGKILL, power cut) a
complete checkpoint is on disk, and ``checkpoint.pt`` itself is never missing once written. A
temporary file left by a killed write is never read, and the next save deletes it. SIGINT is held
back while a checkpoint is written, so Ctrl-C lands before or after a write, not inside it.

Loading checks the stamp, the version and the checksum, then unpickles with
``torch.load(..., weights_only=True)``, which refuses any object that is not plain data (tensors,
numbers, strings, lists, dicts): a planted pickle cannot run.

Fault injection for the test suite (``tests/test_reliability.py``): with the environment variable
``GRADWISE_TEST_CRASH_IN_CHECKPOINT=POINT:N`` the process kills itself with SIGKILL inside its
``N``-th call of :func:`save` (default 1), at ``POINT``: ``mid_tmp_write`` (half the temporary file
written), ``after_tmp_write`` (temporary file complete, nothing renamed) or ``after_prev_link``
(``checkpoint.prev.pt`` updated, ``checkpoint.pt`` not yet replaced). Unset, it costs one
dictionary lookup per save.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import signal
import threading
import warnings
from pathlib import Path

import torch

from gradwise.errors import CheckpointError, CheckpointWarning

MAGIC = b"GRADWISE-CHECKPOINT"
TMP_PREFIX = ".gradwise-tmp."  # temporary files: .gradwise-tmp.<pid>.<name>
VERSION = 2
#: a zip's end-of-central-directory record: its signature; the record is 22 bytes, the last two
#: the length of the comment that follows it
END_RECORD, END_RECORD_SIZE = b"PK\x05\x06", 22
CURRENT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"


def save(payload: dict, folder: str | Path) -> Path:
    """Atomically write ``payload`` as ``folder/checkpoint.pt``; returns its path."""
    global _saves
    _saves += 1
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = stamped(buffer.getvalue())
    target, previous = folder / CURRENT, folder / PREVIOUS
    tmp = folder / f"{TMP_PREFIX}{os.getpid()}.{CURRENT}"
    with _sigint_held():
        remove_stale_tmp(folder, keep=tmp)
        try:
            with open(tmp, "wb") as f:
                if _crash_point() == "mid_tmp_write":
                    f.write(data[: len(data) // 2])
                    _crash(f)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:  # e.g. a full disk: the old checkpoints stay as they were
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _crash_if("after_tmp_write")
        if target.exists():
            _keep_previous(target, previous, folder)
        _crash_if("after_prev_link")
        os.replace(tmp, target)
        _fsync_dir(folder)
    return target


def stamped(body: bytes, version: int = VERSION) -> bytes:
    """``torch.save``'s zip ``body`` with the stamp (version, checksum) as its comment."""
    end = len(body) - END_RECORD_SIZE
    if end < 0 or body[end : end + 4] != END_RECORD or body[-2:] != b"\0\0":
        raise CheckpointError("torch.save wrote a payload that is not a zip without a comment")
    stamp = b"%s %d sha256=%s" % (MAGIC, version, hashlib.sha256(body).hexdigest().encode())
    return body[:-2] + len(stamp).to_bytes(2, "little") + stamp


def _unstamped(data: bytes, path: Path) -> tuple[list[bytes], bytes]:
    """The stamp's fields and the payload (with an empty comment again) of a version 2 file."""
    at = data.rfind(MAGIC)
    end = at - END_RECORD_SIZE
    if at < 0 or end < 0 or data[end : end + 4] != END_RECORD:
        if data.startswith(b"PK\x03\x04"):  # a zip that lost its end
            raise CheckpointError(f"{path} is corrupted or truncated (its stamp is missing)")
        raise CheckpointError(f"{path} is not a gradwise checkpoint (no valid header or stamp)")
    stamp = data[at:]
    if int.from_bytes(data[at - 2 : at], "little") != len(stamp):
        raise CheckpointError(f"{path} is corrupted or truncated (its stamp is damaged)")
    return stamp.split(b" "), data[: at - 2] + b"\0\0"


def atomic_save(payload: dict, path: str | Path) -> None:
    """``torch.save`` so that a crash leaves the old file or the new, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}.{path.name}")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a small text file so that a crash leaves the old content or the new, never a part."""
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}.{path.name}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def is_checkpoint(path: str | Path) -> bool:
    """Whether the file at ``path`` looks like a gradwise checkpoint (its stamp at the end, or a
    version 1 header at the start); :func:`load_file` checks it fully."""
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) == MAGIC:
            return True
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 128))
        return MAGIC in f.read()


def exists(folder: str | Path) -> bool:
    """Whether ``folder`` holds a checkpoint file (good or not)."""
    return any((Path(folder) / name).exists() for name in (CURRENT, PREVIOUS))


def load_file(path: str | Path) -> dict:
    """Load one checkpoint file, verifying header, version and checksum (``CheckpointError``)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e.strerror}") from None
    if data.startswith(MAGIC + b" 1 "):  # version 1: a header line, then the payload
        header, _, body = data.partition(b"\n")
        parts = header.split(b" ")
    else:
        parts, body = _unstamped(data, path)
    if len(parts) != 3 or parts[0] != MAGIC or not parts[2].startswith(b"sha256="):
        raise CheckpointError(f"{path} is not a gradwise checkpoint (no valid header or stamp)")
    if parts[1] not in (b"1", str(VERSION).encode()):
        raise CheckpointError(
            f"{path} has checkpoint format version {parts[1].decode(errors='replace')}; "
            f"this gradwise reads versions 1 to {VERSION}"
        )
    if hashlib.sha256(body).hexdigest().encode() != parts[2][len(b"sha256=") :]:
        raise CheckpointError(f"{path} is corrupted or truncated (checksum mismatch)")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": refused anyway
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(io.BytesIO(body), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} contains objects that are not plain data and was refused ({_reason(e)})"
        ) from None
    except Exception as e:  # a well-formed header over a body torch cannot read
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} has a payload torch cannot read ({first})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(
            f"{path} holds a {type(payload).__name__}, not a gradwise checkpoint's dict"
        )
    return payload


def load_latest(folder: str | Path) -> tuple[dict, Path, list[str]]:
    """The newest good checkpoint in ``folder``: (payload, path, problems with newer files).

    Falls back to ``checkpoint.prev.pt`` when ``checkpoint.pt`` is missing or damaged; a
    damaged one is named in a :class:`~gradwise.errors.CheckpointWarning` (the weights are then
    an epoch older than the run's last).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"cannot resume: {folder} is not a folder")
    problems = []
    for name in (CURRENT, PREVIOUS):
        path = folder / name
        if not path.exists():
            if name == CURRENT and (folder / PREVIOUS).exists():  # a save never leaves this
                problems.append(f"{path} is missing")
            continue
        try:
            payload = load_file(path)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        if problems:
            warnings.warn(
                f"{problems[0]}; using {path}, the checkpoint before it (an epoch older)",
                CheckpointWarning,
                stacklevel=2,
            )
        return payload, path, problems
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


def _reason(e: Exception) -> str:
    """The informative line of torch's weights-only refusal (not its generic preamble)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    useful = [
        line
        for line in lines[1:]
        if not line.startswith(("Please file an issue", "Check the documentation"))
    ]
    return (useful or lines or ["unsafe content"])[0]


def _keep_previous(target: Path, previous: Path, folder: Path) -> None:
    """Make ``previous`` a copy of ``target`` while ``target`` stays in place (a hard link)."""
    link = folder / f"{TMP_PREFIX}{os.getpid()}.{PREVIOUS}"
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    try:
        os.link(target, link)
    except OSError:  # no hard links here: move it; load_latest falls back to it meanwhile
        os.replace(target, previous)
        return
    os.replace(link, previous)


def remove_stale_tmp(folder: Path, keep: Path | None = None) -> None:
    """Delete temporary files of writes that died (their process is gone)."""
    for path in folder.glob(f"{TMP_PREFIX}*"):
        pid = path.name[len(TMP_PREFIX) :].split(".")[0]
        if path != keep and not (pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid))):
            with contextlib.suppress(OSError):
                path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


@contextlib.contextmanager
def _sigint_held():
    """Hold SIGINT (Ctrl-C) back for the duration and deliver it afterwards.

    A Python-level handler records it (Python runs handlers in the main thread only, whichever
    thread the OS hands the signal to, e.g. the progress bar's); elsewhere nothing is held.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    try:
        old = signal.signal(signal.SIGINT, lambda signum, frame: received.append(frame))
    except (ValueError, OSError):  # no signals here (e.g. an embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if received:
            if callable(old):
                old(signal.SIGINT, received[0])  # default: raises KeyboardInterrupt
            elif old == signal.SIG_DFL:
                os.kill(os.getpid(), signal.SIGINT)


# ------------------------------------------------------------------ fault injection (tests only)

_CRASH_ENV = "GRADWISE_TEST_CRASH_IN_CHECKPOINT"
_saves = 0  # calls of save() in this process


def _crash_point() -> str | None:
    spec = os.environ.get(_CRASH_ENV)
    if not spec:
        return None
    point, _, nth = spec.partition(":")
    return point if _saves == int(nth or 1) else None


def _crash_if(point: str) -> None:
    if _crash_point() == point:
        _crash()


def _crash(f=None) -> None:
    if f is not None:
        f.flush()
        os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)
