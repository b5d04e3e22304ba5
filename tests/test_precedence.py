"""Which value wins: one rule for every name of a flag, in presets and on the command line.

The pairs are generated, never listed: every alias and convert flag of the original-flags table
(common/original_flags.py) against each of our flags it sets, for the trainer, the scorer and
the benchmark; and every flag of ours that has several names (dataclass aliases, the dash
spelling, ``--no_x``). The rule (docs/original_flags.md, "Which value wins"):

* within one source (the command line, or one preset) names that set the same flag must
  agree, otherwise one line names both (exit code 2);
* between sources the higher wins: command line > preset > --semantics original > ours.
"""
import argparse

import pytest
import torch

import alignprop_fluxkontext
import benchmark_anti_periodic
import internvl_scorer
from alignprop.config import (TRUNCATION_FLAGS, _parser, load_preset, parse_config, preset_path,
                              shipped_presets)
from common.original_flags import add_train_original_flags, show, table
from rewards.vlm_inspect import entropy_bonus

N = 50          # --sample_num_steps of every trainer case (TRL's T is counted from it)
# Values of the original side of a convert flag (the table gives the flag and what it sets;
# these are inputs only). Every value listed is run.
CONVERT_EXAMPLES = {
    "--debug_images": [["true"]],
    "--exp_name": [["exp1"]],
    "--run_name": [["run1"]],
    "--logdir": [["{tmp}/logs"]],
    "--truncated_backprop_rand": [["true"], ["false"]],
    "--truncated_backprop_timestep": [["45"]],
    "--truncated_rand_backprop_minmax": [["20", "26"]],
    "--entropy_coef": [["0.1"]],
}
# Our flags whose values must be real files or fit other flags of the case.
SPECIAL = {"prompt_file": ["{tmp}/p1.txt", "{tmp}/p2.txt"],
           "output_dir": ["{tmp}/o1", "{tmp}/o2"],
           "resume_from": ["{tmp}", "{tmp}/data"],
           "data_dir": ["{tmp}/data", "{tmp}/data2"],
           "pretrained_model": ["tiny", "tiny-photo"],
           "truncation_t_max": ["30", "40"],
           "max_train_steps": ["2", "3"]}


@pytest.fixture
def tmp(tmp_path):
    from common.images import save_image

    for d in ("data", "data2"):
        save_image(torch.rand(3, 32, 32), tmp_path / d / "a.png")
    (tmp_path / "p1.txt").write_text("make it warmer\n")
    (tmp_path / "p2.txt").write_text("make it cooler\n")
    return tmp_path


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    """A case the rule should refuse must not train when it is not refused: it fails fast."""
    def train(*args, **kwargs):
        raise AssertionError("the command was not refused")

    monkeypatch.setattr(alignprop_fluxkontext, "train", train)


def _fill(tokens, tmp):
    return [str(t).replace("{tmp}", str(tmp)) for t in tokens]


def _candidates(action, dest):
    """Two or more distinct valid values of a flag, found by trying its own type."""
    if dest in SPECIAL:
        return SPECIAL[dest]
    if action.choices:
        return [str(c) for c in action.choices]
    out, seen = [], []
    for text in ("2", "3", "0.25", "0.5", "true", "false", "x", "y"):
        try:
            value = action.type(text) if action.type else text
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            continue
        if value not in seen:
            seen.append(value)
            out.append(text)
    return out


def _train_parser():
    p = _parser()
    add_train_original_flags(p)
    return p


def _actions(parser):
    by_dest = {}
    for a in parser._actions:
        by_dest.setdefault(a.dest, []).append(a)
    return by_dest


BASE = ["--data_dir", "{tmp}/data", "--grid_ratio_weight", "1", "--sample_num_steps", str(N)]


def _value(cfg, dest):
    train, rewards = cfg
    return getattr(train if hasattr(train, dest) else rewards, dest)


