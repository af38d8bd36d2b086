"""qaforge.dataset: every format round-trips, the input rule, the missing-field rule, file:line errors,
ShareGPT / messages reading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qaforge.dataset import (UNKNOWN, DatasetFormatError, QARecord, alpaca_row, chatml_row, read_records,
                             record_id, sharegpt_row, write_dataset, write_jsonl, write_qa_json)
from qaforge.evaluate.exam import exam_items

RECORDS = [
    QARecord(question="什么是 warp？", answer="warp 是 32 个线程（thread）组成的调度单位。", difficulty="easy",
             chapter=4, chapter_title="Compute architecture", topic="warp", generator="rules",
             source={"chunk_id": "ch04-000", "file": "ch04.md", "char_start": 10, "char_end": 90}),
    QARecord(question="为什么要合并访存？\n（结合 DRAM burst 说明）", answer="合并后一次事务取回整段数据。",
             difficulty="medium", chapter=5, chapter_title="Memory", topic="coalescing", generator="llm",
             model="qwen-max", source={"chunk_id": "ch05-003", "file": "ch05.md", "char_start": 0, "char_end": 40}),
    QARecord(question="Explain tiling.", answer="Tiles are staged in shared memory and reused.", difficulty="hard",
             chapter=5, topic="tiling"),
]


def _lines(path: Path, *rows: object) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in rows), encoding="utf-8")
    return path


def _pairs(records: list[QARecord]) -> list[tuple]:
    return [(r.question, r.answer) for r in records]


def test_qa_json_round_trips_every_field(tmp_path):
    write_qa_json(tmp_path / "qa.json", RECORDS)
    assert read_records(tmp_path / "qa.json") == RECORDS
    first = json.loads((tmp_path / "qa.json").read_text(encoding="utf-8"))[0]
    assert list(first)[0] == "id" and first["id"] == record_id(4, "什么是 warp？")


def test_every_written_format_reads_back_the_same_records(tmp_path):
    names = write_dataset(tmp_path, RECORDS, RECORDS[:2], RECORDS[2:], name="t", system_prompt="你是专家。")
    assert all((tmp_path / n).is_file() for n in names)
    train, exam = read_records(tmp_path / "train.jsonl"), read_records(tmp_path / "exam.jsonl")
    for got, want in zip(train + exam, RECORDS):
        # alpaca lines carry question, answer and the metadata that train and eval use
        assert (got.question, got.answer, got.difficulty, got.chapter, got.topic) == (
            want.question, want.answer, want.difficulty, want.chapter, want.topic)
        assert got.id == want.id            # the id is a function of chapter and question
    for fmt in ("sharegpt", "chatml"):
        assert _pairs(read_records(tmp_path / f"train_{fmt}.jsonl")) == _pairs(RECORDS[:2]), fmt
        assert _pairs(read_records(tmp_path / f"exam_{fmt}.jsonl")) == _pairs(RECORDS[2:]), fmt
    info = json.loads((tmp_path / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["t"]["file_name"] == "train.jsonl" and info["t_exam_chatml"]["file_name"] == "exam_chatml.jsonl"
    # and writing what was read gives the same bytes back
    again = tmp_path / "again"
    write_dataset(again, read_records(tmp_path / "qa.json"), train, exam, name="t", system_prompt="你是专家。")
    for name in names:
        assert (again / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_input_is_appended_to_the_question_and_round_trips(tmp_path):
    path = _lines(tmp_path / "a.jsonl",
                  {"instruction": "解释下面的代码", "input": "a[i] += 1;", "output": "自增。"},
                  {"instruction": "什么是 SM？", "input": "   ", "output": "流式多处理器。"},
                  {"instruction": "什么是 SM？", "input": None, "output": "流式多处理器。"})
    first, blank, null = read_records(path)
    assert first.question == "解释下面的代码\na[i] += 1;"
    assert blank.question == null.question == "什么是 SM？"          # blank input adds nothing
    row = alpaca_row(first)
    assert (row["instruction"], row["input"]) == ("解释下面的代码\na[i] += 1;", "")
    (back,) = read_records(_lines(tmp_path / "b.jsonl", row))
    assert back.question == first.question                           # no second newline on re-reading


@pytest.mark.parametrize("row", [
    {"instruction": "什么是 warp？", "output": "32 个线程。"},
    {"instruction": "什么是 warp？", "input": "", "output": "32 个线程。", "difficulty": "", "chapter": None},
    {"question": "什么是 warp？", "answer": "32 个线程。"},
    {"prompt": "什么是 warp？", "response": "32 个线程。"},
    {"conversations": [{"from": "human", "value": "什么是 warp？"}, {"from": "gpt", "value": "32 个线程。"}]},
    {"messages": [{"role": "user", "content": "什么是 warp？"}, {"role": "assistant", "content": "32 个线程。"}]},
])
def test_missing_metadata_means_unknown_in_every_format(tmp_path, row):
    (record,) = read_records(_lines(tmp_path / "d.jsonl", row))
    assert (record.question, record.answer) == ("什么是 warp？", "32 个线程。")
    assert (record.difficulty, record.chapter, record.topic, record.source) == (UNKNOWN, None, "", {})
    (item,) = exam_items([record])
    assert (item.difficulty, item.chapter, item.reference) == ("unknown", "unknown", "32 个线程。")


def test_given_metadata_is_kept_and_a_digit_chapter_is_a_number(tmp_path):
    (record,) = read_records(_lines(tmp_path / "m.jsonl", {
        "messages": [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "a."}],
        "difficulty": "hard", "chapter": "7", "topic": "streams"}))
    assert (record.difficulty, record.chapter, record.topic) == ("hard", 7, "streams")
    assert exam_items([record])[0].chapter == "7"


def test_sharegpt_and_messages_lines_with_a_system_turn(tmp_path):
    path = _lines(tmp_path / "chat.jsonl",
                  sharegpt_row(RECORDS[0], "你是专家。"),
                  {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q1"},
                                     {"from": "gpt", "value": "a1"}], "difficulty": "easy", "chapter": 2},
                  chatml_row(RECORDS[1], "你是专家。"),
                  {"messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]})
    records = read_records(path)
    assert _pairs(records) == [_pairs(RECORDS)[0], ("q1", "a1"), _pairs(RECORDS)[1], ("q2", "a2")]
    assert (records[1].difficulty, records[1].chapter) == ("easy", 2)


def test_a_json_file_may_hold_a_list_or_json_lines(tmp_path):
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([alpaca_row(r) for r in RECORDS], ensure_ascii=False, indent=2), encoding="utf-8")
    lined = _lines(tmp_path / "lines.json", *(alpaca_row(r) for r in RECORDS))
    assert _pairs(read_records(listed)) == _pairs(read_records(lined)) == _pairs(RECORDS)


@pytest.mark.parametrize("bad_line,message", [
    ('{"instruction": "q", "output": "a"', "invalid JSON"),
    ('["q", "a"]', "expected a JSON object, got list"),
    ('{"instruction": "q"}', "missing field 'output' or 'answer' or 'response'"),
    ('{"output": "a"}', "missing field 'instruction' or 'question' or 'prompt'"),
    ('{"instruction": 3, "output": "a"}', "field 'instruction' must be a string, got int"),
    ('{"instruction": "q", "output": ""}', "empty answer"),
    ('{"instruction": "  ", "output": "a"}', "empty question"),
    ('{"instruction": "q", "input": 5, "output": "a"}', "field 'input' must be a string"),
    ('{"instruction": "q", "output": "a", "difficulty": "trivial"}', "difficulty must be one of"),
    ('{"instruction": "q", "output": "a", "chapter": "ch3"}', "chapter must be an integer"),
    ('{"instruction": "q", "output": "a", "chapter": true}', "chapter must be an integer"),
    ('{"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}',
     "one 'human' turn then one 'gpt' turn"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, '
     '{"role": "user", "content": "q2"}]}', "one 'user' turn then one 'assistant' turn"),
    ('{"messages": [{"role": "user", "content": ["q"]}, {"role": "assistant", "content": "a"}]}',
     "needs a string 'content'"),
    ('{"messages": "q"}', "'messages' must be a list of objects"),
])
def test_a_bad_line_names_file_and_line(tmp_path, bad_line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "q", "output": "a"}\n\n' + bad_line + "\n", encoding="utf-8")
    with pytest.raises(DatasetFormatError) as error:
        read_records(path)
    assert f"{path}:3: " in str(error.value) and message in str(error.value), str(error.value)


def test_a_bad_item_of_a_json_list_names_the_line_it_starts_on(tmp_path):
    rows = [r.to_dict() for r in RECORDS]
    rows[2]["difficulty"] = "trivial"
    path = tmp_path / "qa.json"
    text = json.dumps(rows, ensure_ascii=False, indent=2)
    path.write_text(text, encoding="utf-8")
    item_start = text[:text.index('"Explain tiling."')].rfind("{")
    with pytest.raises(DatasetFormatError, match=rf"qa\.json:{text.count(chr(10), 0, item_start) + 1}: difficulty"):
        read_records(path)
    path.write_text(text[:-1] + ",]", encoding="utf-8")               # a trailing comma is not JSON
    with pytest.raises(DatasetFormatError, match=r"qa\.json:\d+: invalid JSON"):
        read_records(path)
    path.write_text('[\n  {"instruction": "q", "output": "a"},\n  {"instruction": "q", oops}\n]', encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=r"qa\.json:3: invalid JSON"):
        read_records(path)


def test_missing_empty_and_undecodable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_records(tmp_path / "missing.jsonl")
    with pytest.raises(DatasetFormatError, match=r"empty\.jsonl: no records"):
        read_records(_lines(tmp_path / "empty.jsonl", ""))
    (tmp_path / "latin1.jsonl").write_bytes('{"instruction": "café"}'.encode("latin-1"))
    with pytest.raises(DatasetFormatError, match="not UTF-8"):
        read_records(tmp_path / "latin1.jsonl")


def test_written_jsonl_is_one_object_a_line(tmp_path):
    write_jsonl(tmp_path / "x.jsonl", (alpaca_row(r) for r in RECORDS))
    lines = (tmp_path / "x.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(RECORDS) and "\\u" not in lines[0]       # Chinese stays readable
    assert set(json.loads(lines[0])) == {"instruction", "input", "output", "difficulty", "topic", "chapter"}
