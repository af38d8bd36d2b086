"""The LLM judge: QA pairs scored against their source chunks, answers against references, and two
systems head to head (with the judge's position bias). Entry points, imported lazily so that
`qaforge --help` stays fast:

  judge_dataset(dataset_dir, options)              -> report; writes judge.jsonl beside qa.json
  apply_judge_threshold(records, judgements, t)    -> (kept, rejected), for generate's "judge" rule
  judge_answers(eval_run_or_results, options)      -> per-question scores + summary (for `eval --judge`)
  judge_pairwise(eval_run_or_results, options, (a, b)) -> win/tie/loss + position bias
"""

_EXPORTS = {"judge_dataset": "dataset_mode", "apply_judge_threshold": "dataset_mode",
            "load_judgements": "dataset_mode", "judge_answers": "answers", "judge_pairwise": "pairwise"}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"qaforge.judge.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'qaforge.judge' has no attribute {name!r}")
