"""Write the dataset files of the DESIGN.md contract (qa.json, train/exam JSONL, dataset_info.json,
ShareGPT and ChatML variants). Every file is written to a temporary name and renamed, so a killed
run never leaves a half-written file behind, and re-running rewrites identical bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from qaforge.chat import DEFAULT_SYSTEM_PROMPT, build_messages
from qaforge.generate.records import QARecord

ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def alpaca_row(record: QARecord) -> dict:
    return {"instruction": record.question, "input": "", "output": record.answer,
            "difficulty": record.difficulty, "topic": record.topic, "chapter": record.chapter}


def sharegpt_row(record: QARecord, system_prompt: str) -> dict:
    return {"conversations": [{"from": "human", "value": record.question},
                              {"from": "gpt", "value": record.answer}],
            "system": system_prompt}


def chatml_row(record: QARecord, system_prompt: str) -> dict:
    return {"messages": build_messages(record.question, system_prompt, answer=record.answer)}


def dataset_info(name: str) -> dict:
    """LLaMA-Factory `dataset_info.json` entries for every file written here."""
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


def export_dataset(out_dir: Path, records: list[QARecord], train: list[QARecord], exam: list[QARecord],
                   name: str = "qaforge", system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> list[str]:
    """Write every dataset file; returns their names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "qa.json", [r.to_dict() for r in records])
    for split, rows in (("train", train), ("exam", exam)):
        write_jsonl(out_dir / f"{split}.jsonl", (alpaca_row(r) for r in rows))
        write_jsonl(out_dir / f"{split}_sharegpt.jsonl", (sharegpt_row(r, system_prompt) for r in rows))
        write_jsonl(out_dir / f"{split}_chatml.jsonl", (chatml_row(r, system_prompt) for r in rows))
    write_json(out_dir / "dataset_info.json", dataset_info(name))
    return ["qa.json", "train.jsonl", "exam.jsonl", "train_sharegpt.jsonl", "exam_sharegpt.jsonl",
            "train_chatml.jsonl", "exam_chatml.jsonl", "dataset_info.json"]