def _refused(main, argv, capsys, *needles):
    """The command stops with ONE line on stderr (exit code 2) naming every needle."""
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# --------------------------------------------------------------------------- trainer, the table
def _train_cases():
    """(original flag tokens, our flag) for every alias/convert flag of the trainer's table
    and every flag of ours it sets."""
    cases = []
    for flag in table("train"):
        if flag.status not in ("alias", "convert"):
            continue
        for dest in flag.targets:
            # an alias takes our flag's values (chosen in the test, where they are checked)
            examples = CONVERT_EXAMPLES[flag.name] if flag.status == "convert" else [None]
            for values in examples:
                cases.append(pytest.param(flag.name, values, dest, id=f"{flag.name}="
                                          f"{'_'.join(values or ['ours'])}->{dest}"))
    return cases


def _mode(dest):
    """The --truncated_backprop that reads a truncation flag (others are refused)."""
    return ["--truncated_backprop", TRUNCATION_FLAGS[dest]] if dest in TRUNCATION_FLAGS else []


def _valid(dest, tmp):
    """Our flag's candidate values that the trainer accepts (validation included)."""
    action = _actions(_train_parser())[dest][0]
    out = []
    for c in _fill(_candidates(action, dest), tmp):
        try:
            parse_config(_fill(BASE, tmp) + _mode(dest) + [f"--{dest}", c])
        except ValueError:
            continue
        out.append(c)
    return out


def test_every_alias_and_convert_flag_names_what_it_sets(tmp):
    """The table's ``sets`` are honest: given alone, a convert flag changes only them (and
    what it implies); every alias and convert flag of the trainer is a case below."""
    base = _fill(BASE[:-1], tmp) + ["60"]   # 60 steps: TRL's T = 49 leaves K = 11, not ours 1
    plain = parse_config(base)
    names = {c.values[0] for c in _train_cases()}   # every flag that sets one of ours
    for flag in table("train"):
        if flag.status == "convert" and flag.name in CONVERT_EXAMPLES:
            for values in CONVERT_EXAMPLES[flag.name]:
                cfg = parse_config(base + _fill([flag.name, *values], tmp))
                changed = {d for d in vars(cfg[0]) | vars(cfg[1])
                           if _value(cfg, d) != _value(plain, d)}
                implied = {"backprop_steps"} if flag.name == "--truncated_backprop_rand" else set()
                assert changed and changed <= set(flag.targets) | implied, (flag.name, changed)
        if flag.targets:
            assert flag.name in names
    # the convert flags that set nothing of ours: accepted no-ops, or refused (their tests:
    # tests/test_original_flags.py)
    assert {f.name for f in table("train") if f.status == "convert" and not f.targets} == {
        "--use_lora", "--sample_eta"}


@pytest.mark.parametrize("flag,values,dest", _train_cases())
def test_trainer_original_flag_against_ours(flag, values, dest, tmp, capsys):
    valid = _valid(dest, tmp)
    original = _fill([flag, *(values or valid[:1])], tmp)
    translated = _value(parse_config(_fill(BASE, tmp) + original), dest)
    other = next(c for c in valid if _value(parse_config(
        _fill(BASE, tmp) + _mode(dest) + [f"--{dest}", c]), dest) != translated)
    other_value = _value(parse_config(_fill(BASE, tmp) + _mode(dest) + [f"--{dest}", other]),
                         dest)
    ours = [f"--{dest}", other]
    base = _fill(BASE, tmp)

    # one source, two names that disagree: one line naming both, in either order
    _refused(alignprop_fluxkontext.main, base + original + ours, capsys, flag, f"--{dest}")
    _refused(alignprop_fluxkontext.main, base + ours + original, capsys, flag, f"--{dest}")
    # one source, two names that agree: accepted
    agree = [f"--{dest}", show(translated)]
    assert _value(parse_config(base + original + agree), dest) == translated

    def preset(entries, name="p.yaml"):
        path = tmp / name
        lines = []
        for key, vals in entries:
            vals = [v for v in vals]
            lines.append(f"{key.lstrip('-')}: " + (f"[{', '.join(vals)}]" if len(vals) > 1
                                                    else f"'{vals[0]}'"))
        path.write_text("\n".join(lines) + "\n")
        return ["--config", str(path)]

    # the command line wins over a preset, whichever name either uses
    got = parse_config(base + preset([(flag, original[1:])]) + ours)
    assert _value(got, dest) == other_value
    got = parse_config(base + preset([(dest, [other])]) + original)
    assert _value(got, dest) == translated
    # ... and over a preset that switches --semantics original on
    got = parse_config(base + preset([("semantics", ["original"]), (flag, original[1:])],
                                     "orig.yaml") + ours)
    assert _value(got, dest) == other_value
    # one preset, two names that disagree: one line naming the preset and both keys
    _refused(alignprop_fluxkontext.main,
             base + preset([(flag, original[1:]), (dest, [other])], "both.yaml"), capsys,
             "--config", "both.yaml", flag.lstrip("-"), dest)


