"""Starting a distributed run on this machine: ``gradwise train --nproc N`` runs
``python -m gradwise train ...`` on N processes through PyTorch's own launcher
(``torch.distributed.run --standalone``), and turns a failed process into one clear error.
What the processes do once started is :mod:`gradwise.train.distributed`.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Sequence

from gradwise.errors import GradwiseError


class LaunchFailed(GradwiseError, RuntimeError):
    """A process started by :func:`launch` failed; ``failures``: ``(rank, exit code, signal)``
    for each, the likely cause first (``signal`` is a name such as ``"SIGKILL"`` or None; see
    :func:`_blame`)."""

    def __init__(self, message: str, failures: list[tuple[int, int, str | None]]) -> None:
        super().__init__(message)
        self.failures = failures


def threads_per_process(nproc: int) -> int:
    """CPU threads for each of ``nproc`` processes on this machine: cores // nproc, at least 1
    (more threads than cores makes PyTorch's OpenMP threads spin against each other)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // nproc)


def launch(args: Sequence[str], nproc: int) -> None:
    """Run ``python -m gradwise <args>`` on ``nproc`` processes of this machine through
    PyTorch's launcher (``torch.distributed.run --standalone``) and wait for them.

    ``OMP_NUM_THREADS`` is set to :func:`threads_per_process` unless already set. Raises
    :class:`LaunchFailed` when a process fails (the launcher has then stopped the others),
    ``KeyboardInterrupt`` on SIGINT and ``SystemExit(128 + signal)`` on SIGTERM, SIGHUP or
    SIGQUIT (the launcher has passed the signal on to the processes).
    """
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_process(nproc)))
    argv = ["--standalone", f"--nproc-per-node={nproc}", "--module", "gradwise", *args]
    # the launcher's log lines repeat what LaunchFailed and the processes themselves say
    names = [torchrun.__name__, "torch.distributed.elastic"]
    names += [n for n in logging.root.manager.loggerDict if n.startswith(names[1])]
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        torchrun.run(torchrun.parse_args(argv))
    except ChildFailedError as e:
        rows = [(rank, f.exitcode, _signal_name(f.exitcode)) for rank, f in e.failures.items()]
        order = {rank: f.timestamp for rank, f in e.failures.items()}
        rows.sort(key=lambda row: (_blame(row), order[row[0]]))
        raise LaunchFailed(_describe(rows), rows) from None
    except SignalException as e:  # the launcher passed the signal on to the processes
        if e.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise SystemExit(128 + int(e.sigval)) from None
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _blame(row: tuple[int, int, str | None]) -> int:
    """How likely a failure is the cause (lower first): killed by a signal, then an unexpected
    exit code, then a gradwise error (exit code 2: often a rank that lost contact with the
    dead one), and last the launcher's own SIGTERM to the survivors."""
    _, code, sig = row
    if sig == "SIGTERM":
        return 3
    if sig is not None:
        return 0
    return 2 if code == 2 else 1


def _signal_name(exitcode: int) -> str | None:
    if exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def _describe(rows: list[tuple[int, int, str | None]]) -> str:
    rank, code, sig = rows[0]
    how = f"was killed by {sig}" if sig else f"exited with code {code}"
    return f"rank {rank} of the distributed run {how}; the launcher stopped the others"
