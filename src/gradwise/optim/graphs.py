"""The compiled step's launches recorded once as a CUDA graph and replayed on later steps.

Calling a ``torch.compile``'d function costs the CPU ~80 µs whatever the tensors' size (Dynamo's
guards, AOTAutograd's and Inductor's wrappers, one launch per kernel). A CUDA graph replays the
same launches for ~10 µs. A graph bakes in its inputs' addresses, and the default
``zero_grad()`` hands ``step()`` new gradient tensors every iteration; but PyTorch's caching
allocator gives backward the same blocks iteration after iteration, so in a training loop the
addresses repeat. A segment's :class:`Replayer` keys its graphs by where every gradient lies:

- a set of addresses seen for the first time: the step runs as usual (nothing recorded);
- seen a second time: the step (gathering the small tensors' gradients, then the compiled
  update) is recorded as a graph, which is then replayed;
- seen again: the graph is replayed.

A graph's inputs are the segment's flat buffers (fixed for its life) and the gradients at its
key's addresses, with the parameters' shapes and dtypes. The runtime scalars (learning rate,
bias corrections, ...) live in a device buffer that the caller refills before each replay, so a
graph never holds a stale hyperparameter.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

#: whether compiled steps are replayed as CUDA graphs (see :class:`Replayer`)
ENABLED = True
#: the most graphs one kernel keeps (one per set of addresses seen twice)
MAX_GRAPHS = 4
#: how many recently seen sets of addresses a kernel remembers
MAX_SEEN = 8


def record_cuda_graph(run: Callable[[], None]) -> Callable[[], None]:
    """``run``'s launches recorded (not executed) as a CUDA graph; returns its ``replay``.

    On a side stream, as CUDA requires, with ``CUDAGraph.capture_begin``/``capture_end``
    rather than the ``torch.cuda.graph`` context, which first empties the allocator's cache:
    that would move the next iterations' gradients to new addresses, which need a graph of
    their own. ``thread_local``: another thread's CUDA calls during the recording (a
    DataLoader's pinning thread, say) neither break it nor are refused."""
    graph = torch.cuda.CUDAGraph()
    current, side = torch.cuda.current_stream(), torch.cuda.Stream()
    side.wait_stream(current)
    with torch.cuda.stream(side):
        graph.capture_begin(capture_error_mode="thread_local")
        try:
            run()
        finally:
            graph.capture_end()
    current.wait_stream(side)
    return graph.replay


#: how a graph is recorded, by device type: ``record(run) -> replay``. Tests put an emulation
#: here for the CPU (``lambda run: run``: a replay runs the recorded call's own tensors again,
#: as a graph reads the recorded addresses)
RECORDERS: dict[str, Callable[[Callable[[], None]], Callable[[], None]]] = {
    "cuda": record_cuda_graph
}


def recorder(device: torch.device) -> Callable | None:
    """How graphs are recorded on ``device``; None where they are not (or are turned off)."""
    return RECORDERS.get(device.type) if ENABLED else None


class Replayer:
    """One segment's recorded steps, keyed by where its tensors lie (see the module's
    docstring). The caller asks :meth:`knows` first: True when the key has a graph or is due
    for one (seen before, room for it), and then calls ``replayer(key, run)``; False (the key
    is remembered) when the step should run as usual, without a graph."""

    def __init__(self, record: Callable[[Callable[[], None]], Callable[[], None]]) -> None:
        self.record = record
        self.graphs: dict[tuple[int, ...], Callable[[], None]] = {}
        self.seen: dict[tuple[int, ...], None] = {}  # insertion order: oldest first
        self.recording = True
        self.replays = 0  # for tests and reports

    def knows(self, key: tuple[int, ...]) -> bool:
        if key in self.graphs:
            return True
        if key in self.seen and self._may_record():
            return True
        self.seen.pop(key, None)
        self.seen[key] = None
        if len(self.seen) > MAX_SEEN:
            del self.seen[next(iter(self.seen))]
        return False

    def __call__(self, key: tuple[int, ...], make_run: Callable[[], Callable[[], None]]) -> None:
        """Replays ``key``'s graph. If it has none, ``make_run()`` gives the step's launches,
        their tensors bound (as a graph binds them when it is recorded), which are recorded and
        replayed; where recording fails, they run as they are (and no more are recorded)."""
        replay = self.graphs.get(key)
        if replay is None:
            run = make_run()
            try:
                replay = self.record(run)
            except Exception as e:  # nothing ran
                self.recording = False
                warnings.warn(
                    f"gradwise: the optimizer step could not be recorded as a CUDA graph "
                    f"({e!r}); it runs without one (correct, with more CPU time per step)",
                    RuntimeWarning,
                    stacklevel=4,
                )
                run()
                return
            self.graphs[key] = replay
        replay()
        self.replays += 1

    def _may_record(self) -> bool:
        return self.recording and len(self.graphs) < MAX_GRAPHS
