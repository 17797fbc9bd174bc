"""ckptcore's collective interface over ``torch.distributed`` (gloo on CPU, NCCL on GPUs).

With ``torch.distributed`` initialized, every save and restore is collective over the
default process group, or over ``CheckpointOptions(process_group=...)``. The operations move
small ``bytes`` (JSON that ckptcore encodes; nothing is pickled) as uint8 tensors, on the
GPU for NCCL and on the CPU otherwise, and wait at most the given timeout
(``Work.wait(timeout)``), so a worker whose peer died raises instead of hanging.

Example::

    torchrun --nproc-per-node 4 train.py     # each worker: dist.init_process_group("nccl")
    path = ck.Checkpoint(model=model, optimizer=opt).save("/shared/run/ckpt")
"""

from __future__ import annotations

import sys
from datetime import timedelta

from ckptcore.distributed.collective import Group
from ckptcore.hookspec import hookimpl

__all__ = ["TorchGroup", "ckptcore_collective_group"]

_BACKGROUND: dict = {}  # id(process group) or None (the default group) -> its gloo group for async saves


class TorchGroup(Group):
    """A ``torch.distributed`` process group as a :class:`ckptcore.distributed.Group`.

    Example:
        >>> TorchGroup.__mro__[1].__name__
        'Group'
    """

    def __init__(self, process_group=None):
        import torch.distributed as dist

        self.pg = process_group
        self.rank = dist.get_rank(process_group)
        self.size = dist.get_world_size(process_group)
        backend = str(dist.get_backend(process_group)).lower()
        if "nccl" in backend:
            import torch

            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            import torch

            self.device = torch.device("cpu")

    def _wait(self, work, timeout: float) -> None:
        if work is not None and not work.wait(timedelta(seconds=timeout)):
            raise TimeoutError(f"no answer within {timeout:g} s")

    def all_gather(self, data: bytes, timeout: float) -> list[bytes]:
        import torch
        import torch.distributed as dist

        n = torch.tensor([len(data)], dtype=torch.int64, device=self.device)
        sizes = [torch.zeros(1, dtype=torch.int64, device=self.device) for _ in range(self.size)]
        self._wait(dist.all_gather(sizes, n, group=self.pg, async_op=True), timeout)
        lens = [int(s.item()) for s in sizes]
        top = max(lens) or 1
        buf = torch.zeros(top, dtype=torch.uint8)
        if data:
            buf[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        buf = buf.to(self.device)
        outs = [torch.empty(top, dtype=torch.uint8, device=self.device) for _ in range(self.size)]
        self._wait(dist.all_gather(outs, buf, group=self.pg, async_op=True), timeout)
        return [bytes(o[:k].cpu().numpy().tobytes()) for o, k in zip(outs, lens)]

    def background(self, timeout: float) -> TorchGroup:
        """A gloo group of the same ranks for async saves, created once per process group (collectively).

        An async save's collective steps run on its writer thread while training goes on with its own
        collectives: on a separate group, the two never interleave on one communicator.
        """
        import torch.distributed as dist

        key = id(self.pg) if self.pg is not None else None
        pg = _BACKGROUND.get(key)
        if pg is None:
            ranks = dist.get_process_group_ranks(self.pg) if self.pg is not None else None
            pg = _BACKGROUND[key] = dist.new_group(ranks=ranks, backend="gloo", timeout=timedelta(seconds=timeout))
        return TorchGroup(pg)

    def broadcast(self, data: bytes | None, src: int, timeout: float) -> bytes:
        return self.all_gather(data if self.rank == src else b"", timeout)[src]

    def barrier(self, timeout: float) -> None:
        self.all_gather(b"", timeout)


@hookimpl
def ckptcore_collective_group(process_group):
    """The group of an initialized ``torch.distributed``; None otherwise (torch is not imported for this).

    Example:
        >>> ckptcore_collective_group(None) is None   # torch.distributed not initialized here
        True
    """
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        if process_group is not None:
            from ckptcore.errors import CheckpointError

            raise CheckpointError(f"CheckpointOptions(process_group={process_group!r}): torch.distributed is not "
                                  "initialized in this process")
        return None
    return TorchGroup(process_group)
