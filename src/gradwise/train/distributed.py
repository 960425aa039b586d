"""Training on several processes with ``torch.distributed``: DDP, gloo on CPU, NCCL on GPUs.

gradwise does no communication of its own. A launcher (``torchrun``, i.e.
``python -m torch.distributed.run``, or ``gradwise train --nproc N`` which calls it) starts the
processes and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`setup` reads them and joins the process group (``init_process_group``, with a timeout);
:func:`gradwise.train.fit` then wraps the model in ``DistributedDataParallel``, which averages the
gradients. Without those variables (or with ``WORLD_SIZE=1``) nothing here runs and ``fit`` is the
single-process loop, unchanged.

How a distributed ``fit`` equals the single-process one (same seed, same global batch size):

* every rank draws the same permutation of the training set each epoch (the same seeded
  generator), cuts it into the same global batches of ``batch_size`` rows, and trains on its
  part of each (:class:`Shard`: ``tensor_split`` of the batch, so the parts differ by at most
  one row);
* rank ``r``'s mean loss over its ``n_r`` rows is weighted by ``n_r · world / n`` before
  ``backward``, so that DDP's average of the ranks' gradients is the gradient of the mean loss
  over the whole batch of ``n`` rows, also for an uneven last batch;
* ``nn.Dropout`` masks are drawn for the whole global batch on every rank, each applying its
  rows (:class:`GlobalDropout`), so they are the masks one process draws;
* per-step losses, train accuracy and sample counts are summed over the ranks once per epoch;
  validation runs on every rank with the same weights, so plateau and early-stopping decisions
  agree everywhere.

Only rank 0 shows progress and writes files; the others wait at a barrier until each
checkpoint is on disk, so a rank that fails later cannot take it down. A checkpoint holds every
rank's random state, and every rank resumes from the same checkpoint.

A rank that dies breaks the others' next collective: gloo reports the closed connection at once,
and a rank that hangs is given up on after the timeout (:data:`DEFAULT_TIMEOUT` seconds, or
``GRADWISE_DIST_TIMEOUT``). Either way the others raise :class:`DistributedError` naming the
last checkpoint, which stays whole (checkpoints are written atomically). ``torchrun`` also stops
the remaining processes as soon as one fails.

Test-only fault injection: ``GRADWISE_TEST_DISTRIBUTED_FAULT=RANK:EPOCH:KIND`` makes rank
``RANK`` die by SIGKILL (``KIND=kill``) or stop answering (``KIND=hang``) when epoch ``EPOCH``
(1-based) starts. It is read once per ``fit``, in the distributed path only.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import gc
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from gradwise.errors import ConfigError, GradwiseError

#: seconds a rank waits in a collective (or at start-up) for the others before giving up
DEFAULT_TIMEOUT = 300.0
TIMEOUT_ENV = "GRADWISE_DIST_TIMEOUT"
_FAULT_ENV = "GRADWISE_TEST_DISTRIBUTED_FAULT"


class DistributedError(GradwiseError, RuntimeError):
    """Another process of a distributed run died or did not answer within the timeout."""


@dataclass(frozen=True)
class Context:
    """This process's place in the process group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    timeout: float

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# ------------------------------------------------------------------------ environment, setup


def env_world_size() -> int:
    """``WORLD_SIZE`` as set by a launcher (1 without one)."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def launched() -> bool:
    """Whether this process is one of several: started by a launcher with ``WORLD_SIZE > 1``,
    or already in a process group of more than one process."""
    if env_world_size() > 1:
        return True
    return _initialized() and torch.distributed.get_world_size() > 1


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def env_rank() -> int:
    """``RANK`` as set by a launcher (0 without one)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def is_main() -> bool:
    """True in a single process and on rank 0 of a distributed run."""
    if _initialized():
        return torch.distributed.get_rank() == 0
    return env_rank() == 0


def timeout_seconds() -> float:
    """The collective timeout: ``GRADWISE_DIST_TIMEOUT`` seconds, else :data:`DEFAULT_TIMEOUT`."""
    text = os.environ.get(TIMEOUT_ENV)
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(
            f"{TIMEOUT_ENV} must be a positive number of seconds; received {TIMEOUT_ENV}={text!r}"
        )
    return value


def device_for(device: str | torch.device, local_rank: int) -> torch.device:
    """The device of this rank: ``"auto"``/``"cuda"`` become ``cuda:LOCAL_RANK`` where CUDA is
    available, an explicit ``cuda:N`` or ``cpu`` is kept."""
    if str(device) in ("auto", "cuda"):
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if str(device) == "auto":
            return torch.device("cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"fit: device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; received device={device!r}"
        ) from None


