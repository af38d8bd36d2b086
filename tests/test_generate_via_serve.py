"""The LLM generator talks to `qaforge serve` (tiny model) over real HTTP with the openai SDK.

The tiny model cannot write good JSON QA pairs, so this checks the plumbing honestly: every planned
call reached the server, tokens were counted from the server's usage, and every failure was
classified (parse error or a named filter rule) rather than crashing the run.
"""

from pathlib import Path

from qaforge.generate.llm_client import LLMOptions
from qaforge.generate.pipeline import generate_dataset
from qaforge.paths import DEFAULT_CORPUS_DIR
from qaforge.serve.launcher import running_server


def test_generate_through_qaforge_serve(tiny_model_dir, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    source = sorted(DEFAULT_CORPUS_DIR.glob("ch0*.md"))[0]
    (corpus / source.name).write_text(source.read_text(encoding="utf-8")[:3000], encoding="utf-8")
    # The few-shot prompt with a 3,000-character chunk is ~2,400 tiny-tokenizer tokens: widen the
    # server's context beyond its default of 512.
    with running_server(str(tiny_model_dir), engine="native",
                        args=["--max-tokens", "64", "--max-model-len", "4096"]) as base_url:
        options = LLMOptions(base_url=f"{base_url}/v1", api_key="EMPTY", model=str(tiny_model_dir),
                             max_tokens=64, target_per_chapter=4, questions_per_call=2, max_rounds=1,
                             concurrency=4)
        report = generate_dataset(corpus, tmp_path / "out", generator="llm", exam_size=0, llm=options,
                                  show_progress=False, print_table=False)
    usage = report["usage"]["total"]
    assert usage["calls"] >= 2
    assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 0
    assert (tmp_path / "out" / "report.json").exists()
    assert (tmp_path / "out" / "journal.jsonl").exists()
