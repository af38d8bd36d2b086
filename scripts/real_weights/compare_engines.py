"""Compare two servers' answers to the same questions (grader_results.json of `qaforge eval --grader`).

Greedy decoding in bf16 on two engines agrees until the first near-tie between two tokens, where the
engines' different kernels (and batch shapes) may round either way; after that the answers diverge.
So the comparison counts, per question, the common prefix in tokens, and reports the share that agree on
their first N tokens, the ROUGE-L difference and every question where they part before N.

    python scripts/real_weights/compare_engines.py DIR_A DIR_B --tokenizer MODEL_DIR --data exam.jsonl
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def agrees(tx: list[int], ty: list[int], first: int = 32) -> bool:
    """Two answers agree on their first `first` tokens; one shorter than that agrees when the two are equal."""
    shortest = min(len(tx), len(ty))
    return common_prefix(tx, ty) >= min(first, shortest) and (shortest >= first or len(tx) == len(ty) == shortest)


def compare(a: dict, b: dict, tokenizer, first: int = 32) -> dict:
    ans_a, ans_b = a["answers"], b["answers"]
    if len(ans_a) != len(ans_b):
        raise SystemExit(f"answer counts differ: {len(ans_a)} vs {len(ans_b)}")
    rows = []
    for i, (x, y) in enumerate(zip(ans_a, ans_b)):
        tx = tokenizer(x, add_special_tokens=False)["input_ids"]
        ty = tokenizer(y, add_special_tokens=False)["input_ids"]
        prefix = common_prefix(tx, ty)
        agree = agrees(tx, ty, first)
        rows.append({"index": i, "prefix_tokens": prefix, "tokens": [len(tx), len(ty)], "agree_first": agree,
                     "identical": x == y})
    n = len(rows)
    parted = [r for r in rows if not r["agree_first"]]
    return {
        "n": n, "first_tokens": first,
        "agree_first_share": sum(r["agree_first"] for r in rows) / n,
        "identical_share": sum(r["identical"] for r in rows) / n,
        "median_prefix_tokens": sorted(r["prefix_tokens"] for r in rows)[n // 2],
        "rouge_l": [a["rouge_l"], b["rouge_l"]], "rouge_l_diff": abs(a["rouge_l"] - b["rouge_l"]),
        "course_rouge_l": [a["course_rouge_l"], b["course_rouge_l"]],
        "output_tokens_per_s": [a.get("output_tokens_per_s"), b.get("output_tokens_per_s")],
        "health_s": [a.get("health_s"), b.get("health_s")],
        "parted_before_first": [{**r, "a": ans_a[r["index"]][:160], "b": ans_b[r["index"]][:160]} for r in parted],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--data", help="unused; kept for the record of which exam was asked")
    parser.add_argument("--first", type=int, default=32)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    load = lambda d: json.loads((d / "grader_results.json").read_text(encoding="utf-8"))  # noqa: E731
    result = compare(load(args.a), load(args.b), AutoTokenizer.from_pretrained(args.tokenizer), args.first)
    result["systems"] = [str(args.a), str(args.b)]
    print(f"{result['n']} questions: {result['agree_first_share']:.1%} agree on the first {args.first} tokens, "
          f"{result['identical_share']:.1%} identical, median common prefix {result['median_prefix_tokens']} tokens; "
          f"ROUGE-L {result['rouge_l'][0]:.4f} vs {result['rouge_l'][1]:.4f} (diff {result['rouge_l_diff']:.4f}); "
          f"tok/s {result['output_tokens_per_s']}")
    if args.out:
        args.out.write_text(json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
