"""GRPO / D3PO rounds: sample with the SDE, judge without gradient, store; train on the store.

Methods that learn from scores (``--method grpo`` / ``d3po``) work in rounds. A round starts
at the first micro-batch of its first optimizer step:

* **sample**: ``--rl_inputs_per_round`` inputs per process from the data stream; each gives
  G = ``--grpo_group_size`` samples (GRPO; each its own initial noise) or one pair (D3PO; the
  two share the initial noise and differ by the steps' noise, as D3PO's sampling does),
  drawn with Flow-GRPO's SDE at ``--sde_noise`` under the current LoRA, no gradient. Every
  seed is a function of (seed, round, rank, input, sample).
* **judge**: the reward runs once on the round's images, without gradient (any reward:
  a command, a JPEG size, a VLM's answer, or a differentiable one used as a score).
  GRPO: advantage = (r - group mean) / (std + 1e-4), std of the group or of the whole
  round over all processes (``--grpo_std``). D3PO: each pair's preferred sample is the one
  scored higher (a tie trains nothing).
* **store**: the trajectories (:class:`~alignprop.trajectory.Trajectory`), images, scores.

Then the round's units (GRPO samples, D3PO pairs) are trained on for ``--rl_inner_epochs``
passes, each a fresh order drawn from (seed, round, epoch, rank), in micro-batches of
``--train_batch_size`` units; one optimizer step accumulates ``A`` micro-batches x the T
trained transitions (all N, or a ``--rl_window`` drawn per round), one transition per
call of the method -- the trainer's accumulation loop, as Flow-GRPO and D3PO accumulate
over timesteps. A round therefore lasts ``units / (batch x A) x epochs`` optimizer steps.

With ``--preferences`` (D3PO on people's choices) nothing is sampled: each optimizer step
takes ``batch x A`` examples per process from the data stream over the preference
examples, and trains on exactly the stored trajectories of those pairs (preferred first).

Resume is exact: a checkpoint saved inside a round stores the round
(``rollout_<rank>.json`` + ``.safetensors``, pickle-free), and everything else a step sees
is a function of (seed, step, micro-batch, rank).
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from common.cli import UserError
from common.images import load_image

from .checkpoint import CheckpointError, read_state_files, write_state_files
from .data import load_batch, seed_for
from .methods import Batch, RolloutSlice
from .pairs_format import PairsManifest
from .preferences import Preferences, load_preferences
from .sampler import stack_prompt_embeds
from .trajectory import Trajectory, TrajectoryError

logger = logging.getLogger("alignprop")

ROUND_FILE = "rollout_{rank}"
ADV_EPS = 1e-4      # Flow-GRPO's stat tracker: (r - mean) / (std + 1e-4)


class PreferencesMismatchError(UserError):
    """The pairs were sampled under settings other than this run's."""


@dataclass
class Round:
    """One round's stored samples on this process (S samples; D3PO: P = S / 2 pairs)."""

    index: int
    traj: Trajectory                # (S, N+1, L, C) latents, log-probs under the sampler
    inputs: torch.Tensor            # (S,3,H,W) each sample's input
    images: torch.Tensor            # (S,3,H,W) each sample's decoded output
    rewards: Optional[torch.Tensor]  # (S,) the judge's scores; None: people chose
    advantages: torch.Tensor        # (S,) GRPO; zeros for D3PO
    pairs: torch.Tensor             # (P, 2) long: D3PO's sample indices (a, b); empty for GRPO
    prefer: torch.Tensor            # (P,) +1 a preferred, -1 b preferred, 0 tie
    steps: list                     # trained transitions of this round
    metrics: dict = field(default_factory=dict)

    def state(self) -> dict:
        t = self.traj
        return {"index": self.index, "latents": t.latents, "log_probs": t.log_probs,
                "timesteps": t.timesteps, "sigmas": t.sigmas, "seeds": t.seeds,
                "image_tokens": t.image_tokens, "prompts": list(t.prompts),
                "noise_level": t.noise_level, "reduction": t.reduction, "inputs": self.inputs,
                "images": self.images, "rewards": self.rewards, "advantages": self.advantages,
                "pairs": self.pairs, "prefer": self.prefer, "steps": list(self.steps),
                "metrics": dict(self.metrics)}

    @classmethod
    def from_state(cls, s: dict) -> "Round":
        traj = Trajectory(s["latents"], s["log_probs"], s["timesteps"], s["sigmas"], s["seeds"],
                          s["image_tokens"], list(s["prompts"]), float(s["noise_level"]),
                          s["reduction"])
        return cls(int(s["index"]), traj, s["inputs"], s["images"], s["rewards"],
                   s["advantages"], s["pairs"], s["prefer"], [int(j) for j in s["steps"]],
                   dict(s["metrics"]))


