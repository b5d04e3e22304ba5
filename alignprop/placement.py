"""Where the frozen reward models run (``--reward_device``), and moving pixels there.

``replicate`` / ``shard`` / ``dedicated`` / a device name; :class:`PlacedReward` moves the
generated images to the reward's device with their gradient and the scores back.
"""
from __future__ import annotations

import logging

import torch

from .distributed import find_modules, shard_frozen

REWARD_PLACEMENTS = ("replicate", "shard", "dedicated")


def check_reward_device(spec: str) -> None:
    """Validate ``--reward_device`` without touching any device (flag parsing time)."""
    if spec in REWARD_PLACEMENTS:
        return
    try:
        device = torch.device(spec)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"--reward_device must be one of {list(REWARD_PLACEMENTS)} or a device "
                         f"such as 'cuda:1' or 'cpu', got {spec!r}")


def reward_device(spec: str, train_device: torch.device, local_rank: int = 0,
                  local_processes: int = 1) -> torch.device:
    """Where the frozen reward models of this process live.

    ``replicate`` / ``shard``: the process's own device (``shard`` then splits them across
    processes). ``dedicated``: the GPU ``local_rank + local_processes`` of this machine, so
    with P processes on 2P GPUs, process r trains on GPU r and scores on GPU P + r. A device
    name (``cuda:1``, ``cpu``) puts them there for every process.
    """
    check_reward_device(spec)
    if spec in ("replicate", "shard"):
        return torch.device(train_device)
    if spec == "dedicated":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        wanted = local_rank + local_processes
        if wanted >= count:
            raise ValueError(
                f"--reward_device dedicated: {local_processes} training process(es) on this "
                f"machine need {2 * local_processes} GPUs (one to train and one to score "
                f"each), found {count}; launch at most {count // 2} process(es) per machine "
                f"(`--num_processes`) or use --reward_device replicate/shard")
        return torch.device("cuda", wanted)
    device = torch.device(spec)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ValueError(f"--reward_device {spec}: this machine has {count} CUDA device(s)")
    return device


def _same_device(a, b) -> bool:
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index or 0) == (b.index or 0)


class PlacedReward:
    """A reward that runs on another device than the sampler.

    Images (and inputs) are copied to the reward's device with ``Tensor.to``, which autograd
    differentiates (the gradient is copied back), and the scores come back to ``home``; so
    the reward's gradient still reaches the generated pixels and the LoRA.
    """

    def __init__(self, reward, device: torch.device, home: torch.device):
        self.reward, self.device, self.home = reward, torch.device(device), torch.device(home)

    def __call__(self, images, inputs=None, prompts=None):
        if inputs is not None:
            inputs = inputs.to(self.device)
        scores, metrics = self.reward(images.to(self.device), inputs, prompts)
        return scores.to(self.home), metrics

    def __getattr__(self, name):  # terms, describe(), names ... of the wrapped reward
        return getattr(self.reward, name)


def place_reward(reward, spec: str, device: torch.device, home: torch.device,
                 sharded_run: bool = False):
    """Apply ``--reward_device`` to a built reward (``device`` from :func:`reward_device`).

    ``shard`` shards every model the reward holds with FSDP2 (needs an FSDP launch, since
    every process then takes part in every reward forward).
    """
    if spec == "shard":
        if not sharded_run:
            raise ValueError("--reward_device shard needs an FSDP launch (`accelerate launch "
                             "--config_file configs/accelerate/fsdp2_<N>gpu.yaml`); with one "
                             "process or DDP use replicate, dedicated or a device name")
        modules = find_modules(reward)
        inner = {id(sub) for m in modules for sub in list(m.modules())[1:]}
        units = [shard_frozen(m) for m in modules  # outermost models only
                 if id(m) not in inner and any(True for _ in m.parameters())]
        logging.getLogger("alignprop").info(
            "--reward_device shard: %d reward model(s) sharded across the processes "
            "(%d FSDP units)", len(units), sum(units))
    if not _same_device(device, home):
        return PlacedReward(reward, device, home)
    return reward


__all__ = ["REWARD_PLACEMENTS", "check_reward_device", "reward_device", "PlacedReward",
           "place_reward"]
