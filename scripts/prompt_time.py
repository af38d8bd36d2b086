"""CPU cost of the tokenizer's two jobs before a server answers: loading it, and turning a 192-question
`/predict` into prompt ids (chat template + batch encode), for qaforge.fasttok and for transformers.

    python -m scripts.prompt_time DIR [--questions 192] [--repeat 7]

Each load is timed in a fresh interpreter (imports included, as a server pays them); the prompt ids of
both tokenizers are checked equal.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

LOADERS = {"fasttok": "from qaforge.fasttok import load_serving_tokenizer as load",
           "transformers": "from qaforge.modeling import load_tokenizer as load"}


def load_seconds(loader: str, path: str) -> float:
    code = f"import time; t = time.perf_counter(); {LOADERS[loader]}; load({path!r}); print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("path")
    p.add_argument("--questions", type=int, default=192)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--loads", type=int, default=3)
    args = p.parse_args()
    from qaforge.chat import prompts_token_ids
    from qaforge.fasttok import FastTokenizer
    from qaforge.modeling import load_tokenizer
    from qaforge.serve.warmup import load_warmup_questions

    base = load_warmup_questions()
    questions = [f"{base[i % len(base)]} ({i})" for i in range(args.questions)]
    ids = {}
    for name, tok in (("fasttok", FastTokenizer.from_dir(args.path)), ("transformers", load_tokenizer(args.path))):
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            ids[name] = prompts_token_ids(tok, questions)
            times.append(time.perf_counter() - t)
        loads = [load_seconds(name, args.path) for _ in range(args.loads)]
        print(f"{name:>12}: load (fresh process, imports included) median {statistics.median(loads):.2f} s; "
              f"{args.questions} prompts median {statistics.median(times) * 1000:.1f} ms, "
              f"min {min(times) * 1000:.1f} ms")
    print("same prompt ids:", ids["fasttok"] == ids["transformers"])


if __name__ == "__main__":
    main()
