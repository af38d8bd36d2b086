"""Append-only JSONL journal of finished LLM calls (and of the items each round accepted).

A call is written only once it is finished (parsed or given up), as one line, flushed and fsynced:
after a SIGKILL the file holds whole lines plus at most one torn last line, which `open` cuts off.
Calls are keyed by a hash of what was sent, so a re-run reuses every answer it already paid for.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def call_key(model: str, messages: list[dict], seed: int) -> str:
    payload = json.dumps({"model": model, "messages": messages, "seed": seed}, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.calls: dict[str, dict[str, Any]] = {}
        self.rounds: dict[int, list[str]] = {}
        self.torn_bytes = 0
        self._load()
        self._file = open(self.path, "a", encoding="utf-8")

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        good_end = data.rfind(b"\n") + 1          # everything after the last newline is a torn write
        if good_end < len(data):
            self.torn_bytes = len(data) - good_end
            with open(self.path, "r+b") as handle:
                handle.truncate(good_end)
        for lineno, line in enumerate(data[:good_end].decode("utf-8").splitlines(), start=1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{self.path}:{lineno}: corrupt journal line ({exc.msg}); "
                                 f"remove the line or the journal to start over") from exc
            if entry.get("type") == "call":
                self.calls[entry["key"]] = entry
            elif entry.get("type") == "round":
                self.rounds[entry["round"]] = entry["accepted"]

    def _append(self, entry: dict[str, Any]) -> None:
        self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def record_call(self, key: str, entry: dict[str, Any]) -> None:
        entry = {"type": "call", "key": key, **entry}
        self.calls[key] = entry
        self._append(entry)

    def record_round(self, round_no: int, accepted_ids: list[str]) -> None:
        if self.rounds.get(round_no) != accepted_ids:
            self.rounds[round_no] = accepted_ids
            self._append({"type": "round", "round": round_no, "accepted": accepted_ids})

    def close(self) -> None:
        self._file.close()