#: this process's place in the group it joined, and that group, made by the first :func:`setup`
#: (the ``gradwise train`` command, :func:`gradwise.train.run.run` and ``fit`` each ask for it)
_joined: tuple[Context, object] | None = None


def setup(device: str | torch.device = "auto") -> Context | None:
    """Join the launcher's process group and return this rank's :class:`Context` (its
    ``device``: ``device`` as :func:`device_for` maps it); ``None`` when not launched on several
    processes. The backend is gloo, and NCCL for CUDA tensors where CUDA is available
    (``"cpu:gloo,cuda:nccl"``). The group is joined once: a later call returns the same place
    in it (with its own ``device``), and a group made by the caller is used as it is."""
    global _joined
    if not launched():
        return None
    if _joined is not None and _initialized() and _joined[1] is torch.distributed.group.WORLD:
        ctx = _joined[0]
        return dataclasses.replace(ctx, device=device_for(device, ctx.local_rank))
    if not torch.distributed.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; train on one process")
    timeout = timeout_seconds()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = device_for(device, local_rank)
    if _initialized():
        backend = str(torch.distributed.get_backend())
    else:
        backend = "gloo"
        if torch.cuda.is_available():
            backend = "cpu:gloo,cuda:nccl"
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            elif local_rank < torch.cuda.device_count():
                torch.cuda.set_device(local_rank)  # where NCCL's object collectives run
        try:
            torch.distributed.init_process_group(
                backend, timeout=datetime.timedelta(seconds=timeout)
            )
        except (RuntimeError, ValueError) as e:
            raise DistributedError(
                f"could not join the other processes ({_first_line(e)}); check the launcher's "
                "rendezvous options (--nnodes, --rdzv-endpoint) and that every node can reach it"
            ) from None
        atexit.register(cleanup)
    ctx = Context(
        rank=torch.distributed.get_rank(),
        world_size=torch.distributed.get_world_size(),
        local_rank=local_rank,
        device=dev,
        backend=backend,
        timeout=timeout,
    )
    _joined = (ctx, torch.distributed.group.WORLD)
    return ctx


def check_global_batch(
    owner: str, size: int, world_size: int, received, *, as_flags: bool = False
) -> None:
    """Refuse a global batch of ``size`` rows smaller than the number of processes (a rank would
    get none); ``received`` is the batch size as the caller was given it. ``as_flags``: say it
    with the command line's names (``--batch-size``, ``--nproc``)."""
    if size >= world_size:
        return
    if as_flags:
        raise ConfigError(
            f"--batch-size is the global batch and must be at least --nproc ({world_size}); "
            f"received --batch-size {received}"
        )
    raise ConfigError(
        f"{owner}: batch_size is the global batch and must be at least the number of "
        f"processes ({world_size}); received batch_size={received}"
    )


def barrier() -> None:
    """Wait for every rank (nothing in a single process)."""
    if _initialized():
        torch.distributed.barrier()


def cleanup() -> None:
    """Leave the process group if one is joined (safe to call twice; :func:`setup` registers it
    to run at exit). Unreachable DDP and ZeRO objects, which hold the group, are collected
    first: a gloo group that outlives the interpreter's shutdown can abort the process."""
    global _joined
    _joined = None
    if _initialized():
        gc.collect()
        with contextlib.suppress(RuntimeError, ValueError):  # a group already torn down
            torch.distributed.destroy_process_group()
        gc.collect()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (``obj`` itself in a single process)."""
    if not _initialized():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def from_main(fn, *args):
    """``fn(*args)`` computed on rank 0 only and shared with every rank, a
    :class:`~gradwise.errors.GradwiseError` it raises too (so that every rank fails alike):
    what only rank 0's machine has, such as the run folder. ``fn(*args)`` in a single process."""
    if not _initialized():
        return fn(*args)
    result = error = None
    if torch.distributed.get_rank() == 0:
        try:
            result = fn(*args)
        except GradwiseError as e:
            error = e
    result, error = broadcast_object((result, error))
    if error is not None:
        raise error
    return result


def gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order."""
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


# ------------------------------------------------------------------------------ training parts


def wrap(model: nn.Module, ctx: Context) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` (it shares the model's parameters)."""
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in model.parameters()):
        raise ConfigError(
            "fit: the model's parameters are DTensors (sharded with fully_shard / FSDP2); fit() "
            "trains with DistributedDataParallel. Use gradwise's optimizers in your own loop "
            "for FSDP2 (see docs/scaling.md)"
        )
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def check_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Refuse the one combination known to train wrongly: ``ZeroRedundancyOptimizer(...,
    parameters_as_bucket_view=True)`` around a gradwise optimizer. ZeRO then makes each
    parameter a view of its bucket and broadcasts the buckets after each step, while gradwise's
    engine moves the parameters into its own flat buffer at the first step: the owner would
    broadcast stale buckets."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    from gradwise.optim.base import Optimizer

    if (
        isinstance(optimizer, ZeroRedundancyOptimizer)
        and optimizer.parameters_as_bucket_view
        and isinstance(optimizer.optim, Optimizer)
    ):
        raise ConfigError(
            "fit: ZeroRedundancyOptimizer(parameters_as_bucket_view=True) cannot drive a "
            f"gradwise optimizer ({type(optimizer.optim).__name__}): both relocate the "
            "parameters; leave parameters_as_bucket_view=False (the default)"
        )


def consolidate(optimizer: torch.optim.Optimizer) -> None:
    """Before rank 0 calls ``state_dict()``: gather a ``ZeroRedundancyOptimizer``'s shards on
    rank 0 (a collective: every rank calls it). Nothing for other optimizers."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    if isinstance(optimizer, ZeroRedundancyOptimizer):
        optimizer.consolidate_state_dict(to=0)


def prepare_checkpoint(optimizer: torch.optim.Optimizer) -> dict:
    """Collectives before rank 0 builds a checkpoint (every rank calls it): a
    ``ZeroRedundancyOptimizer``'s state gathered on rank 0, and every rank's random state,
    returned as ``{"ranks": [state of rank 0, state of rank 1, ...]}`` for the checkpoint's
    ``rng`` entry."""
    consolidate(optimizer)
    return {"ranks": gather_objects(torch.get_rng_state())}


def restore_rng(payload: dict, ctx: Context) -> None:
    """On resume: this rank's random state from the checkpoint, when it was written by as many
    processes (otherwise every rank keeps rank 0's, which :func:`fit` has set)."""
    states = payload.get("rng", {}).get("ranks")
    if states is not None and len(states) == ctx.world_size:
        torch.set_rng_state(states[ctx.rank])


class Shard:
    """This rank's part of each global batch, and the weight of its loss.

    ``rows`` is ``(start, stop, n)``: the batch's rows ``start:stop`` of ``n`` are this rank's.
    For a user's loader (each rank iterates its own, e.g. with a ``DistributedSampler``) ``n``
    is unknown and each rank's mean loss is weighted 1: DDP's average of the ranks' means.
    """

    def __init__(self, ctx: Context) -> None:
        self.rank, self.world = ctx.rank, ctx.world_size
        self.rows: tuple[int, int, int] | None = None

    def split(self, n: int) -> tuple[int, int]:
        """Rows ``start:stop`` of a batch of ``n`` that are this rank's (``tensor_split``)."""
        q, r = divmod(n, self.world)
        start = self.rank * q + min(self.rank, r)
        stop = start + q + (1 if self.rank < r else 0)
        self.rows = (start, stop, n)
        return start, stop

    def loss(self, loss_fn, out: Tensor, y: Tensor) -> Tensor:
        """This rank's loss, weighted so that DDP's gradient average is the global batch's.

        A non-finite local loss makes the weight NaN, so that every gradient is NaN after DDP's
        all-reduce and every rank takes the same skip/raise decision from the gradients.
        """
        n = len(y)
        if n == 0:  # an uneven last batch smaller than the world: no rows here
            return out.sum() * 0.0
        loss = loss_fn(out, y)
        weight = 1.0 if self.rows is None else n * self.world / self.rows[2]
        d = loss.detach()
        return loss * (d - d).add_(weight)  # weight, or NaN when the loss is not finite


class GlobalDropout:
    """While entered: the model's ``nn.Dropout`` layers use the mask of the whole global batch.

    Every rank draws the mask for all ``n`` rows of the batch from the same random state,
    exactly as one process does (``bernoulli_(1 - p)`` on a tensor of the batch's shape, divided
    by ``1 - p``), and applies its own rows of it; so the masks are those of a single-process run
    and every rank's random state stays the same. A forward pre-hook on each ``nn.Dropout``
    applies the mask and lets the layer pass the result through (the layer is in eval mode for
    that one call). Each rank draws the whole batch's masks: that costs ``world`` times the
    random numbers of its own rows. Other random layers (``AlphaDropout``, ``Dropout1d``, ...),
    inputs whose first dimension is not the batch, and a user's loader (``rows`` unknown) are
    left to PyTorch.
    """

    def __init__(self, model: nn.Module, shard: Shard) -> None:
        self.layers = [m for m in model.modules() if type(m) is nn.Dropout]
        self.shard = shard
        self.handles: list = []
        self.passing: set[nn.Module] = set()

    def __enter__(self) -> GlobalDropout:
        for layer in self.layers:
            self.handles.append(layer.register_forward_pre_hook(self._before))
            self.handles.append(layer.register_forward_hook(self._after))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        for layer in self.passing:
            layer.training = True
        self.passing.clear()

    def _before(self, layer: nn.Dropout, args):
        if not layer.training or self.shard.rows is None or len(args) != 1:
            return None
        out = _global_dropout(self.shard.rows, args[0], layer.p, layer.inplace)
        if out is None:
            return None
        layer.training = False  # this call only: the layer passes ``out`` through
        self.passing.add(layer)
        return (out,)

    def _after(self, layer: nn.Dropout, args, output) -> None:
        if layer in self.passing:
            layer.training = True
            self.passing.discard(layer)


def _global_dropout(rows, input: Tensor, p: float, inplace: bool) -> Tensor | None:
    start, stop, n = rows
    if not 0 < p < 1 or input.dim() == 0 or input.shape[0] != stop - start:
        return None
    mask = torch.empty((n, *input.shape[1:]), dtype=input.dtype, device=input.device)
    mask = mask.bernoulli_(1 - p)[start:stop].div_(1 - p)
    return input.mul_(mask) if inplace else input * mask


def reduce_epoch(
    losses: list[Tensor], sizes: list[int], correct: Tensor | None, device: torch.device
) -> tuple[list[Tensor], list[int], float | None]:
    """Sum the epoch's per-step losses (already divided by the world size), sample counts and
    correct predictions over the ranks: one all-reduce per epoch."""
    world = torch.distributed.get_world_size()
    steps = len(losses)
    parts = [
        torch.stack(losses).to(device, torch.float64) / world
        if losses
        else torch.zeros(0, dtype=torch.float64, device=device),
        torch.tensor(sizes, dtype=torch.float64, device=device),
        torch.zeros(1, dtype=torch.float64, device=device)
        if correct is None
        else correct.to(device, torch.float64).reshape(1),
    ]
    stats = torch.cat(parts)
    torch.distributed.all_reduce(stats)
    values = stats.cpu()
    total_losses = list(values[:steps].unbind()) if steps else []
    total_sizes = [int(v) for v in values[steps : 2 * steps].tolist()]
    return total_losses, total_sizes, None if correct is None else float(values[-1])


# ------------------------------------------------------------------------------------ failures


def is_comm_failure(error: BaseException) -> bool:
    """Whether ``error`` came from the process group (a peer gone, a timeout)."""
    if isinstance(error, GradwiseError):
        return False
    if isinstance(error, getattr(torch.distributed, "DistError", ())):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        word in text
        for word in ("gloo", "Gloo", "NCCL", "Connection reset", "Connection closed", "timed out")
    )


