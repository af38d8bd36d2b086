"""The grader's batch through the native engine alone: what `/predict` costs without HTTP, JSON and text.

Same prompts as the server builds them (system prompt + chat template), same greedy budget, three rounds on a
warm engine; the gap to `qaforge eval --grader`'s round time is the HTTP path's overhead.

    python -m scripts.grader_engine_alone --model DIR --data exam.jsonl --out engine.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--max-tokens", type=int, default=384)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--max-num-seqs", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    import torch

    from qaforge.chat import prompts_token_ids
    from qaforge.dataset import read_records
    from qaforge.engine import LLM, SamplingParams
    from qaforge.modeling import load_tokenizer

    tok = load_tokenizer(a.model)
    questions = [r.question for r in read_records(Path(a.data))]
    t = time.perf_counter()
    ids = prompts_token_ids(tok, questions)
    tokenize_s = time.perf_counter() - t
    llm = LLM(a.model, max_model_len=a.max_model_len, max_num_seqs=a.max_num_seqs)
    sp = SamplingParams(max_tokens=a.max_tokens, temperature=0.0)
    llm.generate(ids[:8], SamplingParams(max_tokens=16, temperature=0.0))
    rounds = []
    for _ in range(a.rounds):
        torch.cuda.synchronize()
        t = time.perf_counter()
        outs = llm.generate(ids, sp)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
        n = sum(len(o.token_ids) for o in outs)
        t = time.perf_counter()
        tok.batch_decode([o.token_ids for o in outs], skip_special_tokens=True)
        rounds.append({"s": round(dt, 3), "gen_tokens": n, "out_tok_s": round(n / dt),
                       "batch_decode_s": round(time.perf_counter() - t, 3)})
        print(f"engine alone: {len(ids)} questions, {n} tokens in {dt:.3f} s ({n / dt:,.0f} tok/s)", flush=True)
    res = {"questions": len(ids), "tokenize_s": round(tokenize_s, 3), "rounds": rounds}
    Path(a.out).write_text(json.dumps(res, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
