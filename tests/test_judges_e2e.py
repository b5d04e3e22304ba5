"""GRPO and D3PO: learning from a judge with no gradient, end to end.

* On tiny-photo, a quantised brightness judge given as ``--reward_command`` (a program: no
  gradient at all) makes held-out photos brighter after a few GRPO / D3PO steps.
* Resume from a checkpoint saved in the middle of a round is exact (random-weight tiny model).
* People's choices: ``--preferences`` trains on exactly the chosen stored trajectories.
* One-line refusals: a gradient method with a judge that has no gradient, a missing judge
  program, a judge that fails while training, pairs that do not fit the run.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import alignprop_fluxkontext as train_cli
from alignprop.config import TrainConfig, parse_config
from alignprop.data import SampleStream
from alignprop.held_out import HeldOut
from alignprop.pairs_format import load_pairs
from alignprop.preferences import PreferenceWriter, choice_record
from alignprop.reward_flags import RewardFlags
from alignprop.rollout import PreferencePairs, Rollouts
from alignprop.sample_pairs import _parser as sample_pairs_parser, sample_pairs
from alignprop.trainer import train
from alignprop.trajectory import Trajectory
from common.photos import HELD_OUT_NAMES, write_photos

ROOT = Path(__file__).resolve().parents[1]
JUDGE = f"{sys.executable} {ROOT / 'examples' / 'judges' / 'brightness_judge.py'}"
PROMPT = "Make this photo brighter."
PHOTO = ["--pretrained_model", "tiny-photo", "--image_height", "64", "--image_width", "64",
         "--sample_num_steps", "4", "--max_sequence_length", "64", "--prompt", PROMPT,
         "--lora_rank", "8", "--log_with", "none", "--save_freq", "0", "--log_image_freq", "0",
         "--mixed_precision", "no", "--seed", "0"]
TARGETS = ("attn.to_k,attn.to_q,attn.to_v,attn.to_out.0,attn.add_k_proj,attn.add_q_proj,"
           "attn.add_v_proj,attn.to_add_out,ff.net.0.proj,ff.net.2,ff_context.net.0.proj,"
           "ff_context.net.2").split(",")

pytestmark = pytest.mark.slow


def luma(images, inputs=None, prompts=None):
    return (0.2126 * images[:, 0] + 0.7152 * images[:, 1] + 0.0722 * images[:, 2]).mean((1, 2))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")   # pretraining photos; the held-out ones never
    write_photos(d, ["hubble_deep_field", "retina", "camera", "coins"])
    return d


@pytest.fixture(scope="module")
def held_out():
    return HeldOut("tiny-photo", HELD_OUT_NAMES, PROMPT, 64, 4, 8, TARGETS, 64)


@pytest.mark.parametrize("method, flags", [
    ("grpo", ["--train_batch_size", "8", "--rl_inputs_per_round", "2", "--max_train_steps", "4",
              "--train_learning_rate", "3e-3"]),
    ("d3po", ["--train_batch_size", "4", "--rl_inputs_per_round", "4", "--max_train_steps", "6",
              "--train_learning_rate", "1e-2"]),
])
def test_a_judge_without_gradient_brightens_held_out_photos(method, flags, photos, held_out,
                                                             tmp_path, capsys):
    out = tmp_path / method
    args = ["--method", method, "--data_dir", str(photos), "--output_dir", str(out),
            "--reward_command", JUDGE] + PHOTO + flags
    assert train_cli.main(args) == 0
    assert f"batch arithmetic: {method.upper()} rounds" in capsys.readouterr().out
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("train/command" in r for r in rows)          # the program's scores, logged
    base, lora = held_out.score(None, luma), held_out.score(out, luma)
    gain = lora - base
    assert (gain > 0).all() and gain.mean() > 0.01, gain.tolist()


def _tiny_cfg(tmp_path, method, out, **kw):
    kw.setdefault("data_dir", str(tmp_path / "photos"))
    return TrainConfig(pretrained_model="tiny", prompt=PROMPT,
                       output_dir=str(out), image_height=32, image_width=32, sample_num_steps=2,
                       max_sequence_length=16, lora_rank=4, train_learning_rate=3e-2,
                       lora_target_modules="attn.to_q,attn.to_k,attn.to_v,attn.to_out.0,proj_out",
                       log_with="none", log_image_freq=0, mixed_precision="no", seed=5,
                       method=method, **kw)


@pytest.mark.parametrize("method, kw", [
    # a round lasts 2 optimizer steps: the checkpoint of step 1 is inside one
    ("grpo", dict(rl_inputs_per_round=1, grpo_group_size=2, train_batch_size=1,
                  grpo_kl_beta=0.1, grpo_clip_range=0.2)),
    ("d3po", dict(rl_inputs_per_round=2, train_batch_size=1, rl_timesteps="window",
                  rl_window=1)),
])
def test_resume_inside_a_round_is_exact(method, kw, tmp_path):
    write_photos(tmp_path / "photos", ["camera", "coins", "retina"])
    flags = RewardFlags(brightness_anchor_weight=10, brightness_target=0.7, brightness_band=0)
    full = train(_tiny_cfg(tmp_path, method, tmp_path / "a", max_train_steps=3, save_freq=1, **kw),
                 flags)
    ckpt = tmp_path / "a" / "checkpoints" / "checkpoint-000001"
    assert (ckpt / "rollout_0.json").is_file() and (ckpt / "rollout_0.safetensors").is_file()
    resumed_dir = tmp_path / "b" / "checkpoints" / "checkpoint-000001"
    shutil.copytree(ckpt, resumed_dir)
    again = train(_tiny_cfg(tmp_path, method, tmp_path / "b", max_train_steps=3, save_freq=0,
                            resume_from="latest", **kw), flags)
    assert [h["step"] for h in again.history] == [2, 3]
    for a, b in zip(full.history[1:], again.history):
        for key in ("train/loss", "train/reward", "train/grad_norm"):
            assert b[key] == a[key], key
    assert full.history[2]["train/grad_norm"] > 0      # the steps did learn
    wa = load_file(tmp_path / "a" / "pytorch_lora_weights.safetensors")
    wb = load_file(tmp_path / "b" / "pytorch_lora_weights.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# --------------------------------------------------------------------------- people's choices
@pytest.fixture(scope="module")
def tiny_pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("people")
    write_photos(root / "photos", ["camera", "coins"])
    common = ["--pretrained_model", "tiny", "--image_height", "32", "--image_width", "32",
              "--sample_num_steps", "2", "--max_sequence_length", "16", "--prompt", PROMPT]
    args = ["--data_dir", str(root / "photos"), "--output_dir", str(root / "pairs"),
            "--num_pairs", "3"] + common
    manifest = sample_pairs(sample_pairs_parser().parse_args(args), log=lambda *a: None)
    return root, manifest, args, common


def test_sample_pairs_writes_the_same_pairs_again_and_never_over_a_manifest(tiny_pairs, capsys):
    import alignprop.sample_pairs as cli

    root, manifest, args, common = tiny_pairs
    assert [p.id for p in manifest.pairs] == ["0000", "0001", "0002"]
    traj = Trajectory.load(manifest.path(manifest.pairs[0].trajectory))
    assert traj.batch_size == 2 and traj.num_steps == 2 and traj.noise_level == 0.7
    assert torch.equal(traj.latents[0, 0], traj.latents[1, 0])     # one starting noise ...
    assert not torch.equal(traj.latents[0, -1], traj.latents[1, -1])  # ... two edits
    again = sample_pairs(sample_pairs_parser().parse_args(
        [a if a != str(root / "pairs") else str(root / "again") for a in args]),
        log=lambda *a: None)
    for p, q in zip(manifest.pairs, again.pairs):
        assert torch.equal(Trajectory.load(manifest.path(p.trajectory)).latents,
                           Trajectory.load(again.path(q.trajectory)).latents)
    capsys.readouterr()   # the sampling's own log lines; the refusal's output is what counts
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds pairs.json" in err
    assert cli.main(["--data_dir", str(root / "photos"), "--output_dir", str(root / "x"),
                     "--sde_noise", "0"] + common) == 2
    assert "--sde_noise must be > 0" in capsys.readouterr().err


class _FakeRun:   # what a round of people's choices reads from the run
    world, rank = 1, 0

    def __init__(self, n):
        self.stream = SampleStream(n, seed=0)


def test_preferences_train_on_exactly_the_chosen_stored_trajectories(tiny_pairs, tmp_path):
    root, _, _, common = tiny_pairs
    pairs_dir = tmp_path / "pairs"
    shutil.copytree(root / "pairs", pairs_dir)
    manifest = load_pairs(pairs_dir)
    writer = PreferenceWriter(pairs_dir / "preferences.jsonl", manifest)
    chosen = {"0000": 1, "0001": 0}                        # 0002 skipped: left out
    writer.append(choice_record("0000", [0, 1], "right", "Ana"))
    writer.append(choice_record("0001", [1, 0], "right", "Ana"))
    writer.append(choice_record("0002", [0, 1], "skip", "Ana"))
    writer.close()
    args = ["--method", "d3po", "--preferences", str(pairs_dir / "preferences.jsonl"),
            "--output_dir", str(tmp_path / "run"), "--train_batch_size", "2",
            "--max_train_steps", "2", "--log_with", "none", "--save_freq", "0",
            "--log_image_freq", "0", "--mixed_precision", "no"] + common
    cfg, _ = parse_config(args)
    data = PreferencePairs(cfg.preferences, cfg.preference_mode, cfg)
    assert sorted(data.examples) == sorted(chosen.items())
    rollouts = Rollouts(cfg, data)
    rnd = rollouts._people_round(_FakeRun(len(data)), 0)
    picked = [data.examples[i] for _, i in SampleStream(len(data), seed=0).take(2, 0, 2)]
    for k, (pid, preferred) in enumerate(picked):
        stored = Trajectory.load(manifest.path(manifest.by_id[pid].trajectory))
        a, b = rnd.pairs[k].tolist()
        assert torch.equal(rnd.traj.latents[a], stored.latents[preferred])      # preferred
        assert torch.equal(rnd.traj.latents[b], stored.latents[1 - preferred])  # the other
    assert rnd.prefer.tolist() == [1.0, 1.0] and rnd.rewards is None
    assert train_cli.main(args) == 0                        # and it trains on them
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/preferred_pairs"] for r in rows] == [2.0, 2.0]


def test_preferences_refusals_are_one_line(tiny_pairs, tmp_path, capsys):
    root, _, _, common = tiny_pairs
    prefs = root / "pairs" / "preferences.jsonl"
    if not prefs.exists():
        writer = PreferenceWriter(prefs, load_pairs(root / "pairs"))
        writer.append(choice_record("0000", [0, 1], "left", "Ana"))
        writer.close()
    base = ["--method", "d3po", "--preferences", str(prefs), "--output_dir", str(tmp_path / "o"),
            "--log_with", "none"]
    cases = [
        (["--data_dir", str(root / "photos")] + common, "give --data_dir or --preferences"),
        (common + ["--brightness_anchor_weight", "1"], "brightness would not be used"),
        ([a if a != "32" else "48" for a in common], "sampled with height 32"),
        (["--method", "grpo"] + common, "--preferences trains with --method d3po"),
    ]
    for extra, needle in cases:
        assert train_cli.main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err


# --------------------------------------------------------------------------- refusals
def test_gradient_methods_refuse_a_judge_without_gradient(photos, tmp_path, capsys):
    for method in ("alignprop", "draft-lv", "refl", "imagerefl"):
        args = ["--method", method, "--data_dir", str(photos), "--output_dir", str(tmp_path / "o"),
                "--reward_command", JUDGE, "--pretrained_model", "tiny"]
        assert train_cli.main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert f"--method {method} backpropagates the reward, but command gives no gradient" in err
        assert "use --method grpo|d3po" in err
    # a reward given as a function (tests, the demo) is refused the same way
    from rewards import build_rewards
    from alignprop.run import RewardWithoutGradientError

    judge = build_rewards([{"name": "jpeg_compressibility"}])
    with pytest.raises(RewardWithoutGradientError, match="jpeg_compressibility gives no gradient"):
        train(_tiny_cfg(tmp_path, "alignprop", tmp_path / "f", max_train_steps=1,
                        data_dir=str(photos)), RewardFlags(brightness_anchor_weight=1), judge)


def test_reward_command_errors_are_one_line(photos, tmp_path, capsys):
    base = ["--method", "grpo", "--data_dir", str(photos), "--pretrained_model", "tiny",
            "--image_height", "32", "--image_width", "32", "--sample_num_steps", "2",
            "--max_sequence_length", "16", "--log_with", "none", "--max_train_steps", "2"]
    # before any model loads
    for command, needle in (("no_such_judge_xyz --strict", "program 'no_such_judge_xyz' not found"),
                            ("python 'unbalanced", "cannot be split into arguments")):
        assert train_cli.main(base + ["--output_dir", str(tmp_path / "a"),
                                      "--reward_command", command]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err
    # while training: the program fails; its stderr's tail is in the one line
    failing = f"{sys.executable} -c \"import sys; sys.stderr.write('judge broke'); sys.exit(3)\""
    proc = subprocess.run([sys.executable, str(ROOT / "alignprop_fluxkontext.py"), *base,
                           "--output_dir", str(tmp_path / "b"), "--reward_command", failing],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                               "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("alignprop_fluxkontext.py: error: reward command") and \
        "failed with exit status 3: judge broke" in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "unexpected" not in proc.stderr