# --------------------------------------------------------------------------- trainer, every name
def _named_twice():
    """(name A, name B, dest) for every flag of ours that the trainer accepts under several
    names: dataclass aliases, the dash spelling, --no_x (the original's names: above)."""
    renamed = {f.name for f in table("train") if f.status != "same"}
    cases = []
    for dest, actions in _actions(_train_parser()).items():
        if dest in ("help", "config") or dest.startswith("original_"):
            continue
        names = [s for a in actions for s in a.option_strings if s not in renamed]
        cases += [pytest.param(names[0], other, dest, id=f"{names[0]}|{other}")
                  for other in names[1:]]
    return cases


@pytest.mark.parametrize("first,other,dest", _named_twice())
def test_every_name_of_our_flags_must_agree_with_the_others(first, other, dest, tmp, capsys):
    actions = {s: a for a in _actions(_train_parser())[dest] for s in a.option_strings}
    a, b = actions[first], actions[other]
    base = _fill(BASE, tmp)
    cands = _fill(_candidates(a, dest), tmp)
    if b.nargs == 0:   # --no_x: its value is fixed; the other name says the opposite
        b_tokens = [other]
        a_tokens = [first, "true" if b.const is False else "false"]
    else:
        a_tokens, b_tokens = [first, cands[0]], [other, cands[1]]
    _refused(alignprop_fluxkontext.main, base + a_tokens + b_tokens, capsys, first, other)
    _refused(alignprop_fluxkontext.main, base + b_tokens + a_tokens, capsys, first, other)


def test_dataclass_aliases_that_agree_are_accepted_and_the_last_name_twice_wins(tmp):
    base = _fill(BASE, tmp)
    train, _ = parse_config(base + ["--learning_rate", "2e-4", "--train_learning_rate", "2e-4",
                                    "--max_steps", "3", "--max_train_steps", "3"])
    assert (train.train_learning_rate, train.max_train_steps) == (2e-4, 3)
    train, _ = parse_config(base + ["--lora_rank", "4", "--lora_rank", "8"])
    assert train.lora_rank == 8   # one name twice: argparse's rule, the last wins



def test_a_preset_may_use_our_aliases_under_the_same_rule(tmp, capsys):
    base = _fill(BASE, tmp)
    (tmp / "a.yaml").write_text("learning_rate: 2.0e-4\nmax_steps: 3\n")
    train, _ = parse_config(base + ["--config", str(tmp / "a.yaml")])
    assert (train.train_learning_rate, train.max_train_steps) == (2e-4, 3)
    train, _ = parse_config(base + ["--config", str(tmp / "a.yaml"), "--train_learning_rate",
                                    "3e-4"])
    assert train.train_learning_rate == 3e-4
    (tmp / "b.yaml").write_text("learning_rate: 2.0e-4\ntrain_learning_rate: 3.0e-4\n")
    _refused(alignprop_fluxkontext.main, base + ["--config", str(tmp / "b.yaml")], capsys,
             "b.yaml", "learning_rate: 0.0002", "train_learning_rate: 0.0003")


