"""The compiled step's launches recorded once as a CUDA graph and replayed on later steps.

Calling a ``torch.compile``'d function costs the CPU ~80 µs whatever the tensors' size (Dynamo's
guards, AOTAutograd's and Inductor's wrappers, one launch per kernel). A CUDA graph replays the
same launches for ~10 µs. A graph bakes in its inputs' addresses, and the default
``zero_grad()`` hands ``step()`` new gradient tensors every iteration; but PyTorch's caching
allocator gives backward the same blocks iteration after iteration, so in a training loop the
addresses repeat. :class:`Replayer` keys its graphs by every input's address:

- a set of addresses seen for the first time runs the compiled function (nothing recorded);
- seen a second time, the call is recorded as a graph, which is then replayed;
- seen again, the graph is replayed.

A graph's inputs are exactly its key's tensors: the same addresses with the same shapes and
dtypes, since a kernel serves one segment's pieces, whose sizes and dtypes are fixed. The
runtime scalars (learning rate, bias corrections, ...) live in a device buffer that the caller
refills before each call, so a graph never holds a stale hyperparameter.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

#: whether compiled steps are replayed as CUDA graphs (see :class:`Replayer`)
ENABLED = True
#: the most graphs one kernel keeps (one per set of addresses seen twice)
MAX_GRAPHS = 4
#: how many recently seen sets of addresses a kernel remembers
MAX_SEEN = 8


def record_cuda_graph(run: Callable[[], None]) -> Callable[[], None]:
    """``run``'s launches recorded (not executed) as a CUDA graph; returns its ``replay``.

    ``thread_local``: another thread's CUDA calls during the recording (a DataLoader's pinning
    thread, say) neither break it nor are refused."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        run()
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
    """``replayer(tensors)`` runs ``run(tensors)``, replaying a recorded graph of it when
    ``tensors`` lie at addresses already recorded (see the module's docstring)."""

    def __init__(self, run: Callable[[list[Tensor]], None], record: Callable) -> None:
        self.run, self.record = run, record
        self.graphs: dict[tuple[int, ...], Callable[[], None]] = {}
        self.seen: dict[tuple[int, ...], None] = {}  # insertion order: oldest first
        self.recording = True
        self.replays = 0  # for tests and reports

    def __call__(self, tensors: list[Tensor]) -> None:
        key = tuple(map(Tensor.data_ptr, tensors))
        replay = self.graphs.get(key)
        if replay is None and key in self.seen and self._may_record():
            replay = self._recorded(tensors, key)
        if replay is None:
            self.seen.pop(key, None)
            self.seen[key] = None
            if len(self.seen) > MAX_SEEN:
                del self.seen[next(iter(self.seen))]
            self.run(tensors)
            return
        replay()
        self.replays += 1

    def _may_record(self) -> bool:
        return (
            self.recording
            and len(self.graphs) < MAX_GRAPHS
            and not torch.compiler.is_compiling()  # inside the user's torch.compile: trace it
        )

    def _recorded(self, tensors: list[Tensor], key: tuple[int, ...]) -> Callable[[], None] | None:
        try:
            replay = self.record(lambda: self.run(tensors))
        except Exception as e:  # nothing ran: the caller runs the step without a graph
            self.recording = False
            warnings.warn(
                f"gradwise: the optimizer step could not be recorded as a CUDA graph ({e!r}); "
                "it runs without one (correct, with more CPU time per step)",
                RuntimeWarning,
                stacklevel=4,
            )
            return None
        self.graphs[key] = replay
        return replay
