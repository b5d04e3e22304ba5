"""Checkpoints hold no pickle: a crafted checkpoint cannot run code; bad files give one line."""
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from alignprop.checkpoint import (CheckpointError, load_checkpoint, read_state_files,
                                  save_checkpoint, write_state_files)


class FakeAccelerator:
    """The few accelerate attributes the checkpoint code uses (one process)."""

    is_main_process = True
    process_index = 0
    scaler = None

    def wait_for_everyone(self):
        pass


class _Plant:
    """Unpickling this creates ``path``: proof that a loader ran code from a file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _crafted(marker) -> bytes:
    """A torch pickle (as accelerate writes them) whose unpickling creates ``marker``."""
    import io

    buf = io.BytesIO()
    torch.save(_Plant(marker), buf)
    return buf.getvalue()


def test_the_crafted_file_does_run_code_when_unpickled(tmp_path):
    """Guard for the tests below: the plant really fires under an unsafe loader."""
    marker = tmp_path / "fired"
    (tmp_path / "x.pkl").write_bytes(_crafted(marker))
    torch.load(tmp_path / "x.pkl", weights_only=False)
    assert marker.exists()


def _train_setup(seed=0):
    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    opt = torch.optim.AdamW(params, lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return params, opt, sched


def _steps(params, opt, sched, n):
    for _ in range(n):
        loss = sum((p ** 2).sum() for p in params) + torch.randn(()) * 0  # uses the torch RNG
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def _checkpoint(tmp_path, steps=3):
    params, opt, sched = _train_setup()
    _steps(params, opt, sched, steps)
    weights = {"p0": params[0].detach().clone(), "p1": params[1].detach().clone()}

    def save_model(d):
        from safetensors.torch import save_file
        save_file(weights, str(d / "pytorch_lora_weights.safetensors"))

    ckpt = save_checkpoint(FakeAccelerator(), tmp_path, steps, {"global_step": steps,
                                                                "samples_seen": 2 * steps},
                           optimizer=opt, scheduler=sched, save_model=save_model)
    return ckpt, params, opt, sched


def test_resume_continues_bit_identically(tmp_path):
    ckpt, params, opt, sched = _checkpoint(tmp_path)
    p2, o2, s2 = _train_setup(seed=1)  # a fresh run with other weights
    from safetensors.torch import load_file

    def load_model(d):
        w = load_file(str(d / "pytorch_lora_weights.safetensors"))
        with torch.no_grad():
            p2[0].copy_(w["p0"]), p2[1].copy_(w["p1"])

    state = load_checkpoint(FakeAccelerator(), ckpt, optimizer=o2, scheduler=s2,
                            load_model=load_model)
    assert state["global_step"] == 3
    assert s2.last_epoch == sched.last_epoch and s2.get_last_lr() == sched.get_last_lr()
    assert o2.param_groups[0]["betas"] == (0.8, 0.95)
    _steps(params, opt, sched, 4)
    _steps(p2, o2, s2, 4)
    for a, b in zip(params, p2):
        assert torch.equal(a, b)


def test_rng_states_round_trip(tmp_path):
    from alignprop.checkpoint import rng_state, set_rng_state

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian
    write_state_files(tmp_path, "rng", rng_state())
    first = (random.random(), np.random.randn(), torch.rand(3))
    set_rng_state(read_state_files(tmp_path, "rng"))
    again = (random.random(), np.random.randn(), torch.rand(3))
    assert first[0] == again[0] and first[1] == again[1] and torch.equal(first[2], again[2])


def test_only_json_and_safetensors_are_written(tmp_path):
    ckpt, *_ = _checkpoint(tmp_path)
    suffixes = {p.suffix for p in ckpt.iterdir()}
    assert suffixes <= {".json", ".safetensors"}, suffixes
    assert not list(tmp_path.rglob(".tmp-*"))


ACCELERATE_PICKLES = ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin",
                      "scheduler.bin", "scaler.pt")


def test_crafted_pickles_in_a_checkpoint_never_run(tmp_path, caplog):
    ckpt, _, opt, sched = _checkpoint(tmp_path / "run")
    marker = tmp_path / "code_ran"
    for name in ACCELERATE_PICKLES:
        (ckpt / name).write_bytes(_crafted(marker))
    assert not marker.exists()
    _, o2, s2 = _train_setup()
    load_checkpoint(FakeAccelerator(), ckpt, optimizer=o2, scheduler=s2)
    assert not marker.exists()
    assert "never loaded" in caplog.text


def test_old_pickled_checkpoint_is_refused_in_one_line(tmp_path):
    ckpt = tmp_path / "checkpoint-000004"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 4, "samples_seen": 8}))
    marker = tmp_path / "code_ran"
    for name in ACCELERATE_PICKLES:
        (ckpt / name).write_bytes(_crafted(marker))
    _, o2, s2 = _train_setup()
    with pytest.raises(CheckpointError, match="old pickled format") as exc:
        load_checkpoint(FakeAccelerator(), ckpt, optimizer=o2, scheduler=s2)
    assert "\n" not in str(exc.value)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["optimizer.safetensors", "optimizer.json", "scheduler.json",
                                  "trainer_state.json", "rng_state_0.json"])
def test_corrupt_checkpoint_file_is_named(tmp_path, name):
    ckpt, *_ = _checkpoint(tmp_path)
    f = ckpt / name
    f.write_bytes(f.read_bytes()[: max(1, f.stat().st_size // 2)])  # truncated mid-write
    _, o2, s2 = _train_setup()
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(FakeAccelerator(), ckpt, optimizer=o2, scheduler=s2)
    assert str(f) in str(exc.value) and "\n" not in str(exc.value)


def _tiny_lora(rank, tmp_path=None):
    from alignprop.lora import add_lora
    from alignprop.tiny_kontext import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    add_lora(pipe.transformer, rank, None, ["attn.to_q"])
    return pipe.transformer


def test_corrupt_lora_and_other_rank_are_named(tmp_path):
    from alignprop.lora import LORA_FILE, load_lora_into, save_lora

    t4 = _tiny_lora(4)
    save_lora(t4, tmp_path)
    with pytest.raises(ValueError, match=r"LoRA rank 4 in the file, but --lora_rank is 8") as exc:
        load_lora_into(_tiny_lora(8), tmp_path)
    assert str(tmp_path / LORA_FILE) in str(exc.value)
    f = tmp_path / LORA_FILE
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt or truncated LoRA file") as exc:
        load_lora_into(t4, tmp_path)
    assert str(f) in str(exc.value)


def test_no_pickle_loader_in_our_code():
    """No torch.load without weights_only=True and no pickle.load anywhere we ship."""
    import re

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for f in list((root / "alignprop").rglob("*.py")) + list((root / "rewards").rglob("*.py")) \
            + list(root.glob("*.py")):
        text = f.read_text()
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                offenders.append(f"{f.name}: {m.group(0)}")
        if re.search(r"\bpickle\.loads?\(|load_state\(|register_for_checkpointing", text):
            offenders.append(f"{f.name}: pickle/accelerate load_state")
    assert not offenders, offenders