# ------------------------------------------------------------------ trainer, the class
def test_truncation_flags_the_mode_in_force_does_not_read_are_refused(tmp, capsys):
    base = _fill(BASE, tmp)
    main = alignprop_fluxkontext.main
    # the original's T beside the original's random truncation: TRL ignored it; we say so
    _refused(main, base + ["--truncated_backprop_rand", "true", "--truncated_backprop_timestep",
                           "45"], capsys, "--truncated_backprop_timestep 45", "per_step")
    # K under --semantics original's per-step truncation (its default): refused, with the fix
    _refused(main, base + ["--config", "original", "--backprop_steps", "3"], capsys,
             "--backprop_steps 3", "--semantics original", "--truncated_backprop fixed")
    _refused(main, base + ["--truncated_backprop", "random", "--backprop_steps", "3"], capsys,
             "--backprop_steps 3", "random")
    # ... unless a higher source chose the mode: the preset's K is moot under the command line
    (tmp / "k.yaml").write_text("backprop_steps: 3\n")
    train, _ = parse_config(base + ["--config", str(tmp / "k.yaml"), "--truncated_backprop",
                                    "per_step"])
    assert train.truncated_backprop == "per_step"
    # with the mode they need they are what they say
    train, _ = parse_config(base + ["--config", "original", "--truncated_backprop", "fixed",
                                    "--backprop_steps", "3"])
    assert (train.truncated_backprop, train.backprop_steps) == ("fixed", 3)


def test_implied_original_defaults_yield_to_a_flag_of_the_same_source(tmp):
    base = _fill(BASE[:-2], tmp) + ["--sample_num_steps", "60"]
    train, _ = parse_config(base + ["--truncated_backprop_rand", "false"])
    assert (train.truncated_backprop, train.backprop_steps) == ("fixed", 11)   # TRL's T = 49
    train, _ = parse_config(base + ["--truncated_backprop_rand", "false", "--backprop_steps", "3"])
    assert (train.truncated_backprop, train.backprop_steps) == ("fixed", 3)
    # --semantics original: --num_epochs counts updates, our --max_train_steps still bounds it
    train, _ = parse_config(base + ["--semantics", "original", "--num_epochs", "5"])
    assert train.max_train_steps == 5
    train, _ = parse_config(base + ["--semantics", "original", "--num_epochs", "5",
                                    "--max_train_steps", "2"])
    assert train.max_train_steps == 2
    (tmp / "e.yaml").write_text("semantics: original\nmax_train_steps: 7\n")
    train, _ = parse_config(base + ["--config", str(tmp / "e.yaml"), "--num_epochs", "4"])
    assert train.max_train_steps == 4   # the command line's epochs over the preset's bound


def test_logdir_and_run_name_build_the_output_dir_and_an_explicit_one_must_agree(tmp, capsys):
    base = _fill(BASE, tmp)
    train, _ = parse_config(base + ["--logdir", f"{tmp}/logs", "--run_name", "r1"])
    assert (train.output_dir, train.tracker_run_name) == (f"{tmp}/logs/r1", "r1")
    train, _ = parse_config(base + ["--logdir", f"{tmp}/logs", "--run_name", "r1",
                                    "--output_dir", f"{tmp}/logs/r1"])
    assert train.output_dir == f"{tmp}/logs/r1"
    _refused(alignprop_fluxkontext.main, base + ["--logdir", f"{tmp}/logs", "--run_name", "r1",
                                                 "--output_dir", f"{tmp}/elsewhere"],
             capsys, "--logdir", "--run_name", "--output_dir")
    # --exp_name names the run only when --run_name does not
    train, _ = parse_config(base + ["--exp_name", "e", "--run_name", "r"])
    assert train.tracker_run_name == "r"


# --------------------------------------------------------------------------- scorer, benchmark
def _tool_cases(command, build):
    actions = _actions(build())
    cases = []
    for flag in table(command):
        if flag.status not in ("alias", "convert"):
            continue
        for dest in flag.targets:
            cases.append(pytest.param(flag, dest, actions[dest][0], id=f"{flag.name}->{dest}"))
    return cases


class _Stop(Exception):
    pass


