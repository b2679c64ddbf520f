"""Data-parallel training on torch.distributed: the process group from torchrun's environment (gloo on CPU,
nccl on GPU), DDP or FSDP2 wrapping, gathering full model and optimizer states for rank 0 to write, and the
small collectives that keep every rank's decisions (skip a step, stop early, abort) the same."""
from __future__ import annotations

import contextlib
import copy
import gc
import os
import socket
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from ..models.contract import transformer_blocks
from ..devices import check_device

# torchrun sets these; RANK and WORLD_SIZE are all a process needs to find its place
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# optimizer options that belong to the running process, not to the checkpoint it resumes
PROCESS_OPTIONS = ("fused", "foreach", "capturable", "differentiable")


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """The torch.device of `train.device`; with `auto` (or `cuda`) a distributed rank takes GPU LOCAL_RANK."""
    device = check_device(name, "train.device")  # unknown, meta, or a GPU that is not there: one clear error
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _TaskStep(nn.Module):
    """One micro-step's loss as a module's forward, so DDP and FSDP see every model call a task makes
    (a task may call model.classify or model.hidden_states, not only forward)."""

    def __init__(self, model: nn.Module, loss: Callable):
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch: dict | None, call: Callable | None = None):
        # `call` runs any other use of the model (evaluation) inside FSDP's forward hooks
        return call(self.model) if call is not None else self.loss(self.model, batch)


