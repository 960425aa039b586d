"""Interrupt ``gradwise compare`` and ``gradwise lr-find`` at random moments and report how they
stop: the exit times (from the signal to the exit), the exit codes, and whether any process of
theirs was left behind.

Each try starts the command in a session (and process group) of its own, waits a random time,
sends SIGINT or SIGTERM, either to the whole group (as a terminal's Ctrl-C or ``timeout`` does)
or to the command alone (as ``kill PID`` does: then it must stop its worker processes itself),
waits for it to exit, and looks for any process still alive in its group::

    python scripts/interrupts.py              # 20 tries, moments in 0.5-12 s
    python scripts/interrupts.py --tries 5 --seed 1 --latest 6

tests/test_interrupts.py runs :func:`interrupt` a few times at fixed moments.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: the commands interrupted: long enough that a signal always lands while they work
COMMANDS = {
    "compare": [
        "compare", "--dataset", "mnist1d", "--optimizers", "sgd,momentum,adam", "--seeds", "2",
        "--epochs", "6", "--jobs", "2", "--no-progress",
    ],
    "lr-find": [
        "lr-find", "--dataset", "mnist1d", "--steps", "3000", "--start-lr", "1e-7",
        "--end-lr", "1e-4",
    ],
}  # fmt: skip


@dataclasses.dataclass
class Outcome:
    """How one interrupted command ended."""

    command: str
    signal: str
    after_s: float  # when the signal was sent, after the start
    to_group: bool  # to the whole process group, or to the command alone
    exit_code: int | None  # None: it did not exit within the timeout (it was killed)
    exit_s: float  # from the signal to the exit
    left: list[str]  # processes of its group still alive after it exited: "PID command"
    last_line: str  # the last line it wrote on stderr

    def __str__(self) -> str:
        to = "group" if self.to_group else "process"
        left = f", LEFT {len(self.left)}: {'; '.join(self.left)}" if self.left else ""
        return (
            f"{self.command:8} {self.signal:7} to the {to:7} at {self.after_s:5.2f} s: exit "
            f"{self.exit_code} after {self.exit_s:.2f} s{left}  | {self.last_line}"
        )


def interrupt(
    command: str,
    sig: signal.Signals,
    after_s: float,
    *,
    to_group: bool,
    out: Path,
    timeout_s: float = 20.0,
) -> Outcome:
    """Run ``gradwise COMMAND`` (one of :data:`COMMANDS`) with ``--out out``, send it ``sig``
    ``after_s`` seconds after the start, and see how it ends (see :class:`Outcome`). Whatever
    is still alive of its process group afterwards is reported, then killed."""
    argv = [sys.executable, "-m", "gradwise", *COMMANDS[command], "--out", str(out)]
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    pgid = proc.pid  # a new session: the command leads its own process group
    try:
        time.sleep(after_s)
        sent = time.monotonic()
        if proc.poll() is None:
            if to_group:
                os.killpg(pgid, sig)
            else:
                proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=timeout_s)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code, err = None, b""
        exit_s = time.monotonic() - sent
        left = group_alive(pgid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        proc.wait()
    lines = err.decode(errors="replace").strip().splitlines()
    return Outcome(
        command, sig.name, after_s, to_group, code, exit_s, left, lines[-1] if lines else ""
    )


def group_alive(pgid: int, grace_s: float = 3.0) -> list[str]:
    """The processes of group ``pgid`` still alive (not zombies) after up to ``grace_s``
    seconds, as ``"PID command"``; Linux's /proc."""
    deadline = time.monotonic() + grace_s
    while True:
        alive = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:  # it ended meanwhile
                continue
            name = text[text.index("(") + 1 : text.rindex(")")]
            state, _ppid, group = text[text.rindex(")") + 2 :].split()[:3]
            if int(group) == pgid and state != "Z":
                alive.append(f"{stat.parent.name} {name}")
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=20, help="how many (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="for the moments and signals")
    parser.add_argument("--earliest", type=float, default=0.5, help="seconds (default 0.5)")
    parser.add_argument("--latest", type=float, default=12.0, help="seconds (default 12)")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="gradwise-interrupts-") as scratch:
        for i in range(args.tries):
            outcome = interrupt(
                rng.choice(list(COMMANDS)),
                rng.choice([signal.SIGINT, signal.SIGTERM]),
                round(rng.uniform(args.earliest, args.latest), 2),
                to_group=rng.random() < 0.5,
                out=Path(scratch) / f"try{i}",
            )
            print(f"{i + 1:2}. {outcome}", flush=True)
            outcomes.append(outcome)
    times = [o.exit_s for o in outcomes if o.exit_code is not None]
    hung = sum(o.exit_code is None for o in outcomes)
    left = sum(bool(o.left) for o in outcomes)
    if times:
        print(
            f"exit after the signal: min {min(times):.2f} s, median "
            f"{statistics.median(times):.2f} s, max {max(times):.2f} s over {len(times)} tries"
        )
    print(f"did not exit within 20 s: {hung}; left a process behind: {left}")
    return 1 if hung or left or (times and max(times) > 5) else 0


if __name__ == "__main__":
    sys.exit(main())
