"""Texts read from the user's own clone of the original project (``--original_repo DIR``).

The original's rating questions and its default edit instruction are its prose: they are not
copied into this project. A user who has a clone of ``promptable-differentiable-rewards`` passes
its folder, and the texts are read from there, without running any of its code: each question
is the string constant returned by one function inside ``make_reward_fn`` in
``internvl_scorer.py``; the instruction is the one-element list ``load_prompts`` returns in
``alignprop_fluxkontext.py`` when no prompt file is given (docs/original_mode.md).

Each text is checked against the SHA-256 of the same text at the original's commit 9acac9f, so
the user is told (one line) whether the clone holds those texts or changed ones (which are then
used as they are).
"""
from __future__ import annotations

import ast
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from .cli import UserError

COMMIT = "9acac9f068d9c55adbe073ca7d52c2dc4ceca20a"
SCORER_FILE = "internvl_scorer.py"
TRAINER_FILE = "alignprop_fluxkontext.py"
# Our task name -> the function inside make_reward_fn that returns its question.
QUESTION_FUNCTIONS = {"single": "prompt_single", "sharpness": "prompt_sharpness",
                      "artifact": "prompt_artifact", "pair": "prompt_pair_choice",
                      "similarity": "prompt_similarity",
                      "content-similarity": "prompt_content_similarity",
                      "triplet": "prompt_triplet"}
# SHA-256 of each text at COMMIT (UTF-8). "artifact_refs": the artifact question used when two
# example images are shown (the first return of prompt_artifact), "artifact" the other one.
KNOWN_SHA256 = {
    "single": "3b3ac7fef29e070cb6f447fbd3360bc4fb94cbd8f1ef6c80e0b603b5abdea4a2",
    "sharpness": "d92712c8007bdc7d4a2965171d826cb093163decb89e5444db33be9dd4f7f99f",
    "artifact": "77310cf76ed159eab26e3b364e71bd2657aeddd81853bd196f196b02e88159fa",
    "artifact_refs": "c99da7f01c4368742224a2b6e1931401064d90dd9bd6c57be25bc6d31866d4f4",
    "pair": "2f95796c23d31fd3213d6010d557ef59b97c3073fa2d5251178243ad6981f435",
    "similarity": "6394c8c32a62c20005bb99262dbf8b140ad029ca406c8fba7df3e556fe7c2197",
    "content-similarity": "7a92f161d4acec1b9cf9c7d52207bc16d0e91cd1d4c3f6742da0eeba45b43932",
    "triplet": "aad4a368ffb999242922f15f501269aa38c99946ae93434a54ce7e23de58daa8",
    "instruction": "7077ebc7f85f01e7b4225ba3bcd20c452ee91866119c8b31623ae4dc0940ce92",
}


class OriginalRepoError(UserError):
    """The folder given to --original_repo does not hold the original's texts."""


@dataclass
class OriginalTexts:
    """Questions by task (``artifact_refs``: with the two example images), the instruction."""

    questions: dict[str, str]
    instruction: str
    folder: str
    changed: list[str] = field(default_factory=list)   # texts that differ from COMMIT

    def summary(self) -> str:
        if not self.changed:
            return (f"--original_repo {self.folder}: the original's questions and instruction "
                    f"(as at commit {COMMIT[:7]})")
        return (f"--original_repo {self.folder}: using the clone's texts; changed since commit "
                f"{COMMIT[:7]}: {', '.join(self.changed)}")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _constant(node: ast.AST, where: str) -> str:
    try:
        value = ast.literal_eval(node)
    except ValueError:
        raise OriginalRepoError(f"--original_repo: {where} does not return a plain string "
                                f"(the file was changed in a way this reader does not follow)")
    if not isinstance(value, str):
        raise OriginalRepoError(f"--original_repo: {where} does not return a string")
    return value


def _returns(fn: ast.FunctionDef) -> list[ast.AST]:
    """The returned expressions of ``fn``, in the order they appear in the file."""
    found = [n for n in ast.walk(fn) if isinstance(n, ast.Return) and n.value is not None]
    return [n.value for n in sorted(found, key=lambda n: (n.lineno, n.col_offset))]


def _parse(folder: Path, name: str) -> ast.Module:
    path = folder / name
    if not path.is_file():
        raise OriginalRepoError(f"--original_repo {folder}: no {name} there; pass the folder of "
                                f"your clone of promptable-differentiable-rewards")
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError) as exc:
        raise OriginalRepoError(f"--original_repo: {path} cannot be read as Python ({exc})")


def _function(tree: ast.AST, name: str, where: str) -> ast.FunctionDef:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise OriginalRepoError(f"--original_repo: {where} has no function {name}()")


def read_original_texts(folder: str | Path) -> OriginalTexts:
    """The original's questions and default instruction from a clone (no code is run)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise OriginalRepoError(f"--original_repo: folder not found: {folder}")
    scorer = _function(_parse(root, SCORER_FILE), "make_reward_fn", SCORER_FILE)
    questions: dict[str, str] = {}
    for task, fn_name in QUESTION_FUNCTIONS.items():
        where = f"{SCORER_FILE}: make_reward_fn.{fn_name}()"
        returns = _returns(_function(scorer, fn_name, SCORER_FILE))
        if task == "artifact":
            if len(returns) != 2:
                raise OriginalRepoError(f"--original_repo: {where} should return one question "
                                        f"with and one without example images")
            questions["artifact_refs"] = _constant(returns[0], where)
            questions["artifact"] = _constant(returns[1], where)
        else:
            if len(returns) != 1:
                raise OriginalRepoError(f"--original_repo: {where} should return one question")
            questions[task] = _constant(returns[0], where)
    loader = _function(_parse(root, TRAINER_FILE), "load_prompts", TRAINER_FILE)
    lists = [r for r in _returns(loader) if isinstance(r, ast.List)]
    if not lists:
        raise OriginalRepoError(f"--original_repo: {TRAINER_FILE}: load_prompts() has no "
                                f"built-in instruction")
    values = ast.literal_eval(lists[0])
    if not (isinstance(values, list) and len(values) == 1 and isinstance(values[0], str)):
        raise OriginalRepoError(f"--original_repo: {TRAINER_FILE}: load_prompts() should return "
                                f"one built-in instruction")
    texts = {**questions, "instruction": values[0]}
    changed = [k for k, v in texts.items() if KNOWN_SHA256.get(k) != _sha(v)]
    return OriginalTexts(questions=questions, instruction=values[0], folder=str(folder),
                         changed=changed)


__all__ = ["OriginalTexts", "OriginalRepoError", "read_original_texts", "KNOWN_SHA256", "COMMIT",
           "QUESTION_FUNCTIONS"]
