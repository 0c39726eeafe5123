"""``torch.distributed`` glue: ranks from ``torchrun``'s environment, DDP on ``gloo`` (CPU) or ``nccl`` (CUDA).

DDP's gradients travel on the default group; the toolkit's own collectives (a loss check and a stop
signal, a mean, rank 0's checkpoint, waiting while rank 0 builds the neighbour graph or writes the map and
report) on a second, ``gloo`` group of CPU tensors: NCCL takes CUDA tensors only, and those waits can outlast
the default timeout (a faiss graph of millions of rows takes hours on a few cores), so that group's is
:data:`WAIT_TIMEOUT`.  A rank that dies still ends the others at once: torchrun stops the whole group.

Without ``WORLD_SIZE`` > 1 in the environment everything is a no-op and the
run is a single process.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
from typing import Any, Callable, TypeVar

import attrs
import torch
import torch.distributed as dist

from .errors import AtlasError, ConfigError

T = TypeVar("T")

WAIT_TIMEOUT = datetime.timedelta(hours=24)  # the toolkit's own collectives; DDP's keep torch's default


@attrs.frozen
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: Any = attrs.field(default=None, eq=False, repr=False)  # the gloo group of our own collectives

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_from_env(device: torch.device) -> DistInfo:
    """Join the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...)."""
    raw = os.environ.get("WORLD_SIZE", "1").strip() or "1"
    if not raw.isdigit():
        raise ConfigError(f"WORLD_SIZE={raw!r} in the environment is not a number of processes; unset it, or start "
                          "the run with torchrun")
    world = int(raw)
    if world <= 1:
        return DistInfo()
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world} is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                          "not: start the run with torchrun (torchrun --nproc_per_node=N -m atlas_plugins.cli ...), "
                          "or unset WORLD_SIZE for a single process")
    local, gpus = os.environ.get("LOCAL_WORLD_SIZE", "1"), torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and local.isdigit() and int(local) > gpus:
        raise ConfigError(f"torchrun starts {local} processes on this host, which has {gpus} CUDA device(s), and "
                          f"each process needs its own: start it with --nproc_per_node={gpus} (or set "
                          "train.device = \"cpu\")")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), group)


def barrier(info: DistInfo) -> None:
    if info.active:
        dist.barrier(group=info.group)


def broadcast(info: DistInfo, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (our own state only: it travels pickled between our processes)."""
    if not info.active:
        return obj
    box = [obj if info.is_main else None]
    dist.broadcast_object_list(box, src=0, group=info.group)
    return box[0]


def host_first(info: DistInfo, load: Callable[[], T]) -> T:
    """``load()`` on each host's first rank (``LOCAL_RANK`` 0) with all the host's cores while the other ranks
    wait, then on the others: what it does once and caches (a text teacher's embeddings, a table converted to
    ``.npy``), they find done.  Before, every rank did it at once on the one thread torchrun gives each
    process.  An :class:`AtlasError` raised there stops every rank with its line."""
    if not info.active:
        return load()
    failed, result = None, None
    if info.local_rank == 0:
        threads = torch.get_num_threads()
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(threads, cores))
        try:
            result = load()
        except AtlasError as exc:
            failed = exc
        finally:
            torch.set_num_threads(threads)
    failures = [exc for exc in gathered(info, failed) if exc is not None]
    if failures:
        raise failures[0]
    return result if info.local_rank == 0 else load()


def agree(info: DistInfo, *values: int) -> list[int]:
    """The largest of each of ``values`` over all ranks, in one all-reduce: a flag that any rank raised (a loss
    that is not finite), a signal that any rank got (so all ranks stop at the same step)."""
    if not info.active:
        return list(values)
    found = torch.tensor(values, dtype=torch.int64)
    dist.all_reduce(found, op=dist.ReduceOp.MAX, group=info.group)
    return found.tolist()


def mean(info: DistInfo, value: float) -> float:
    """The mean of ``value`` over all ranks."""
    if not info.active:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t, group=info.group)
    return float(t.item()) / info.world


def parameter_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def gathered(info: DistInfo, value: Any) -> list:
    """Every rank's ``value`` (a digest it computed, its settings), in rank order, to compare (our own objects:
    they travel pickled between our processes)."""
    if not info.active:
        return [value]
    out: list = [None] * info.world
    dist.all_gather_object(out, value, group=info.group)
    return out


def digests(info: DistInfo, module: torch.nn.Module) -> list[str]:
    """Every rank's parameter digest (rank order); DDP keeps them equal, so they must all match."""
    return gathered(info, parameter_digest(module))


# How the backends say that the other end of a collective went away (gloo; NCCL; a socket)
_PEER_GONE = ("closed by peer", "reset by peer", "remote process exited", "Broken pipe")


def lost_peer(exc: BaseException) -> str:
    """What the backend said (its first sentence, less a source-file prefix) when ``exc`` is a collective of a
    torchrun run failing because another rank stopped, else "": that rank reports its own error; this one's is
    only the broken connection."""
    world = os.environ.get("WORLD_SIZE", "1").strip()
    said = re.sub(r"^\[[^\]]*\]\s*", "", (str(exc).strip().splitlines() or [""])[0]).split(". ")[0]
    gone = world.isdigit() and int(world) > 1 and isinstance(exc, RuntimeError)
    return said[:100] if gone and any(words in str(exc) for words in _PEER_GONE) else ""


def shutdown(info: DistInfo) -> None:
    if info.active and dist.is_initialized():
        dist.destroy_process_group()
