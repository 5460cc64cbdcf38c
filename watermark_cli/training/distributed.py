"""Data-parallel training across processes (torchrun), and a no-op stand-in for one process.

`torchrun --nproc_per_node N -m watermark_cli train ...` starts N copies of `wm train` with
RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous address) in their environment. Each process
trains on its own slice of every global batch; DistributedDataParallel averages the gradients,
so the model and optimiser stay identical everywhere. Per-sample state (penalty coefficients,
Lagrange multipliers) stays identical because every process records every process's
observations (`gather`). Metrics are summed or minimised across processes, and only rank 0
writes files. Backends: NCCL on GPUs, gloo on CPUs (what the tests use).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import BadInputError


@dataclass
class Cluster:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    started: bool = False

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1

    def gather(self, tensor):
        """Every process's tensor (same shape everywhere), concatenated in rank order."""
        if not self.parallel:
            return tensor
        import torch
        import torch.distributed as dist

        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def sum(self, values: list[float]) -> list[float]:
        return self._reduce(values, "sum")

    def min(self, values: list[float]) -> list[float]:
        return self._reduce(values, "min")

    def _reduce(self, values: list[float], how: str) -> list[float]:
        if not self.parallel:
            return list(values)
        import torch
        import torch.distributed as dist

        device = f"cuda:{self.local_rank}" if dist.get_backend() == "nccl" else "cpu"
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if how == "sum" else dist.ReduceOp.MIN)
        return tensor.cpu().tolist()

    def gather_objects(self, value) -> list:
        """Every process's picklable value, in rank order (on every process)."""
        if not self.parallel:
            return [value]
        import torch.distributed as dist

        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        if self.parallel:
            import torch.distributed as dist

            dist.barrier()

    def stop(self) -> None:
        if self.started:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.started = False


def start_cluster(use_cuda: bool) -> Cluster:
    """Join the process group that torchrun describes in the environment, or run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Cluster()
    import torch
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise BadInputError(f"process {rank} wants GPU {local_rank} but only {torch.cuda.device_count()} are visible")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Cluster(rank=rank, world_size=world_size, local_rank=local_rank, started=True)
