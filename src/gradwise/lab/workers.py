"""What the lab's worker processes (``compare``'s runs, ``tune``'s trials) need from their
parent: signals held back at delicate moments, and stopping the workers with none left behind.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time


@contextlib.contextmanager
def blocked_signals(*signals: signal.Signals):
    """``signals`` held back for the duration and handled afterwards, each by the handler that
    was in place before (a handler that raises ``KeyboardInterrupt`` raises it at the block's
    end, never inside it). The main thread only; elsewhere nothing.

    Two mechanisms, because a process has more threads than the one that blocks: the signal
    mask (a process started meanwhile inherits the block, so a worker that ignores SIGINT
    starts so, and a Ctrl-C while it starts cannot kill it half-made), and Python handlers that
    only note the signal (the kernel may hand a signal to any thread that does not block it,
    such as a thread pool's, and Python then runs the handler in the main thread all the same).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    handlers = {s: signal.signal(s, lambda signum, frame: came.append(signum)) for s in signals}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, set(signals))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # one pending: handled once, either way
        for s, handler in handlers.items():
            signal.signal(s, handler)
        for signum in dict.fromkeys(came):
            handler = handlers[signal.Signals(signum)]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), signum)


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
