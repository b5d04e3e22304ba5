"""--reward_command: a user's program as the judge (protocol in rewards/command.py)."""
import sys
import textwrap
import time

import pytest
import torch

from rewards import build_rewards, is_differentiable
from rewards.command import CommandReward, RewardCommandError

PY = sys.executable

# The judge: mean brightness of each PNG, read with PIL; writes scores.json (or .csv).
BRIGHTNESS = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    from PIL import Image
    manifest = json.load(open(sys.argv[-1]))
    folder = os.path.dirname(sys.argv[-1])
    assert os.getcwd() == os.path.realpath(folder), (os.getcwd(), folder)
    scores = {}
    for e in manifest["images"]:
        img = np.asarray(Image.open(os.path.join(folder, e["image"])), dtype=float) / 255
        scores[e["name"]] = img.mean()
    with open(os.path.join(folder, "seen.json"), "w") as f:
        json.dump(manifest, f)
    if "--csv" in sys.argv:
        with open("scores.csv", "w") as f:
            f.write("name,score\\n" + "".join(f"{k},{v}\\n" for k, v in scores.items()))
    else:
        json.dump(scores, open("scores.json", "w"))
""")


def _script(tmp_path, body, name="judge.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def _images():
    dark = torch.full((3, 16, 16), 0.2)
    bright = torch.full((3, 16, 16), 0.8)
    return torch.stack([dark, bright, (dark + bright) / 2])


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_scores_come_back_per_image_in_order(tmp_path, fmt):
    judge = _script(tmp_path, BRIGHTNESS)
    extra = " --csv" if fmt == "csv" else ""
    reward = CommandReward(f"{PY} {judge}{extra}")
    scores, metrics = reward(_images(), torch.rand(3, 3, 16, 16), ["a", "b", "c"])
    assert scores.shape == (3,) and not scores.requires_grad
    assert torch.allclose(scores, torch.tensor([0.2, 0.8, 0.5]), atol=3e-3)
    assert scores[1] > scores[2] > scores[0] and metrics["seconds"] > 0


def test_the_program_sees_inputs_and_prompts_and_the_folder_is_removed(tmp_path):
    seen = tmp_path / "keep"
    seen.mkdir()
    judge = _script(tmp_path, BRIGHTNESS + textwrap.dedent(f"""
        import shutil
        shutil.copytree(folder, {str(seen / 'copy')!r})
    """))
    work = tmp_path / "work"
    work.mkdir()
    CommandReward([PY, str(judge)], workdir=work)(_images(), _images(), ["p1", "p2", "p3"])
    import json

    manifest = json.loads((seen / "copy" / "seen.json").read_text())
    assert [e["prompt"] for e in manifest["images"]] == ["p1", "p2", "p3"]
    assert all((seen / "copy" / e["input"]).is_file() for e in manifest["images"])
    assert list(work.iterdir()) == []     # the temporary folder is gone


def _error(reward, *args) -> str:
    with pytest.raises(RewardCommandError) as exc:
        reward(_images(), *args)
    msg = str(exc.value)
    assert "\n" not in msg and len(msg) < 500, msg
    return msg


def test_a_failing_command_is_one_line_with_its_stderr_tail(tmp_path):
    judge = _script(tmp_path, """
        import sys
        print("line one of a traceback\\nValueError: the judge broke", file=sys.stderr)
        sys.exit(3)
    """)
    msg = _error(CommandReward([PY, str(judge)]))
    assert "exit status 3" in msg and "ValueError: the judge broke" in msg


@pytest.mark.parametrize("body, match", [
    ('json.dump({"000.png": 1, "001.png": "high", "002.png": 0}, open("scores.json", "w"))',
     "score of 001.png is not a number: 'high'"),
    ('json.dump({"000.png": 1, "002.png": 0}, open("scores.json", "w"))',
     "no score for 001.png"),
    ('open("scores.csv", "w").write("000.png,1\\n001.png,nan\\n002.png,2\\n")',
     "score of 001.png is not finite"),
    ('open("scores.csv", "w").write("000.png,1\\n001.png,abc\\n002.png,2\\n")',
     "not a number: 'abc'"),
    ('json.dump({"000.png": 1, "001.png": 1, "002.png": 0, "x.png": 3}, open("scores.json", "w"))',
     "'x.png' is not an image of this batch"),
    ('open("scores.json", "w").write("{not json")', "scores.json is not valid JSON"),
    ('json.dump([1, 2, 3], open("scores.json", "w"))', "must be an object"),
    ('pass', "wrote no scores"),
])
def test_bad_scores_are_one_line_errors(tmp_path, body, match):
    judge = _script(tmp_path, "import json\n" + body + "\n")
    assert match in _error(CommandReward([PY, str(judge)]))


def test_a_timeout_kills_the_program_and_its_children(tmp_path):
    marker = tmp_path / "child_survived"
    judge = _script(tmp_path, f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c",
                          "import time; time.sleep(3); open({str(marker)!r}, 'w').write('x')"])
        time.sleep(60)
    """)
    start = time.monotonic()
    msg = _error(CommandReward([PY, str(judge)], timeout=1.0))
    assert "timed out after 1 s" in msg and time.monotonic() - start < 10
    time.sleep(3.5)
    assert not marker.exists()


def test_file_names_and_prompts_are_never_shell_syntax(tmp_path, monkeypatch):
    """No shell: a work folder, an argument and a prompt full of metacharacters stay text."""
    m = tmp_path / "markers"     # a shell would create files here (absolute paths)
    m.mkdir()
    monkeypatch.setenv("MARK", str(m / "P0"))   # a folder name cannot hold a "/"
    work = tmp_path / "a b;touch $MARK&|`touch $MARK`'\"$(touch $MARK)"
    work.mkdir()
    arg = f"; touch {m}/P4 $(touch {m}/P5)"
    judge = _script(tmp_path, BRIGHTNESS + textwrap.dedent(f"""
        assert sys.argv[1] == {arg!r}, sys.argv
    """))
    # the argument is quoted for shlex: it arrives as one literal string
    reward = CommandReward(f"{PY} {judge} '{arg}'", workdir=work)
    scores, _ = reward(_images(), None, [f"`touch {m}/P6`; $(touch {m}/P7)"] * 3)
    assert scores.shape == (3,)
    assert list(m.iterdir()) == []


def test_build_time_errors_are_one_line(tmp_path):
    for args, match in [(("definitely-not-a-program-xyz",), "not found"),
                        (("",), "empty"),
                        (("prog 'unbalanced",), "cannot be split"),
                        ((f"{PY} -c pass",), None)]:
        if match is None:
            for bad in (0, -1, float("nan")):
                with pytest.raises(RewardCommandError, match="timeout"):
                    CommandReward(*args, timeout=bad)
            continue
        with pytest.raises(RewardCommandError, match=match) as exc:
            CommandReward(*args)
        assert "\n" not in str(exc.value)


def test_registry_marks_it_without_gradient(tmp_path):
    judge = _script(tmp_path, BRIGHTNESS)
    comp = build_rewards([{"name": "command", "command": f"{PY} {judge}", "weight": 2.0}])
    assert not is_differentiable("command") and not comp.differentiable
    assert comp.terms_without_gradient == ["command"]
    total, metrics = comp(_images())
    assert torch.allclose(total, 2 * torch.tensor([0.2, 0.8, 0.5]), atol=6e-3)
    assert comp.describe()[0]["differentiable"] is False
