"""The dataset files and their one record type: every stage reads and writes them through here.

Files (written by `qaforge generate`, read by train and eval; each written to a temporary name and
renamed, so a killed run never leaves half a file and a re-run rewrites identical bytes):
  qa.json              list of full records: {id, question, answer, difficulty, chapter, chapter_title,
                       topic, source: {chunk_id, file, char_start, char_end}, generator, model}
  train.jsonl, exam.jsonl
                       LLaMA-Factory alpaca lines {"instruction", "input": "", "output", "difficulty",
                       "topic", "chapter"}; the exam never overlaps train (exact or near duplicates)
  *_sharegpt.jsonl     {"conversations": [{"from": "human", ...}, {"from": "gpt", ...}], "system"}
  *_chatml.jsonl       {"messages": [{"role": "system"|"user"|"assistant", "content"}]}
  dataset_info.json    LLaMA-Factory's description of all of the above

`read_records` accepts any of these shapes, one JSON object per line, or a `.json` file holding a list
of them (qa.json), plus `{question, answer}` / `{prompt, response}` lines. The rules, the same for every
reader:
  * input: a non-empty alpaca `input` is appended to the instruction on a new line, the way
    LLaMA-Factory builds the user turn; `question` is always the whole user turn, so writing it back
    as an alpaca line with `"input": ""` round-trips.
  * question and answer are required, non-empty strings. A system turn of a ShareGPT or messages line
    is not kept: training and serving use one configured system prompt.
  * missing metadata means "not known", never a guess: difficulty -> "unknown" (a guessed "medium"
    would skew the per-difficulty scores and the stratified exam), chapter -> None (reported as
    "unknown"), topic -> "". A difficulty that is given must be easy|medium|hard|unknown, a chapter an
    integer (digits as a string are accepted).
  * a bad line raises `DatasetFormatError` naming the file and the line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from qaforge.chat import DEFAULT_SYSTEM_PROMPT, THINK_TAGS, build_messages, join_reasoning, split_reasoning
from qaforge.textnorm import normalize

DIFFICULTIES = ("easy", "medium", "hard")
UNKNOWN = "unknown"
# Character n-gram Jaccard at or above which two questions (or answers) are near duplicates: generation
# dedups and splits with it, and evaluation's contamination check measures with it.
NEAR_DUPLICATE_THRESHOLD = 0.7

ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}
_QUESTION_KEYS = ("instruction", "question", "prompt")
_ANSWER_KEYS = ("output", "answer", "response")


class DatasetFormatError(ValueError):
    """A dataset file holds a malformed record; the message names the file and the line."""


@dataclass
class QARecord:
    question: str                      # the whole user turn (alpaca instruction + input)
    answer: str
    difficulty: str = UNKNOWN          # easy | medium | hard | unknown
    chapter: int | None = None
    chapter_title: str = ""
    topic: str = ""
    source: dict[str, Any] = field(default_factory=dict)   # {chunk_id, file, char_start, char_end}
    generator: str = ""                # "rules" | "llm" for generated records
    model: str = ""
    id: str = ""
    reasoning: str = ""                # the answer's thought (Qwen3 thinking mode), if the data has one

    def __post_init__(self) -> None:
        if not self.id:
            self.id = record_id(self.chapter, self.question)

    def to_dict(self) -> dict[str, Any]:
        """The qa.json object (id first)."""
        data = asdict(self)
        if not data["reasoning"]:    # datasets without thoughts keep their exact qa.json
            del data["reasoning"]
        return {"id": data.pop("id"), **data}


def record_id(chapter: int | None, question: str) -> str:
    """Stable id: the same question in the same chapter always gets the same id."""
    return f"ch{chapter or 0:02d}-{hashlib.sha1(normalize(question).encode()).hexdigest()[:10]}"


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def _text(data: dict, keys: tuple[str, ...], what: str, where: str) -> str:
    present = [k for k in keys if data.get(k) not in (None, "")]
    if not present:
        if any(k in data for k in keys):
            raise DatasetFormatError(f"{where}: empty {what}")
        raise DatasetFormatError(f"{where}: missing field {' or '.join(repr(k) for k in keys)}")
    value = data[present[0]]
    if not isinstance(value, str):
        raise DatasetFormatError(f"{where}: field {present[0]!r} must be a string, got {type(value).__name__}")
    return value


def _turns(data: dict, where: str) -> tuple[str, str]:
    """(question, answer) of a ShareGPT `conversations` or an OpenAI/ChatML `messages` line."""
    key, role, content, user, assistant = (("conversations", "from", "value", "human", "gpt")
                                           if "conversations" in data else
                                           ("messages", "role", "content", "user", "assistant"))
    turns = data[key]
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise DatasetFormatError(f"{where}: {key!r} must be a list of objects")
    if turns and turns[0].get(role) == "system":
        turns = turns[1:]
    roles = [t.get(role) for t in turns]
    if roles != [user, assistant]:
        raise DatasetFormatError(f"{where}: {key!r} must be one {user!r} turn then one {assistant!r} turn "
                                 f"(a system turn may come first), got {roles}")
    for turn in turns:
        if not isinstance(turn.get(content), str):
            raise DatasetFormatError(f"{where}: the {turn[role]!r} turn needs a string {content!r}")
    return turns[0][content], turns[1][content]


def _difficulty(data: dict, where: str) -> str:
    value = data.get("difficulty")
    if value in (None, ""):
        return UNKNOWN
    if value not in DIFFICULTIES + (UNKNOWN,):
        raise DatasetFormatError(f"{where}: difficulty must be one of {DIFFICULTIES + (UNKNOWN,)} or missing, "
                                 f"got {value!r}")
    return value


def _chapter(data: dict, where: str) -> int | None:
    value = data.get("chapter")
    if value in (None, ""):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise DatasetFormatError(f"{where}: chapter must be an integer, got {value!r}")
    return value


def parse_record(data: Any, where: str) -> QARecord:
    """One record from a decoded JSON value of any accepted shape; `where` ("file:line") names it in errors."""
    if not isinstance(data, dict):
        raise DatasetFormatError(f"{where}: expected a JSON object, got {type(data).__name__}")
    if "conversations" in data or "messages" in data:
        question, answer = _turns(data, where)
    else:
        question = _text(data, _QUESTION_KEYS, "question", where)
        extra = data.get("input") or ""
        if not isinstance(extra, str):
            raise DatasetFormatError(f"{where}: field 'input' must be a string, got {type(extra).__name__}")
        if extra.strip():
            question = f"{question}\n{extra}"
        answer = _text(data, _ANSWER_KEYS, "answer", where)
    if not question.strip():
        raise DatasetFormatError(f"{where}: empty question")
    reasoning = data.get("reasoning") or ""
    if not isinstance(reasoning, str):
        raise DatasetFormatError(f"{where}: field 'reasoning' must be a string, got {type(reasoning).__name__}")
    if not reasoning.strip() and THINK_TAGS[1] in answer:  # alpaca/LLaMA-Factory style: thought in the output
        reasoning, answer = split_reasoning(answer)
    if not answer.strip():
        raise DatasetFormatError(f"{where}: empty answer")
    source = data.get("source") or {}
    if not isinstance(source, dict):
        raise DatasetFormatError(f"{where}: source must be an object, got {type(source).__name__}")
    return QARecord(question=question, answer=answer, difficulty=_difficulty(data, where),
                    chapter=_chapter(data, where), chapter_title=str(data.get("chapter_title") or ""),
                    topic=str(data.get("topic") or ""), source=dict(source),
                    generator=str(data.get("generator") or ""), model=str(data.get("model") or ""),
                    id=str(data.get("id") or ""), reasoning=reasoning)


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _json_list_rows(path: Path, text: str) -> list[tuple[str, Any]]:
    """The items of a JSON list file, each named by the line it starts on (json.loads knows no lines)."""
    decoder = json.JSONDecoder()
    rows: list[tuple[str, Any]] = []
    line, counted = 1, 0

    def where(at: int) -> str:
        nonlocal line, counted
        line += text.count("\n", counted, at)   # positions only grow: each newline is counted once
        counted = at
        return f"{path}:{line}"

    pos = _skip_space(text, text.index("[") + 1)
    if text[pos:pos + 1] != "]":
        while True:
            try:
                value, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                raise DatasetFormatError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
            rows.append((where(pos), value))
            pos = _skip_space(text, end)
            if text[pos:pos + 1] == "]":
                break
            if text[pos:pos + 1] != "," or text[_skip_space(text, pos + 1):][:1] in ("]", ""):
                raise DatasetFormatError(f"{where(pos)}: invalid JSON: expected another list item or ']'")
            pos = _skip_space(text, pos + 1)
    if text[pos + 1:].strip():
        raise DatasetFormatError(f"{where(pos)}: invalid JSON: text after the closing ']'")
    return rows


def _json_lines_rows(path: Path, text: str) -> list[tuple[str, Any]]:
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((f"{path}:{line_no}", json.loads(line)))
        except json.JSONDecodeError as exc:
            hint = " (a .json dataset file holds a list of records or one record per line)" \
                if path.suffix == ".json" else ""
            raise DatasetFormatError(f"{path}:{line_no}: invalid JSON: {exc.msg}{hint}") from None
    return rows


def read_jsonl(path: str | Path, error: type[Exception] = DatasetFormatError) -> list[tuple[int, Any]]:
    """(line number, value) of every non-blank line of a JSON-lines file that qaforge writes (chunks,
    journals, judge.jsonl, ...); a line that is not JSON raises `error` naming file:line."""
    rows = []
    for line_no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((line_no, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise error(f"{path}:{line_no}: invalid JSON: {exc.msg}") from None
    return rows


def read_records(path: str | Path) -> list[QARecord]:
    """All records of a dataset file in file order: JSON lines, or a `.json` file holding a list."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(f"{path}: not UTF-8 text ({exc})") from None
    is_list = path.suffix == ".json" and text.lstrip().startswith("[")
    rows = _json_list_rows(path, text) if is_list else _json_lines_rows(path, text)
    if not rows:
        raise DatasetFormatError(f"{path}: no records")
    return [parse_record(data, where) for where, data in rows]


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