# --------------------------------------------------------------------------- people's choices
class PreferencePairs:
    """The training data of ``--method d3po --preferences``: one example per aggregated choice.

    Stands where the image folder stands for the other methods (``len``, ``all_prompts``):
    the data stream runs over the examples. Every used pair's trajectory file is read once
    and checked against this run (steps, size, schedule, a noise level > 0).
    """

    def __init__(self, path: str, mode: str, cfg):
        prefs: Preferences = load_preferences(path, None, mode)
        logger.info("%s", prefs.summary())
        if not prefs.examples:
            raise PreferencesMismatchError(f"{prefs.path}: no usable choices ({prefs.summary()})")
        check_pairs_fit(prefs.pairs, cfg)
        self.preferences = prefs
        self.examples = list(prefs.examples)
        self.skipped: list = []
        self.failed_during_run: list = []
        by_id = prefs.pairs.by_id
        self.trajectories: dict[str, Trajectory] = {}
        self.inputs: dict[str, torch.Tensor] = {}
        self.images: dict[str, torch.Tensor] = {}
        self.prompts: dict[str, str] = {}
        for pid in dict.fromkeys(pid for pid, _ in self.examples):
            pair = by_id[pid]
            path_t = prefs.pairs.path(pair.trajectory)
            traj = Trajectory.load(path_t)
            if traj.batch_size != 2 or traj.num_steps != cfg.sample_num_steps:
                raise TrajectoryError(f"{path_t}: expected the 2 samples of a pair over "
                                      f"{cfg.sample_num_steps} steps, got {traj.batch_size} "
                                      f"samples over {traj.num_steps}")
            if not traj.noise_level > 0:
                raise TrajectoryError(f"{path_t}: sampled at noise level {traj.noise_level}; "
                                      f"D3PO needs the SDE's log-probabilities (noise > 0)")
            self.trajectories[pid] = traj
            self.inputs[pid] = load_image(prefs.pairs.path(pair.input))
            self.images[pid] = torch.stack([load_image(prefs.pairs.path(p))
                                            for p in pair.images])
            self.prompts[pid] = pair.prompt

    def __len__(self) -> int:
        return len(self.examples)

    def all_prompts(self) -> list[str]:
        return sorted(set(self.prompts.values()))


def check_pairs_fit(pairs: PairsManifest, cfg) -> None:
    """Refuse, in one line, pairs sampled under another model, size or number of steps."""
    wanted = {"base_model": cfg.pretrained_model, "num_steps": cfg.sample_num_steps,
              "height": cfg.image_height, "width": cfg.image_width}
    flags = {"base_model": "--pretrained_model", "num_steps": "--sample_num_steps",
             "height": "--image_height", "width": "--image_width"}
    for key, value in wanted.items():
        if getattr(pairs, key) != value:
            raise PreferencesMismatchError(
                f"{pairs.manifest_path}: the pairs were sampled with {key} "
                f"{getattr(pairs, key)!r}, this run has {flags[key]} {value!r}; train with the "
                f"settings the pairs were sampled with")
    if pairs.lora is not None:
        raise PreferencesMismatchError(
            f"{pairs.manifest_path}: sampled with the LoRA {pairs.lora}; D3PO's reference is "
            f"the base model, so train on pairs sampled from the base model")