@pytest.mark.parametrize("flag,dest,action", _tool_cases("scorer", internvl_scorer.build_parser))
@pytest.mark.parametrize("semantics", ["ours", "original"])
def test_scorer_original_flag_against_ours(flag, dest, action, semantics, tmp, capsys,
                                           monkeypatch):
    seen = []

    def stop(args):
        seen.append(args)
        raise _Stop

    monkeypatch.setattr(internvl_scorer, "score_files", stop)
    original = [flag.name, *(CONVERT_EXAMPLES[flag.name][0] if flag.status == "convert"
                             else [_candidates(action, dest)[0]])]
    base = [str(tmp / "data"), "--semantics", semantics]
    args = internvl_scorer.build_parser(semantics).parse_args(base + original)
    translated = entropy_bonus(args)   # the only convert flag of the scorer
    other = next(c for c in _candidates(action, dest) if float(c) != translated)
    _refused(internvl_scorer.main, base + original + [f"--{dest}", other], capsys,
             flag.name, f"--{dest}")
    _refused(internvl_scorer.main, base + [f"--{dest}", other] + original, capsys,
             flag.name, f"--{dest}")
    # agreeing (to the digits printed): accepted, and scored with that value
    with pytest.raises(_Stop):
        internvl_scorer.main(base + original + [f"--{dest}", show(translated)])
    assert entropy_bonus(seen[-1]) == pytest.approx(translated)


@pytest.mark.parametrize("flag,dest,action",
                         _tool_cases("benchmark", benchmark_anti_periodic.build_parser))
@pytest.mark.parametrize("semantics", ["ours", "original"])
def test_benchmark_original_flag_against_ours(flag, dest, action, semantics, tmp, capsys,
                                              monkeypatch):
    seen = []

    def stop(args, *_):
        seen.append(args)
        raise _Stop

    monkeypatch.setattr(benchmark_anti_periodic, "run_benchmark", stop)
    monkeypatch.setattr(benchmark_anti_periodic, "run_original_benchmark", stop)
    a, b = _candidates(action, dest)[:2]
    base = ["--artifacts_dir", str(tmp / "data"), "--clean_dir", str(tmp / "data2"),
            "--semantics", semantics]
    _refused(benchmark_anti_periodic.main, base + [flag.name, a, f"--{dest}", b], capsys,
             flag.name, f"--{dest}")
    with pytest.raises(_Stop):
        benchmark_anti_periodic.main(base + [flag.name, a, f"--{dest}", a])
    assert getattr(seen[-1], dest) == action.type(a)


@pytest.mark.parametrize("main,base", [
    (internvl_scorer.main, ["x.png"]),
    (benchmark_anti_periodic.main, []),
])
def test_recursive_and_no_recursive_together_are_refused(main, base, capsys):
    _refused(main, base + ["--recursive", "--no-recursive"], capsys, "--recursive",
             "--no-recursive")


def test_original_benchmark_refuses_our_flags_it_does_not_read(tmp, capsys, monkeypatch):
    monkeypatch.setattr(benchmark_anti_periodic, "run_original_benchmark",
                        lambda args: (_ for _ in ()).throw(_Stop()))
    base = ["--artifacts_dir", str(tmp / "data"), "--clean_dir", str(tmp / "data2"),
            "--semantics", "original"]
    # --eval_resize is ours; the original's size is --resize: never silently unused
    _refused(benchmark_anti_periodic.main, base + ["--eval_resize", "256"], capsys,
             "--eval_resize", "--semantics original")
    _refused(benchmark_anti_periodic.main, base + ["--demo"], capsys, "--demo")
    with pytest.raises(_Stop):
        benchmark_anti_periodic.main(base + ["--resize", "256", "--window", "64", "--hop", "16",
                                             "--no-recursive"])



# ------------------------------------------------------------------ trainer, shipped presets
def _preset_cases():
    """(preset, key, name) for every key of every shipped preset and every name that sets it:
    our flag's spellings, the original's aliases and convert flags (the table)."""
    actions = _actions(_train_parser())
    cases = []
    for preset in shipped_presets():
        for key in load_preset(preset_path(preset)):
            names = [s for a in actions[key] for s in a.option_strings]
            names += [f.name for f in table("train") if f.status == "convert" and key in f.targets]
            cases += [pytest.param(preset, key, n, id=f"{preset}:{key}<-{n}") for n in names]
    return cases