def alpaca_row(record: QARecord) -> dict:
    return {"instruction": record.question, "input": "", "output": record.answer,
            "difficulty": record.difficulty, "topic": record.topic, "chapter": record.chapter}


def sharegpt_row(record: QARecord, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> dict:
    return {"conversations": [{"from": "human", "value": record.question},
                              {"from": "gpt", "value": record.answer}],
            "system": system_prompt}


def chatml_row(record: QARecord, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> dict:
    return {"messages": build_messages(record.question, system_prompt, answer=record.answer)}


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_qa_json(path: Path, records: Iterable[QARecord]) -> None:
    write_json(path, [r.to_dict() for r in records])


def dataset_info(name: str) -> dict:
    """LLaMA-Factory `dataset_info.json` entries for every file `write_dataset` writes."""
    sharegpt = {"formatting": "sharegpt", "columns": {"messages": "conversations", "system": "system"},
                "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                         "assistant_tag": "gpt"}}
    chatml = {"formatting": "sharegpt", "columns": {"messages": "messages"},
              "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                       "assistant_tag": "assistant", "system_tag": "system"}}
    info = {}
    for suffix, split in (("", "train"), ("_exam", "exam")):
        info[f"{name}{suffix}"] = {"file_name": f"{split}.jsonl", "columns": dict(ALPACA_COLUMNS)}
        info[f"{name}{suffix}_sharegpt"] = {"file_name": f"{split}_sharegpt.jsonl", **json.loads(json.dumps(sharegpt))}
        info[f"{name}{suffix}_chatml"] = {"file_name": f"{split}_chatml.jsonl", **json.loads(json.dumps(chatml))}
    return info


def write_dataset(out_dir: Path, records: list[QARecord], train: list[QARecord], exam: list[QARecord],
                  name: str = "qaforge", system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> list[str]:
    """Write every dataset file (qa.json holds `records`; train/exam in three formats); returns their names."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_qa_json(out_dir / "qa.json", records)
    # Train lines carry the thought inside the answer (LLaMA-Factory's reasoning templates read it
    # there); exam lines never do: they are the references that plain answers are scored against.
    train = [dataclasses.replace(r, answer=join_reasoning(r.reasoning, r.answer), reasoning="") for r in train]
    for split, rows in (("train", train), ("exam", exam)):
        write_jsonl(out_dir / f"{split}.jsonl", (alpaca_row(r) for r in rows))
        write_jsonl(out_dir / f"{split}_sharegpt.jsonl", (sharegpt_row(r, system_prompt) for r in rows))
        write_jsonl(out_dir / f"{split}_chatml.jsonl", (chatml_row(r, system_prompt) for r in rows))
    write_json(out_dir / "dataset_info.json", dataset_info(name))
    return ["qa.json", "train.jsonl", "exam.jsonl", "train_sharegpt.jsonl", "exam_sharegpt.jsonl",
            "train_chatml.jsonl", "exam_chatml.jsonl", "dataset_info.json"]
