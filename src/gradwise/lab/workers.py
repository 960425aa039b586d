"""What the lab's worker processes (``compare``'s runs, ``tune``'s trials) need from their
parent: signals held back at delicate moments, and stopping the workers with none left behind.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
import time


@contextlib.contextmanager
def blocked_signals(*signals: signal.Signals):
    """``signals`` held back in this thread for the duration and delivered afterwards; a
    process started meanwhile inherits the block (a worker that ignores SIGINT starts so, and a
    Ctrl-C while it starts cannot kill it half-made). The main thread only; elsewhere nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, set(signals))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def stop_workers(
    processes: list[multiprocessing.Process], grace_s: float = 0.0, kill_after_s: float = 1.0
) -> None:
    """End the processes and reap them: ``grace_s`` seconds to exit by themselves (those told
    to), then SIGTERM, then, ``kill_after_s`` later, SIGKILL."""
    deadline = time.monotonic() + grace_s
    for process in processes:
        if grace_s and process.is_alive():
            process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + kill_after_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()