def lost_contact(ctx: Context, error: BaseException, checkpoint_dir) -> DistributedError:
    """The error a rank raises when a collective fails: what happened, and what is kept."""
    where = f"; {describe_checkpoint(checkpoint_dir)}" if checkpoint_dir is not None else ""
    return DistributedError(
        f"rank {ctx.rank} lost contact with the other processes: one of them died, or did not "
        f"answer within the {ctx.timeout:g} s timeout ({_cause(error)}){where}"
    )


def _cause(error: BaseException) -> str:
    """The backend's reason, short: ``"Read error [127.0.0.1]:6040: Connection reset by peer"``
    from gloo's ``"[.../pair.cc:537] Read error ...: Connection reset by peer. This is ..."``."""
    line = re.sub(r"^\[[^\]]*\.(cc|cpp|h|py):\d+\]\s*", "", _first_line(error))
    return line.split(". ")[0].rstrip(".")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def fault_hook(ctx: Context):
    """The test-only fault for this rank (see the module docstring): a function of the epoch."""
    spec = os.environ.get(_FAULT_ENV)
    if not spec:
        return None
    rank, epoch, kind = spec.split(":")
    if int(rank) != ctx.rank:
        return None

    def at_epoch_start(e: int) -> None:
        if e + 1 != int(epoch):
            return
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        while True:  # "hang": alive, never answering
            time.sleep(3600)

    return at_epoch_start


def describe_checkpoint(folder: str | Path) -> str:
    """Where a run folder's last good checkpoint is, in words."""
    from gradwise.train import checkpoint as ckpt

    try:
        payload, path, _ = ckpt.load_latest(folder)
    except GradwiseError:
        return f"no checkpoint was written to {folder}"
    return f"the last checkpoint (epoch {payload.get('epoch')}) is kept in {path}"
