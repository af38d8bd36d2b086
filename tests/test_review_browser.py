"""The review page in a real headless Chromium (Debian's `chromium`, driven by Playwright with that binary;
`playwright install` is never needed): keyboard verdicts, an edit, reload, a SIGKILLed server mid-review,
and the statistics and export computed from the journal the page wrote.

Set QAFORGE_REVIEW_SCREENSHOT=docs/review.png to refresh the documentation's screenshot.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_review_helpers import ROOT, ReviewServer, build_dataset, write_judge

CHROMIUM = next((p for p in (os.environ.get("QAFORGE_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser",
                             shutil.which("chromium") or "") if p and Path(p).is_file()), None)
if CHROMIUM is None:
    pytest.skip("no chromium binary (apt-get install -y chromium, or set QAFORGE_CHROMIUM)", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api", reason="the test extra's playwright package is missing")

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser_page():
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(20_000)
        try:
            yield page
        finally:
            browser.close()


def _saved(page, text: str) -> None:
    playwright_api.expect(page.locator("#status")).to_have_text(text)


def _verdicts(page) -> list[str]:
    return page.eval_on_selector_all("article.item", "els => els.map(e => e.dataset.verdict)")


def test_keyboard_review_survives_reload_and_sigkill(browser_page, tmp_path: Path):
    page = browser_page
    dataset = build_dataset(tmp_path)
    server = ReviewServer(dataset, "--sample", "8")
    ids = json.loads(subprocess.run(
        [sys.executable, "-c", "import json,sys; from qaforge.review.items import load_review_set as l; "
         f"print(json.dumps(l(sys.argv[1], n=8).sample))", str(dataset)],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    write_judge(dataset, ids[:5], [5, 2, 4, 5, 1])
    server.start()
    try:
        page.goto(server.url + "/")
        assert page.locator("article.item").count() == 8
        assert page.locator("article.item.current").get_attribute("data-id") == ids[0]
        assert page.locator("article.item mark").count() > 0          # answer spans highlighted in the chunk
        for key, verdict in (("a", "accurate"), ("i", "inaccurate"), ("o", "off-topic"), ("1", "accurate")):
            page.keyboard.press(key)
            _saved(page, f"saved: {verdict}")
        assert _verdicts(page)[:4] == ["accurate", "inaccurate", "off-topic", "accurate"]

        page.keyboard.press("e")                                      # edit item 5 (the current one)
        editor = page.locator("article.item.current textarea[name=answer]")
        editor.fill("审阅者改写的答案：warp 是 32 个线程。")
        page.keyboard.press("Control+Enter")
        _saved(page, "saved: edit")
        assert page.locator("article.item.current .edited-badge").is_visible()

        page.reload()
        assert _verdicts(page)[:5] == ["accurate", "inaccurate", "off-topic", "accurate", ""]
        fifth = page.locator(f"article.item[data-id='{ids[4]}']")
        assert "审阅者改写的答案" in fifth.locator(".answer").inner_text()
        assert page.locator("article.item.current").get_attribute("data-id") == ids[4]  # resumes at the first open item
        page.keyboard.press("a")
        _saved(page, "saved: accurate")

        server.kill()                                                 # mid-review: SIGKILL, nothing flushed on exit
        page.keyboard.press("o")                                      # this one cannot be saved, and the page says so
        playwright_api.expect(page.locator("#status")).to_contain_text("NOT saved")
        server.start()
        page.reload()
        assert _verdicts(page)[:6] == ["accurate", "inaccurate", "off-topic", "accurate", "accurate", ""]
        page.keyboard.press("o")
        _saved(page, "saved: off-topic")
        shot = os.environ.get("QAFORGE_REVIEW_SCREENSHOT")
        page.locator(f"article.item[data-id='{ids[0]}']").scroll_into_view_if_needed()
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(Path(shot) if shot else tmp_path / "review.png"))
        page.goto(server.url + "/report")
        assert "3/6" in page.locator("#accuracy").inner_text()        # items 1, 4 and 5 of 6 reviewed
    finally:
        server.stop()

    # The statistics and the export come from the journal the browser wrote, through the CLI.
    report = subprocess.run([sys.executable, "-m", "qaforge.cli", "review", str(dataset), "--sample", "8", "--report"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    results = json.loads((dataset / "review_report.json").read_text())
    assert results["counts"] == {"accurate": 3, "inaccurate": 1, "off-topic": 2} and results["edited"] == 1
    assert results["judge_agreement"]["n"] == 5
    out = tmp_path / "export"
    subprocess.run([sys.executable, "-m", "qaforge.cli", "review", str(dataset), "--export", str(out)],
                   cwd=ROOT, check=True, capture_output=True, timeout=120)
    qa = {r["id"]: r for r in json.loads((out / "qa.json").read_text())}
    assert {ids[1], ids[2], ids[5]}.isdisjoint(qa)
    assert qa[ids[4]]["answer"] == "审阅者改写的答案：warp 是 32 个线程。"
    def split_rows(folder: Path) -> dict[str, str]:
        rows = [json.loads(x) for s in ("train", "exam") for x in (folder / f"{s}.jsonl").read_text().splitlines()]
        return {r["instruction"]: r["output"] for r in rows}
    before, after = split_rows(dataset), split_rows(out)
    assert set(after) == set(before) - {qa_q for i, qa_q in ((i, _question(dataset, i)) for i in (ids[1], ids[2], ids[5]))}
    edited_q = qa[ids[4]]["question"]
    if edited_q in before:                                           # in a split (not dropped as a near-duplicate)
        assert after[edited_q] == "审阅者改写的答案：warp 是 32 个线程。"


def _question(folder: Path, item_id: str) -> str:
    return next(r["question"] for r in json.loads((folder / "qa.json").read_text()) if r["id"] == item_id)
