"""Ctrl-C and SIGTERM stop ``gradwise compare`` and ``gradwise lr-find`` at any moment: they exit
promptly, leave no process behind (compare's workers included) and say on one line what they
kept. Each case runs the command as a subprocess in a process group of its own
(scripts/interrupts.py, which also runs it 20 times at random moments)."""

import importlib.util
import signal
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="looks for leftover processes in /proc"
)

_SCRIPT = Path(__file__).parents[1] / "scripts" / "interrupts.py"
_spec = importlib.util.spec_from_file_location("interrupts_script", _SCRIPT)
interrupts = sys.modules["interrupts_script"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(interrupts)


@pytest.mark.slow
@pytest.mark.parametrize(
    "command, sig, after_s, to_group",
    [
        ("compare", signal.SIGINT, 1.5, True),  # Ctrl-C in a terminal, while it starts
        ("compare", signal.SIGTERM, 4.0, False),  # kill PID: it must stop its workers itself
        ("compare", signal.SIGINT, 4.0, True),  # Ctrl-C while the workers start or train
        ("lr-find", signal.SIGTERM, 4.0, True),
    ],
    ids=["compare-int-1.5s", "compare-term-4s-alone", "compare-int-4s", "lr-find-term-4s"],
)
def test_an_interrupted_command_exits_and_leaves_nothing_running(
    command, sig, after_s, to_group, tmp_path
):
    outcome = interrupts.interrupt(
        command, sig, after_s, to_group=to_group, out=tmp_path / "out", timeout_s=20.0
    )
    assert outcome.exit_code is not None, f"did not exit within 20 s: {outcome}"
    assert not outcome.left, f"processes left behind: {outcome}"
    what = "interrupted" if sig == signal.SIGINT else "terminated (SIGTERM)"
    expected = {signal.SIGINT: 130, signal.SIGTERM: 143}[sig]
    if outcome.exit_code == -sig:  # the signal came before Python could handle it: nothing ran
        return
    assert outcome.exit_code == expected, outcome
    assert outcome.last_line.startswith(f"gradwise: {what}"), outcome


def test_compare_stopped_midway_stops_its_workers_and_keeps_the_finished_runs(tmp_path):
    import multiprocessing

    from gradwise.lab.compare import compare, grid
    from gradwise.train.config import TrainConfig

    configs = grid(TrainConfig(dataset="moons", hidden=(8,), epochs=1), optimizers=["sgd", "adam"])
    finished = []

    def on_result(record, done, total):
        finished.append(record)
        raise KeyboardInterrupt  # as Ctrl-C (or SIGTERM, in the CLI) would, after the first run

    with pytest.raises(KeyboardInterrupt):
        compare(configs, seeds=2, jobs=2, out=tmp_path, on_result=on_result)
    assert multiprocessing.active_children() == []  # stopped and reaped
    assert len(finished) == 1
    assert (finished[0].folder / "history.jsonl").exists()
    assert not (tmp_path / "summary.md").exists()