# --------------------------------------------------------------------------- rounds
class Rollouts:
    """Where the micro-batches of ``--method grpo`` / ``d3po`` come from (module doc)."""

    def __init__(self, cfg, preference_data: Optional[PreferencePairs] = None):
        self.cfg = cfg
        self.method = cfg.method
        self.people = preference_data
        self.num_steps = cfg.sample_num_steps
        self.transitions = cfg.transitions(self.num_steps)
        self.group = cfg.grpo_group_size if self.method == "grpo" else 2
        self.per_micro = cfg.train_batch_size
        self.accum = cfg.train_gradient_accumulation_steps
        if self.people is not None:   # one "round" = one optimizer step's examples
            self.units, self.epochs = self.per_micro * self.accum, 1
        else:
            self.units = cfg.rl_inputs_per_round * (self.group if self.method == "grpo" else 1)
            self.epochs = cfg.rl_inner_epochs
        self.updates_per_epoch = self.units // (self.per_micro * self.accum)
        self.updates_per_round = self.updates_per_epoch * self.epochs
        self.round: Optional[Round] = None
        self.unit_name = "sample" if self.method == "grpo" else "pair"

    # ------------------------------------------------------------------ arithmetic
    def describe(self, world: int, n_items: int, total_steps: int) -> str:
        cfg, units = self.cfg, self.unit_name
        steps = ("all" if cfg.rl_timesteps == "all" else "a window drawn per round")
        trained = (f"each {units} trains {self.transitions} of its {self.num_steps} transitions "
                   f"({steps}), one per backward pass -> {self.per_micro} {units}(s) x "
                   f"{self.accum} accumulation x {self.transitions} = "
                   f"{self.accum * self.transitions} backward passes per optimizer step")
        if self.people is not None:
            return (f"batch arithmetic: D3PO on people's choices: {self.per_micro} pair(s) per "
                    f"device x {world} process(es) x {self.accum} accumulation step(s) = "
                    f"{self.per_micro * world * self.accum} stored pairs per optimizer step; "
                    f"{n_items} preference examples -> "
                    f"{n_items / (self.per_micro * world * self.accum):.2f} steps per epoch; "
                    f"{total_steps} steps in total; {trained}")
        made = (f"x G={self.group} samples = {self.units} samples" if self.method == "grpo"
                else f"x 1 pair (2 samples, shared initial noise) = {self.units} pairs")
        rounds = -(-total_steps // self.updates_per_round)
        return (f"batch arithmetic: {self.method.upper()} rounds: {cfg.rl_inputs_per_round} "
                f"input(s) per device per round {made} per device "
                f"({self.units * world} over {world} process(es)), sampled with the SDE at "
                f"noise {cfg.sde_noise} over {self.num_steps} steps; {self.units} {units}s / "
                f"({self.per_micro} per micro-batch x {self.accum} accumulation step(s)) = "
                f"{self.updates_per_epoch} optimizer step(s) per inner epoch x {self.epochs} "
                f"inner epoch(s) = {self.updates_per_round} optimizer step(s) per round; "
                f"{trained}; {n_items} training images -> "
                f"{n_items / (cfg.rl_inputs_per_round * world):.2f} rounds per epoch; "
                f"{total_steps} steps in total ({rounds} rounds)")

    # ------------------------------------------------------------------ one micro-batch
    def micro_batch(self, run, micro: int, k: int) -> Batch:
        """Micro-batch ``micro`` of the current optimizer step: (units, transition)."""
        step = run.global_step
        index, update = divmod(step, self.updates_per_round)
        if micro == 0 and (self.round is None or self.round.index != index):
            self.round = (self._people_round(run, index) if self.people is not None
                          else self._sample_round(run, index))
        rnd = self.round
        mb, t = divmod(micro, self.transitions)
        epoch, position = divmod(update, self.updates_per_epoch)
        order = self._order(index, epoch, run.rank)
        start = (position * self.accum + mb) * self.per_micro
        units = order[start:start + self.per_micro]
        if self.method == "grpo":
            rows, first = units, units
            sl = RolloutSlice(None, rnd.steps[t], advantages=rnd.advantages[units])
        else:
            a, b = rnd.pairs[units, 0], rnd.pairs[units, 1]
            rows, first = torch.cat([a, b]), a
            sl = RolloutSlice(None, rnd.steps[t], prefer=rnd.prefer[units])
        device = run.device
        sl.traj = rnd.traj.rows(rows).to(device)
        sl.rewards = None if rnd.rewards is None else rnd.rewards[rows].to(device)
        sl.images = rnd.images[first].to(device)
        sl.metrics = rnd.metrics
        prompts = list(sl.traj.prompts)
        text = stack_prompt_embeds(run.text_cache, prompts).to(device)
        cfg = self.cfg
        return Batch(rnd.inputs[first].to(device), prompts, text,
                     torch.Generator().manual_seed(seed_for(cfg.seed, "noise", step, micro,
                                                            run.rank)),
                     seed_for(cfg.seed, "method", step, micro, run.rank), step, k, rollout=sl)

    def _order(self, index: int, epoch: int, rank: int) -> torch.Tensor:
        """The units' order in inner epoch ``epoch`` of round ``index`` on ``rank``."""
        g = torch.Generator().manual_seed(seed_for(self.cfg.seed, "rl-order", index, epoch, rank))
        return torch.randperm(self.units, generator=g)

    def _steps(self, index: int) -> list[int]:
        if self.cfg.rl_timesteps == "all":
            return list(range(self.num_steps))
        w = self.transitions
        start = random.Random(seed_for(self.cfg.seed, "rl-window", index)).randint(
            0, self.num_steps - w)
        return list(range(start, start + w))

    # ------------------------------------------------------------------ collecting
    @torch.no_grad()
    def _sample_round(self, run, index: int) -> Round:
        """Sample, judge and store round ``index`` under the current weights."""
        cfg, sampler, device = self.cfg, run.sampler, run.device
        n_inputs, group = cfg.rl_inputs_per_round, self.group
        picks = run.stream.take(n_inputs * run.world, run.rank, n_inputs)
        inputs, prompts = load_batch(run.folder, picks)
        inputs = inputs.to(device)
        parts, images = [], []
        with run.accelerator.autocast():
            for i in range(n_inputs):
                seeds = [seed_for(cfg.seed, "rollout", index, run.rank, i, g) for g in range(group)]
                x = inputs[i:i + 1].expand(group, -1, -1, -1)
                text = stack_prompt_embeds(run.text_cache, [prompts[i]] * group).to(device)
                start = None
                if self.method == "d3po":   # the pair starts from one noise (D3PO's sampling)
                    g0 = torch.Generator().manual_seed(seed_for(cfg.seed, "rollout-x0", index,
                                                                run.rank, i))
                    start = sampler.initial_noise(1, g0, device).expand(group, -1, -1)
                tokens = sampler.encode_image(inputs[i:i + 1]).expand(group, -1, -1)
                out, traj = sampler.sample_sde(x, text, cfg.sde_noise, seeds, image_tokens=tokens,
                                               prompts=[prompts[i]] * group, initial_noise=start)
                parts.append(traj.to("cpu"))
                images.append(out.float())
            images = torch.cat(images)
            all_inputs = inputs.repeat_interleave(group, 0)
            all_prompts = [p for p in prompts for _ in range(group)]
            rewards, terms = run.reward_fn(images, all_inputs, all_prompts)
        rewards = rewards.detach().float().to(device)
        scores = rewards.view(n_inputs, group)
        metrics = {k: float(v) for k, v in terms.items()}
        metrics["reward"] = rewards.mean().item()
        metrics["reward_std"] = rewards.std(unbiased=False).item()
        s = len(rewards)
        if self.method == "grpo":
            mean = scores.mean(1, keepdim=True)
            if cfg.grpo_std == "group":
                std = scores.std(1, unbiased=False, keepdim=True)
            else:   # Flow-GRPO's global_std: over every process's samples of the round
                std = run.accelerator.gather(rewards).std(unbiased=False)
            advantages = ((scores - mean) / (std + ADV_EPS)).flatten()
            metrics["zero_std_groups"] = (scores.std(1, unbiased=False) == 0).float().mean().item()
            pairs, prefer = torch.zeros(0, 2, dtype=torch.long), torch.zeros(0)
        else:
            advantages = torch.zeros(s)
            pairs = torch.arange(s).view(-1, 2)
            prefer = torch.sign(scores[:, 0] - scores[:, 1]).cpu()
            metrics["ties"] = (prefer == 0).float().mean().item()
        return Round(index, Trajectory.cat(parts), all_inputs.cpu(), images.cpu(), rewards.cpu(),
                     advantages.cpu(), pairs, prefer, self._steps(index), metrics)

    def _people_round(self, run, index: int) -> Round:
        """The stored pairs of this step's preference examples (preferred sample first)."""
        people = self.people
        picks = run.stream.take(self.units * run.world, run.rank, self.units)
        parts, inputs, images = [], [], []
        for _, i in picks:
            pid, preferred = people.examples[i]
            traj = people.trajectories[pid]
            order = [preferred, 1 - preferred]
            parts.append(traj.rows(order))
            inputs += [people.inputs[pid]] * 2
            images += [people.images[pid][k] for k in order]
        n = len(picks)
        metrics = {"preferred_pairs": float(n)}
        return Round(index, Trajectory.cat(parts), torch.stack(inputs), torch.stack(images), None,
                     torch.zeros(2 * n), torch.arange(2 * n).view(-1, 2), torch.ones(n),
                     self._steps(index), metrics)

    # ------------------------------------------------------------------ checkpoints
    def mid_round(self, step: int) -> bool:
        return self.people is None and step % self.updates_per_round != 0

    def save(self, directory: Path, rank: int, step: int) -> None:
        """Store the unfinished round (every process its own) in a checkpoint of ``step``."""
        if self.mid_round(step) and self.round is not None:
            write_state_files(Path(directory), ROUND_FILE.format(rank=rank), self.round.state())

    def load(self, directory: Path, rank: int, step: int) -> None:
        """Restore the unfinished round a checkpoint of ``step`` holds."""
        if not self.mid_round(step):
            return
        name = ROUND_FILE.format(rank=rank)
        if not (Path(directory) / f"{name}.json").is_file():
            raise CheckpointError(f"{directory}: saved in the middle of a {self.method} round "
                                  f"without {name}.json (process {rank}); resume with as many "
                                  f"processes as the run had")
        rnd = Round.from_state(read_state_files(Path(directory), name))
        if rnd.index != step // self.updates_per_round:
            raise CheckpointError(f"{directory / (name + '.json')}: holds round {rnd.index}, step "
                                  f"{step} is in round {step // self.updates_per_round}; the "
                                  f"round flags (--rl_inputs_per_round, --train_batch_size, ...) "
                                  f"differ from the run's")
        self.round = rnd


__all__ = ["Rollouts", "Round", "PreferencePairs", "PreferencesMismatchError", "check_pairs_fit",
           "seed_for", "ROUND_FILE"]
