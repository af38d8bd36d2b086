"""Rubrics and prompts as data (qaforge/judge/prompts/*.yaml), and turning a judge's reply into scores.

A rubric file names its criteria (each scored 1-5, with the description the judge reads) or, for the
pairwise mode, its choices; `template` holds the user message. Users can point `--prompts` at a folder
of their own files of the same shape.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import json_repair

from qaforge.chat import clean_answer
from qaforge.generate.prompts import read_prompt_yaml

from qaforge.paths import JUDGE_PROMPTS_DIR as DEFAULT_PROMPT_DIR
MODES = ("dataset", "answers", "pairwise")
PLACEHOLDERS = {
    "dataset": ("chapter", "chapter_title", "difficulty", "topic", "source", "question", "answer", "criteria"),
    "answers": ("question", "reference", "answer", "criteria"),
    "pairwise": ("question", "reference", "answer_1", "answer_2"),
}
SCORE_RANGE = (1, 5)
_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


class RubricError(ValueError):
    """A prompt file is missing or malformed; the message names the file."""


class ReplyError(ValueError):
    """The judge's reply holds no usable verdict; the message says why (it is quoted back to the judge)."""


@dataclass(frozen=True)
class Rubric:
    mode: str
    system: str
    template: str
    criteria: dict[str, str]          # name -> description (empty for pairwise)
    choices: tuple[str, ...]          # pairwise verdicts (empty for scored modes)
    repair_template: str
    path: Path

    def messages(self, **fields: Any) -> list[dict[str, str]]:
        if self.criteria:
            fields["criteria"] = "\n".join(f"- {name}: {text}" for name, text in self.criteria.items())
        user = self.template.format(**{k: str(v).strip() for k, v in fields.items()})
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]

    def repair_message(self, error: str) -> dict[str, str]:
        return {"role": "user", "content": self.repair_template.format(error=error)}

    def json_schema(self) -> dict:
        """The response_format json_schema the judge is asked to follow (servers that support it)."""
        if self.criteria:
            props = {name: {"type": "integer", "minimum": SCORE_RANGE[0], "maximum": SCORE_RANGE[1]}
                     for name in self.criteria}
        else:
            props = {"winner": {"type": "string", "enum": list(self.choices)}}
        props["reason"] = {"type": "string"}
        return {"name": f"judge_{self.mode}",
                "schema": {"type": "object", "properties": props, "required": list(props)}}

    def parse(self, text: str) -> tuple[dict[str, Any], bool]:
        """(verdict, repaired): {"scores": {...}} or {"winner": ...}, plus "reason"; raises ReplyError."""
        data, repaired = _json_object(text)
        reason = " ".join(str(data.get("reason", "")).split())
        if not self.criteria:
            winner = str(data.get("winner", "")).strip().lower().strip('"')
            if winner not in self.choices:
                raise ReplyError(f"'winner' must be one of {list(self.choices)}, got {data.get('winner')!r}")
            return {"winner": winner, "reason": reason}, repaired
        scores = {}
        for name in self.criteria:
            scores[name] = _score(data, name)
        return {"scores": scores, "reason": reason}, repaired


def _score(data: dict, name: str) -> int:
    if name not in data:
        raise ReplyError(f"missing score {name!r}")
    value = data[name]
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ReplyError(f"score {name!r} must be an integer 1-5, got {value!r}") from None
    if number != int(number) or not SCORE_RANGE[0] <= number <= SCORE_RANGE[1]:
        raise ReplyError(f"score {name!r} must be an integer 1-5, got {value!r}")
    return int(number)


def _json_object(text: str) -> tuple[dict, bool]:
    """The JSON object of a reply, after think blocks and fences; json-repair for near-JSON."""
    text = clean_answer(text)
    fenced = _FENCE.search(text)
    candidate = fenced.group(1).strip() if fenced else text[text.find("{"):].strip() if "{" in text else ""
    if not candidate:
        raise ReplyError("no JSON object found in the reply")
    try:
        data, repaired = json.loads(candidate), False
    except json.JSONDecodeError as exc:
        data, repaired = json_repair.loads(candidate), True
        if not isinstance(data, dict) or not data:
            raise ReplyError(f"invalid JSON that could not be repaired: {exc.msg}") from exc
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, dict):
        raise ReplyError(f"expected a JSON object, got {type(data).__name__}")
    return data, repaired


def _read_yaml(path: Path) -> dict:
    return read_prompt_yaml(path, RubricError)


def load_rubric(mode: str, folder: Path | None = None) -> Rubric:
    if mode not in MODES:
        raise RubricError(f"unknown judge mode {mode!r}; choose one of {MODES}")
    folder = Path(folder) if folder else DEFAULT_PROMPT_DIR
    path = folder / f"{mode}.yaml"
    data = _read_yaml(path)
    criteria = data.get("criteria") or {}
    choices = tuple(str(c) for c in data.get("choices") or ())
    if mode == "pairwise":
        if not {"1", "2", "tie"} <= set(choices):
            raise RubricError(f"{path}: 'choices' must include \"1\", \"2\" and \"tie\"")
    elif not isinstance(criteria, dict) or not criteria or not all(isinstance(v, str) for v in criteria.values()):
        raise RubricError(f"{path}: 'criteria' must map each criterion name to its description")
    try:
        data["template"].format(**{k: "x" for k in PLACEHOLDERS[mode]})
    except (KeyError, IndexError, ValueError) as exc:
        raise RubricError(f"{path}: template has an unknown or broken placeholder ({exc!r}); allowed: "
                          f"{', '.join('{' + k + '}' for k in PLACEHOLDERS[mode])}; write literal braces as {{{{ }}}}") from exc
    repair_path = folder / "repair.yaml"
    repair = _read_yaml(repair_path if repair_path.is_file() else DEFAULT_PROMPT_DIR / "repair.yaml")["template"]
    return Rubric(mode, str(data.get("system", "")), data["template"], dict(criteria), choices, repair, path)
