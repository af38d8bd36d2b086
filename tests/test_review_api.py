"""The review page's HTTP API against a real `qaforge review` process (httpx over a real socket), plus the
pure pieces it rests on (Wilson interval, highlights, journal replay, sample, export)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest

from test_review_helpers import ROOT, ReviewServer, build_dataset, write_judge

from qaforge.review.items import load_review_set, overlap_spans, stratified_sample
from qaforge.review.journal import JournalError, read_journal
from qaforge.review.stats import wilson


@pytest.fixture(scope="module")
def dataset_master(tmp_path_factory) -> Path:
    return build_dataset(tmp_path_factory.mktemp("review_ds"))


@pytest.fixture
def dataset(dataset_master: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "dataset"
    shutil.copytree(dataset_master, folder)
    shutil.copytree(dataset_master.parent / "corpus", tmp_path / "corpus")
    report = json.loads((folder / "report.json").read_text())
    report["corpus"] = str(tmp_path / "corpus")
    (folder / "report.json").write_text(json.dumps(report))
    return folder


def test_wilson_matches_published_values():
    # Newcombe (1998) example: 8/10 -> 0.490..0.943; and the interval never leaves [0, 1].
    iv = wilson(8, 10)
    assert iv["low"] == pytest.approx(0.4902, abs=1e-4) and iv["high"] == pytest.approx(0.9433, abs=1e-4)
    assert wilson(0, 5)["low"] == 0.0 and wilson(5, 5)["high"] == 1.0 and wilson(0, 0)["rate"] is None


def test_overlap_spans_mark_shared_runs_only():
    chunk = "全局内存（global memory）的访问延迟很高。共享内存很快。heterogeneous"
    spans = overlap_spans(chunk, "global memory 的访问延迟很高，共享。General")
    assert [chunk[s:e] for s, e in spans] == ["global memory", "的访问延迟很高"]   # "共享", "gene": chance


def test_segments_carry_the_cited_source_span():
    from qaforge.review.items import segments

    pieces = segments("abcdefghij", [(2, 6)], source=(4, 8))
    assert pieces == [("ab", False, False), ("cd", True, False), ("ef", True, True), ("gh", False, True),
                      ("ij", False, False)]


def test_sample_is_stratified_seeded_and_stable(dataset: Path):
    review = load_review_set(dataset, n=20, seed=3)
    records = list(review.records.values())
    assert len(review.sample) == 20 and len(set(review.sample)) == 20
    assert review.sample == stratified_sample(records, 20, 3)
    assert review.sample != stratified_sample(records, 20, 4)
    population = Counter((r.chapter, r.difficulty) for r in records)
    picked = Counter((review.records[i].chapter, review.records[i].difficulty) for i in review.sample)
    for stratum, size in population.items():   # largest remainder: within one of the proportional share
        assert abs(picked[stratum] - 20 * size / len(records)) < 1.0 + 1e-9


def test_journal_keeps_history_and_survives_a_torn_tail(tmp_path: Path):
    path = tmp_path / "review_journal.jsonl"
    path.write_text('{"id": "a", "kind": "verdict", "verdict": "accurate"}\n'
                    '{"id": "a", "kind": "verdict", "verdict": "off-topic"}\n{"id": "b", "ki', encoding="utf-8")
    state = read_journal(path)
    assert state.items["a"].verdict == "off-topic" and state.items["a"].history == 2 and state.torn_tail
    path.write_text('{"id": "a", "kind": "verdict", "verdict": "maybe"}\n', encoding="utf-8")
    with pytest.raises(JournalError, match=r"review_journal.jsonl:1: verdict must be"):
        read_journal(path)


def test_verdicts_and_edits_persist_across_reload_and_sigkill(dataset: Path):
    write_judge(dataset, [], [])
    server = ReviewServer(dataset, "--sample", "10").start()
    try:
        items = httpx.get(server.url + "/api/items").json()
        assert len(items) == 10 and all(i["verdict"] is None for i in items)
        first, second = items[0]["id"], items[1]["id"]
        r = httpx.post(f"{server.url}/api/items/{first}/verdict", json={"verdict": "accurate"})
        assert r.status_code == 200 and r.json()["results"]["counts"]["accurate"] == 1
        r = httpx.post(f"{server.url}/api/items/{second}/edit", json={"answer": "人工改写的答案。"})
        assert r.json()["item"]["answer"] == "人工改写的答案。" and r.json()["item"]["edited"]
        server.kill()                                   # no graceful shutdown: only the fsync'd journal is left
        server.start()
        again = {i["id"]: i for i in httpx.get(server.url + "/api/items").json()}
        assert again[first]["verdict"] == "accurate"
        assert again[second]["answer"] == "人工改写的答案。" and again[second]["original_answer"] == items[1]["answer"]
        page = httpx.get(server.url + "/").text
        assert "人工改写的答案。" in page and "<mark>" in page and "1 / 10 reviewed" in page
    finally:
        server.stop()
    lines = (dataset / "review_journal.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["kind"] for x in lines] == ["verdict", "edit"]


def test_bad_requests_get_4xx_with_a_message(dataset: Path):
    with ReviewServer(dataset, "--sample", "5") as server:
        item = httpx.get(server.url + "/api/items").json()[0]["id"]
        cases = [
            (f"/api/items/{item}/verdict", {"verdict": "great"}, 400, "verdict must be one of"),
            ("/api/items/no-such-id/verdict", {"verdict": "accurate"}, 404, "no item 'no-such-id'"),
            (f"/api/items/{item}/edit", {"answer": "   "}, 400, "edited answer is empty"),
            (f"/api/items/{item}/edit", {}, 400, "needs 'question' and/or 'answer'"),
            (f"/api/items/{item}/edit", {"answer": "x", "colour": "red"}, 422, "colour"),
        ]
        for path, body, status, message in cases:
            r = httpx.post(server.url + path, json=body)
            assert r.status_code == status and message in r.json()["detail"], (path, r.text)
        rebound = httpx.get(server.url + "/api/items", headers={"host": "attacker.example"})
        assert rebound.status_code == 400 and "Invalid host" in rebound.text      # DNS rebinding refused
        # A cross-site <form> can only send text/plain or form bodies; neither may cast a verdict.
        forged = httpx.post(f"{server.url}/api/items/{item}/verdict", content=b'{"verdict": "accurate"}',
                            headers={"content-type": "text/plain"})
        assert forged.status_code == 422
        r = httpx.post(f"{server.url}/api/items/{item}/verdict", content=b"{not json",
                       headers={"content-type": "application/json"})
        assert r.status_code == 422 and "JSON" in r.json()["detail"]
    assert not (dataset / "review_journal.jsonl").exists() or not (dataset / "review_journal.jsonl").read_text()


def test_binding_beyond_loopback_needs_a_token_checked_on_every_request(dataset: Path):
    refused = subprocess.run([sys.executable, "-m", "qaforge.cli", "review", str(dataset), "--host", "0.0.0.0"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120,
                             env={"PATH": "/usr/bin:/bin", "HOME": str(dataset)})
    assert refused.returncode != 0 and "--token" in refused.stderr
    with ReviewServer(dataset, "--sample", "5", token="s3cret", host="0.0.0.0") as server:
        for path in ("/", "/api/items", "/static/review.js", "/report"):
            assert httpx.get(server.url + path).status_code == 401
        assert httpx.get(server.url + "/api/items", headers={"x-review-token": "wrong"}).status_code == 401
        with httpx.Client(base_url=server.url) as client:
            assert client.get("/?token=s3cret").status_code == 200      # sets the cookie the page's JS relies on
            item = client.get("/api/items").json()[0]["id"]
            assert client.post(f"/api/items/{item}/verdict", json={"verdict": "inaccurate"}).status_code == 200


def test_report_export_and_judge_agreement_from_the_journal(dataset: Path, tmp_path: Path):
    review = load_review_set(dataset, n=6)
    ids = review.sample
    write_judge(dataset, ids[:4], [5, 2, 5, 1])
    with ReviewServer(dataset, "--sample", "6") as server:
        for item, verdict in zip(ids[:4], ["accurate", "inaccurate", "inaccurate", "off-topic"]):
            httpx.post(f"{server.url}/api/items/{item}/verdict", json={"verdict": verdict}).raise_for_status()
        httpx.post(f"{server.url}/api/items/{ids[0]}/edit", json={"answer": "EDITED ANSWER"}).raise_for_status()
        report = httpx.get(server.url + "/api/report").json()
        page = httpx.get(server.url + "/").text
        assert "judged 5" in page and "test-judge" in page
    assert report["accuracy"]["k"] == 1 and report["accuracy"]["n"] == 4
    assert report["relevance"]["k"] == 3
    assert report["accuracy"]["low"] == pytest.approx(wilson(1, 4)["low"])
    agreement = report["judge_agreement"]          # judge passes ids 0 and 2; people accept only id 0
    assert agreement["n"] == 4 and agreement["agreement"]["k"] == 3 and agreement["table"]["judge_only_accepts"] == 1
    saved = json.loads((dataset / "review_report.json").read_text())
    assert saved["accuracy"] == report["accuracy"]
    assert "human-verified accuracy | 25.0 % (1/4; Wilson 95 %" in (dataset / "review_report.md").read_text()

    out = tmp_path / "export"
    done = subprocess.run([sys.executable, "-m", "qaforge.cli", "review", str(dataset), "--export", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    qa = {r["id"]: r for r in json.loads((out / "qa.json").read_text())}
    assert set(ids[1:4]).isdisjoint(qa) and qa[ids[0]]["answer"] == "EDITED ANSWER"
    assert len(qa) == len(review.records) - 3
    split_answers = [json.loads(x)["output"] for s in ("train", "exam")
                     for x in (out / f"{s}.jsonl").read_text().splitlines()]
    original = len((dataset / "train.jsonl").read_text().splitlines()) + len((dataset / "exam.jsonl").read_text().splitlines())
    removed_in_split = sum(1 for i in ids[1:4] if review.records[i].question in
                           (dataset / "train.jsonl").read_text() + (dataset / "exam.jsonl").read_text())
    assert len(split_answers) == original - removed_in_split
    assert json.loads((out / "dataset_info.json").read_text())["qaforge"]["file_name"] == "train.jsonl"


def test_eval_run_rows_sort_worst_first(dataset: Path, tmp_path: Path):
    from rich.console import Console

    from qaforge.evaluate.run import evaluate

    run = tmp_path / "eval"
    evaluate(dataset / "exam.jsonl", run, progress=False, console=Console(file=open("/dev/null", "w")))
    with ReviewServer(run) as server:
        assert httpx.get(server.url + "/", follow_redirects=False).status_code in (302, 307)
        data = httpx.get(server.url + "/api/eval", params={"sort": "question-as-answer"}).json()
        label = data["labels"][0]
        scores = [r["answers"][label]["rouge_l"] for r in data["rows"]]
        assert len(scores) == 6 and scores == sorted(scores)
        best_first = httpx.get(server.url + "/api/eval", params={"sort": label, "order": "desc"}).json()
        assert [r["answers"][label]["rouge_l"] for r in best_first["rows"]] == sorted(scores, reverse=True)
        page = httpx.get(server.url + "/eval").text
        assert data["rows"][0]["reference"][:20] in page and "ROUGE-L" in page
        bad = httpx.get(server.url + "/api/eval", params={"sort": "nobody"})
        assert bad.status_code == 400 and "unknown system 'nobody'" in bad.json()["detail"]