def _settings_of(name, dest, base, tmp):
    """(tokens, value of --dest they give) for the name: every valid value we try."""
    if name in CONVERT_EXAMPLES:                    # an original convert flag
        return [(_fill([name, *values], tmp), None) for values in CONVERT_EXAMPLES[name]]
    action = next(a for a in _train_parser()._actions if name in a.option_strings)
    if action.nargs == 0:                           # --no_x: its value is fixed
        return [([name], action.const)]
    return [([name, c], None) for c in _fill(_candidates(action, dest), tmp)]


@pytest.mark.parametrize("preset,dest,name", _preset_cases())
def test_the_command_line_and_config_win_over_a_shipped_preset_whatever_the_name(
        preset, dest, name, tmp):
    """--preset < --config < the command line, for every key a shipped preset sets and every
    name of it (docs/original_flags.md, "Which value wins")."""
    base = _fill(BASE, tmp) + ["--preset", preset] + _mode(dest)
    shipped = _value(parse_config(base), dest)
    options = []
    for tokens, _ in _settings_of(name, dest, base, tmp):
        try:
            options.append((tokens, _value(parse_config(base + tokens), dest)))
        except ValueError:   # not valid beside the preset's other flags
            continue
    differs = [(t, v) for t, v in options if v != shipped]
    if not differs:   # --x / --no_x saying what the preset says: nothing to override
        assert len(options) == 1 and options[0][0] == [name], (name, options)
        return
    tokens, wins = differs[0]
    # that value is the name's own, not the preset's: the same tokens without the preset
    assert _value(parse_config(_fill(BASE, tmp) + _mode(dest) + tokens), dest) == wins
    if len(tokens) == 1 or "-" in tokens[0].lstrip("-"):   # --no_x, --dash-spelling: the
        return                                              # command line's, not a key
    # --config over the shipped preset (the key spelled as the name), the command line over both
    key, vals = tokens[0].lstrip("-"), tokens[1:]
    (tmp / "over.yaml").write_text(f"{key}: " + (f"[{', '.join(vals)}]" if len(vals) > 1
                                                 else f"'{vals[0]}'") + "\n")
    config = ["--config", str(tmp / "over.yaml")]
    assert _value(parse_config(base + config), dest) == wins
    assert _value(parse_config(base + config + [f"--{dest}", show(shipped)]), dest) == shipped


# --------------------------------------------------------------------------- generate, evaluate
def _other_commands():
    from alignprop import evaluate, generate

    return {"generate": (generate.cli, generate.build_parser,
                         ["--input_dir", "{tmp}/data", "--output_dir", "{tmp}/o1",
                          "--pretrained_model", "tiny"]),
            "evaluate": (evaluate.cli, evaluate.build_parser,
                         ["--originals_dir", "{tmp}/data", "--lora_dir", "{tmp}/data2",
                          "--output_dir", "{tmp}/o1", "--rewards", "brightness"])}


def _several_names(build):
    """(name A, tokens A, name B, tokens B) for every flag the parser takes under several
    names, the two saying different values."""
    cases = []
    for dest, actions in _actions(build()).items():
        names = [(s, a) for a in actions for s in a.option_strings]
        if dest == "help" or len(names) < 2:
            continue
        (first, a), others = names[0], names[1:]
        for other, b in others:
            if b.nargs == 0 and a.nargs == 0:        # --x / --no-x (BooleanOptionalAction)
                ta, tb = [first], [other]
            elif b.nargs == 0:                        # --no_x beside --x true|false
                ta, tb = [first, "true" if b.const is False else "false"], [other]
            else:
                c = _candidates(a, dest)
                ta, tb = [first, c[0]], [other, c[1]]
            cases.append((first, ta, other, tb))
    return cases


@pytest.mark.parametrize("command", ["generate", "evaluate"])
def test_generate_and_evaluate_refuse_two_names_of_one_flag_that_disagree(command, tmp, capsys):
    main, build, base = _other_commands()[command]
    cases = _several_names(build)
    assert any("recursive" in c[0] for c in cases), cases   # the flag this round added
    for first, ta, other, tb in cases:
        _refused(main, _fill(base, tmp) + ta + tb, capsys, first, other)
        _refused(main, _fill(base, tmp) + tb + ta, capsys, first, other)
