"""Data-parallel training under ``torchrun``: the process group, global batches cut into per-rank shards,
and checks that replicated state really is replicated.

    torchrun --nproc-per-node 4 -m sw.train --config configs/minilm_mrpc.json           # one host, 4 GPUs
    torchrun --nnodes 2 --node-rank R --nproc-per-node 8 --rdzv-backend c10d \\
             --rdzv-endpoint HOST:29500 -m sw.train --config ...                          # two hosts

``torchrun`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; :func:`init` joins the group (NCCL when CUDA
is there, gloo on CPU) and gives every process a :class:`Context`. Without those variables (a plain
``python -m sw.train``) the context is the single process and nothing here communicates.

Why a global batch is cut into shards instead of using ``DistributedSampler``: the recipe's
single-process loader shuffles with a ``torch.Generator`` seeded by the run's seed.
:class:`ShardedBatchSampler` draws exactly that sequence of global batches (same generator, same draws)
and hands each rank a contiguous slice of every one, so ``torchrun`` with N processes sees the same
examples per optimizer step as one process with the same ``batch_size``: the two runs differ only in the
order floats are summed. ``DistributedSampler`` shuffles with ``seed + epoch`` and strides the permutation
across ranks, which gives other global batches than the single-process run (and than earlier records of
the study). Gradients are averaged by ``DistributedDataParallel``; the pipeline weights each rank's mean
loss by its share of the global batch so the average is the global batch's mean even when the last batch
does not split evenly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """Where this process stands: ``rank`` of ``world_size`` processes, on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``DistributedDataParallel(model)`` when distributed (it broadcasts rank 0's parameters and
        buffers on construction), else ``model``."""
        if not self.distributed:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of ``values`` over the ranks (a CPU tensor in, a CPU tensor out)."""
        if not self.distributed:
            return values
        out = values.to(self._comm_device())
        dist.all_reduce(out)
        return out.cpu()

    def broadcast_object(self, value):
        """Rank 0's ``value`` on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def check_replicated(self, tensors: dict[str, torch.Tensor], what: str) -> None:
        """Raise ``RuntimeError`` naming the first tensor whose bits differ between ranks (an exact
        checksum of the raw bytes, compared by all-reduced min and max)."""
        if not self.distributed or not tensors:
            return
        names = list(tensors)
        sums = torch.stack([_checksum(tensors[n]) for n in names]).to(self._comm_device())
        low, high = sums.clone(), sums.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        differ = (low != high).any(dim=1).nonzero().flatten().tolist()
        if differ:
            raise RuntimeError(f"{what} differs between ranks: {[names[i] for i in differ][:5]} "
                               f"({len(differ)} of {len(names)} tensors); the replicas have diverged")

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


SINGLE = Context()


def _checksum(tensor: torch.Tensor) -> torch.Tensor:
    """Two int64 sums over the raw bits of the elements (plain and position-weighted), so any changed
    bit or swapped pair of elements changes them; int64 overflow wraps, which is deterministic."""
    data = tensor.detach().contiguous().reshape(-1)
    if data.dtype == torch.bool:
        data = data.to(torch.uint8)
    raw = data.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[data.element_size()]).to(torch.int64)
    weights = torch.arange(raw.numel(), device=raw.device, dtype=torch.int64) % 65521 + 1
    return torch.stack([raw.sum(), (raw * weights).sum()]).cpu()


def init(backend: str | None = None) -> Context:
    """Join the process group that ``torchrun`` describes in the environment, or return the
    single-process context when there is none (``WORLD_SIZE`` unset or 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE
    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={world_size} but {key} is not set: launch with torchrun")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size)
    return Context(rank, world_size, local_rank, torch.device("cuda", local_rank) if cuda else torch.device("cpu"))


def current() -> Context:
    """The context of an already joined process group (``SINGLE`` when there is none)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return SINGLE
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    cuda = dist.get_backend() == "nccl"
    return Context(dist.get_rank(), dist.get_world_size(), local_rank,
                   torch.device("cuda", local_rank) if cuda else torch.device("cpu"))


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class ShardedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """This rank's contiguous slice of every global batch of ``batch_sampler``.

    Every rank iterates the same global batch sampler (same generator, same seed), so the shards of
    one step are disjoint and together are the global batch. A global batch with fewer examples than
    ranks (only the last one can be) is skipped by every rank alike, since a rank cannot step on nothing.
    """

    def __init__(self, batch_sampler, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        batch_size = getattr(batch_sampler, "batch_size", None)
        if batch_size is not None and batch_size < world_size:
            raise ValueError(f"batch_size {batch_size} is smaller than the {world_size} processes: each needs at least one example per step")
        self.batch_sampler, self.rank, self.world_size = batch_sampler, rank, world_size

    def __iter__(self):
        for batch in self.batch_sampler:
            n = len(batch)
            if n < self.world_size:
                continue
            yield list(batch[self.rank * n // self.world_size:(self.rank + 1) * n // self.world_size])

    def __len__(self) -> int:
        batches = len(self.batch_sampler)
        sampler, size = getattr(self.batch_sampler, "sampler", None), getattr(self.batch_sampler, "batch_size", None)
        if sampler is not None and size and not self.batch_sampler.drop_last and 0 < len(sampler) % size < self.world_size:
            batches -= 1  # the short last batch that __iter__ skips
        return batches
