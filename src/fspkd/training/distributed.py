"""Process-group set-up for ``torchrun`` (gloo on CPU, NCCL on GPU) and the few collectives the engine needs."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fspkd.core.errors import FspkdError


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this run joined the process group and leaves it at the end

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None) -> Context:
    """Join the process group that ``torchrun`` describes in the environment (a no-op for one process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = resolve_device(device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns_group = world_size > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(rank, world_size, device, owns_group)


def available_devices() -> list[str]:
    """The devices this machine can run on, as --device takes them."""
    names = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def resolve_device(text: str, local_rank: int = 0) -> torch.device:
    """The device ``text`` names ('cpu', 'cuda' = this process's GPU, 'cuda:1', ...), if this machine has it; else
    FspkdError naming what is available."""
    available = ", ".join(available_devices())
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise FspkdError(f"--device {text!r} is not a device name; available here: {available}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            built = "torch built without CUDA" if torch.version.cuda is None else "no CUDA GPU found"
            raise FspkdError(f"--device {text}: CUDA is not available on this machine ({built}); "
                             f"available here: {available}")
        index = local_rank if device.index is None else device.index
        if index >= count:
            raise FspkdError(f"--device {text}: this machine has {count} CUDA device(s); available here: {available}")
        return torch.device("cuda", index)
    if device.type != "cpu" and f"{device.type}" not in available and str(device) not in available:
        raise FspkdError(f"--device {text}: no {device.type} device on this machine; available here: {available}")
    return device


def teardown(ctx: Context, wait: bool = True) -> None:
    """Leave the process group if ``setup`` joined it, once every rank is done (gloo aborts a process whose
    peers leave first). ``wait=False`` after a failure on this rank alone: leave it to the process exit."""
    if ctx.owns_group and dist.is_initialized() and wait:
        dist.barrier()
        dist.destroy_process_group()


def average_gradients(params, ctx: Context) -> None:
    """Replace each gradient by its mean over ranks (what DDP does for the modules it wraps)."""
    _average_in_place([p.grad for p in params if p.grad is not None], ctx)


def average_float_buffers(module: torch.nn.Module, ctx: Context) -> None:
    """Replace each floating-point buffer (BatchNorm running statistics) by its mean over ranks."""
    _average_in_place([b for b in module.buffers() if b.is_floating_point()], ctx)


def _average_in_place(tensors: list[torch.Tensor], ctx: Context) -> None:
    """All tensors averaged over ranks in one all-reduce of their concatenation."""
    if not ctx.distributed or not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for tensor in tensors:
        tensor.detach().copy_(flat[offset:offset + tensor.numel()].view_as(tensor))
        offset += tensor.numel()


def sum_over_ranks(values: torch.Tensor, ctx: Context) -> torch.Tensor:
    """The sum of ``values`` over all ranks (the values themselves on one process); divide by
    ``ctx.world_size`` for the mean."""
    if not ctx.distributed:
        return values
    values = values.detach().clone()
    dist.all_reduce(values)
    return values


def any_rank(flag: bool, ctx: Context) -> bool:
    """True when ``flag`` is true on any rank (so all ranks stop together)."""
    if not ctx.distributed:
        return flag
    value = torch.tensor([float(flag)], device=ctx.device)
    dist.all_reduce(value)
    return bool(value.item())


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()