class Parallel:
    """How this process takes part in training: mode none / ddp / fsdp, its rank, the world size, its device."""

    def __init__(self, mode: str, device_name: str):
        self.mode = mode
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if mode == "none" and world > 1:
            raise ValueError(f"this process was started as one of {world} (WORLD_SIZE={world}, e.g. by torchrun) "
                             "but train.parallel is 'none'; set train.parallel=ddp or train.parallel=fsdp")
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = world
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = pick_device(device_name, self.local_rank)
        self.owns_group = False
        if mode != "none" and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            if "MASTER_ADDR" in os.environ:
                dist.init_process_group(backend, rank=self.rank, world_size=self.world)
            else:  # one process without torchrun: a group of one, so FSDP and DDP code paths still run
                dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
            self.owns_group = True
        if mode != "none":
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.model: nn.Module | None = None
        self.loss_fn: Callable | None = None
        self.engine: nn.Module | None = None
        self.replica: nn.Module | None = None

    @property
    def main(self) -> bool:
        """Rank 0: the only process that logs, prints and writes files."""
        return self.rank == 0

    def wrap(self, model: nn.Module, loss: Callable) -> None:
        """Prepare `model` (already on self.device, weights final) for data-parallel training with `loss`."""
        self.model, self.loss_fn = model, loss
        if self.mode == "none":
            return
        step = _TaskStep(model, loss)
        if self.mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            # unused parameters (an MLM head during classification) must not stall the gradient reduction
            self.engine = DistributedDataParallel(
                step, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
            return
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        if self.main:  # a plain copy that receives the gathered weights when rank 0 writes a model directory
            self.replica = copy.deepcopy(model).to("cpu")
        mesh = init_device_mesh(self.device.type, (self.world,))
        # one shard group per Transformer block: only one block is gathered at a time
        for block in transformer_blocks(model) or ():
                fully_shard(block, mesh=mesh)
        self.engine = fully_shard(step, mesh=mesh)

    def loss(self, batch: dict):
        """(loss, metrics) of one micro-batch, through the DDP / FSDP wrapper when there is one."""
        if self.engine is None:
            return self.loss_fn(self.model, batch)
        return self.engine(batch)

    def sync(self, final: bool):
        """Context for one micro-step's backward: gradients are reduced across ranks only on the final one."""
        if self.mode == "ddp" and not final:
            return self.engine.no_sync()
        if self.mode == "fsdp":
            self.engine.set_requires_gradient_sync(final)
        return contextlib.nullcontext()

    def evaluate(self, call: Callable):
        """call(model) for work outside training steps (evaluation): under FSDP it runs inside the root's
        forward, whose hooks gather the parameters that live outside the blocks."""
        if self.mode != "fsdp":
            return call(self.model)
        return self.engine(None, call)

    # -- collectives (no-ops in one process) -------------------------------------------------------
    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any rank."""
        if self.world == 1:
            return bool(flag)
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            values = values.to(self.device)
            dist.all_reduce(values)
        return values

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    # -- states: full tensors, so a checkpoint loads on any world size and in one process -------------
    def model_state(self) -> dict[str, torch.Tensor]:
        """The full model state_dict (on every rank but FSDP's non-zero ranks, which get {}); collective."""
        if self.mode != "fsdp":
            return self.model.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.engine, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k.removeprefix("model."): v for k, v in full.items()}

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a full state_dict (as model_state gives: under FSDP only rank 0's counts) into the training model."""
        if self.mode != "fsdp":
            self.model.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        # rank 0 holds the full state (model_state gives the others {}): it is broadcast and sharded
        set_model_state_dict(self.engine, {f"model.{k}": v for k, v in state.items()},
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))

    def export_module(self) -> nn.Module:
        """A plain module holding the current full weights, for rank 0 to save; collective under FSDP."""
        if self.mode != "fsdp":
            return self.model
        state = self.model_state()
        if self.main:
            self.replica.load_state_dict(state)
        return self.replica

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        """The optimizer's full state_dict with parameters numbered in param_groups order, as one process's
        optimizer.state_dict() gives; collective under FSDP (ranks other than 0 get {})."""
        if self.mode != "fsdp":
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        full = get_optimizer_state_dict(self.engine, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.main:
            return {}
        number = {name: i for i, name in enumerate(n for g in full["param_groups"] for n in g["params"])}
        return {"state": {number[name]: values for name, values in full["state"].items()},
                "param_groups": [{**g, "params": [number[n] for n in g["params"]]} for g in full["param_groups"]]}

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """Load a state_dict in optimizer_state's layout (from any world size) on every rank."""
        for saved, current in zip(state["param_groups"], optimizer.param_groups):
            for key in PROCESS_OPTIONS:
                if key in current:
                    saved[key] = current[key]
        if self.mode != "fsdp":
            optimizer.load_state_dict(state)  # moves each tensor to its parameter's device and dtype
            return
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                             set_optimizer_state_dict)

        template = get_optimizer_state_dict(self.engine, optimizer, options=StateDictOptions(full_state_dict=True))
        names = [n for g in template["param_groups"] for n in g["params"]]
        full = {"state": {names[int(i)]: values for i, values in state["state"].items()},
                "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}
        set_optimizer_state_dict(self.engine, optimizer, full, options=StateDictOptions(full_state_dict=True))

    def rng_state(self) -> dict[str, torch.Tensor]:
        """Every rank's random-number state (rank 0's under the single-process names); collective."""
        mine = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            mine["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.world == 1:
            out = {"rng.cpu": mine["cpu"]}
            if torch.cuda.is_available():
                out.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
            return out
        states: list = [None] * self.world
        dist.all_gather_object(states, mine)
        return {f"rng.{kind}.rank{rank}": value for rank, state in enumerate(states) for kind, value in state.items()}

    def load_rng_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore this rank's random-number state when the checkpoint has it (same world size)."""
        if self.world == 1 and "rng.cpu" in tensors:
            torch.set_rng_state(tensors["rng.cpu"])
            cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.") and "rank" not in k]
            if cuda and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(cuda)
            return
        for key in (f"rng.cpu.rank{self.rank}", "rng.cpu" if self.rank == 0 else None):
            if key in tensors:
                torch.set_rng_state(tensors[key])
                break
        if self.device.type == "cuda" and f"rng.cuda.rank{self.rank}" in tensors:
            torch.cuda.set_rng_state(tensors[f"rng.cuda.rank{self.rank}"], self.device)

    def close(self) -> None:
        """End data parallelism: the DDP/FSDP wrapper first, then the process group this object started."""
        self.engine = None  # a DDP reducer freed after its gloo group was destroyed can hang in the group's teardown
        if self.owns_group and dist.is_initialized():
            gc.collect()  # the finished loop's closures may still reach the reducer through reference cycles
            dist.destroy_process_group()
            self.owns_group = False
