"""Prompt templates as data: one YAML file per difficulty (template + few-shot examples), plus the
JSON-repair and avoid-list snippets. Users can point `prompt_dir` at their own folder of the same shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from qaforge.generate.corpus import Chunk
from qaforge.dataset import DIFFICULTIES

DEFAULT_PROMPT_DIR = Path(__file__).with_name("prompts")
PLACEHOLDERS = ("chapter", "chapter_title", "section", "count", "chunk", "examples", "avoid", "difficulty")


class PromptError(ValueError):
    """A prompt file is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class DifficultyPrompt:
    difficulty: str
    system: str
    template: str
    examples: tuple[dict, ...]


@dataclass(frozen=True)
class PromptSet:
    by_difficulty: dict[str, DifficultyPrompt]
    repair_template: str
    avoid_template: str
    folder: Path
    reasoning_template: str = ""   # reasoning.yaml: asks for a thought per item (--with-reasoning)

    def messages(self, difficulty: str, chunk: Chunk, count: int, avoid: list[str],
                 with_reasoning: bool = False) -> list[dict[str, str]]:
        prompt = self.by_difficulty[difficulty]
        examples = "\n".join(json.dumps(e, ensure_ascii=False) for e in prompt.examples)
        avoid_text = self.avoid_template.format(questions="\n".join(f"- {q}" for q in avoid)) if avoid else ""
        user = prompt.template.format(chapter=chunk.chapter, chapter_title=chunk.chapter_title,
                                      section=chunk.section or chunk.chapter_title, count=count,
                                      chunk=chunk.text.strip(), examples=examples, avoid=avoid_text,
                                      difficulty=difficulty)
        if with_reasoning:
            user = f"{user.rstrip()}\n\n{self.reasoning_template.format()}"
        return [{"role": "system", "content": prompt.system}, {"role": "user", "content": user}]

    def repair_message(self, error: str) -> dict[str, str]:
        return {"role": "user", "content": self.repair_template.format(error=error)}


def read_prompt_yaml(path: Path, error: type[Exception] | None = None) -> dict:
    """A prompt file (generate's prompts, the judge's rubrics): a mapping with a 'template' string; problems
    raise `error` (default PromptError) naming the file and, for bad YAML, the line."""
    error = error or PromptError
    if not path.is_file():
        raise error(f"{path}: prompt file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise error(f"{path}{f':{mark.line + 1}' if mark else ''}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("template"), str):
        raise error(f"{path}: needs a 'template' string")
    return data


def _check_template(path: Path, template: str, **sample: object) -> None:
    try:
        template.format(**sample)
    except (KeyError, IndexError, ValueError) as exc:
        raise PromptError(f"{path}: template has an unknown or broken placeholder ({exc!r}); "
                          f"allowed: {', '.join('{' + k + '}' for k in sample)}; write literal braces as {{{{ }}}}") from exc


def load_prompts(folder: Path | None = None) -> PromptSet:
    folder = Path(folder) if folder else DEFAULT_PROMPT_DIR
    by_difficulty = {}
    for difficulty in DIFFICULTIES:
        path = folder / f"{difficulty}.yaml"
        data = read_prompt_yaml(path)
        examples = data.get("examples") or []
        if len(examples) < 1 or not all(isinstance(e, dict) and {"question", "answer", "topic"} <= set(e)
                                        for e in examples):
            raise PromptError(f"{path}: 'examples' must list {{question, answer, topic}} objects")
        _check_template(path, data["template"], **{k: "x" for k in PLACEHOLDERS})
        if "{chunk}" not in data["template"]:
            raise PromptError(f"{path}: template must contain {{chunk}} (the source text)")
        by_difficulty[difficulty] = DifficultyPrompt(difficulty, str(data.get("system", "")), data["template"],
                                                     tuple(examples))
    repair = read_prompt_yaml(folder / "repair.yaml")["template"]
    _check_template(folder / "repair.yaml", repair, error="x")
    avoid = read_prompt_yaml(folder / "avoid.yaml")["template"]
    _check_template(folder / "avoid.yaml", avoid, questions="x")
    # A user's prompt folder from before --with-reasoning has no reasoning.yaml: the packaged one serves.
    reasoning_path = folder / "reasoning.yaml"
    if not reasoning_path.is_file():
        reasoning_path = DEFAULT_PROMPT_DIR / "reasoning.yaml"
    reasoning = read_prompt_yaml(reasoning_path)["template"]
    _check_template(reasoning_path, reasoning)
    return PromptSet(by_difficulty, repair, avoid, folder, reasoning)
