"""Why two engines' greedy answers part: token ids from each engine, then fp32 logits at every parting point.

Greedy decoding in bf16 follows the argmax; where two tokens' logits are closer than the engines' rounding
differences, either engine may pick either one, and from there the answers diverge. This script tells such
near-ties from real faults. Each `gen` run writes the greedy token ids of one engine at one dtype for the same
prompts (the server's chat formatting), each in its own process (vLLM and the native engine never share a GPU
context). `judge` then compares every pair of runs on their first N tokens and, for each question where the
first two runs part, feeds prompt + common prefix to transformers in fp32 and records both candidates' logits:
a parting at a near-tie shows a small fp32 gap; a fault shows an engine choosing a token far below the top.

    python -m scripts.real_weights.agreement gen --engine native --dtype bfloat16 --model M --data exam.jsonl --out a.json
    python -m scripts.real_weights.agreement gen --engine vllm --dtype bfloat16 --model M --data exam.jsonl --out b.json
    python -m scripts.real_weights.agreement judge --model M a.json b.json [more.json ...] --out agreement.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from scripts.real_weights.compare_engines import agrees, common_prefix

DEVICE = os.environ.get("AGREEMENT_DEVICE", "cuda")   # "cpu" lets the script be tried on the tiny model


def _prompts(model: str, data: str, limit: int | None) -> tuple[list[list[int]], list[int]]:
    from qaforge.chat import prompts_token_ids
    from qaforge.dataset import read_records
    from qaforge.engine.config import EngineConfig
    from qaforge.modeling import load_tokenizer

    records = read_records(Path(data))[:limit]
    ids = prompts_token_ids(load_tokenizer(model), [r.question for r in records])
    return ids, list(EngineConfig(model=model, device="cpu").eos_token_ids)


def _gen_native(model, prompts, dtype, max_tokens):
    from qaforge.engine import LLM, SamplingParams

    llm = LLM(model, device=DEVICE, dtype=dtype, max_model_len=2048, max_num_seqs=512)
    outs = llm.generate(prompts, SamplingParams(max_tokens=max_tokens, temperature=0.0))
    return [o.token_ids for o in outs]


def _gen_vllm(model, prompts, dtype, max_tokens, eager):
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, dtype=dtype, gpu_memory_utilization=0.5, max_model_len=2048, enforce_eager=eager,
              max_num_seqs=512, seed=0)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0.0, max_tokens=max_tokens), use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def _gen_hf(model, prompts, dtype, max_tokens, eos):
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).to(DEVICE).eval()
    out = []
    for start in range(0, len(prompts), 64):   # left-padded batches; pad = an eos id, masked out
        chunk = prompts[start:start + 64]
        width = max(map(len, chunk))
        ids = torch.tensor([[eos[0]] * (width - len(p)) + p for p in chunk]).to(DEVICE)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk]).to(DEVICE)
        with torch.no_grad():
            gen = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens, do_sample=False,
                             pad_token_id=eos[0], eos_token_id=eos)
        out += [g[width:].tolist() for g in gen]
    return out


def _strip(ids: list[int], eos: set[int]) -> list[int]:
    """Ids up to (not including) the first EOS: engines differ in whether they return it and what they pad."""
    for i, t in enumerate(ids):
        if t in eos:
            return ids[:i]
    return ids


def gen(args) -> None:
    prompts, eos = _prompts(args.model, args.data, args.limit)
    t0 = time.perf_counter()
    if args.engine == "native":
        ids = _gen_native(args.model, prompts, args.dtype, args.max_tokens)
    elif args.engine == "vllm":
        ids = _gen_vllm(args.model, prompts, args.dtype, args.max_tokens, args.eager)
    else:
        ids = _gen_hf(args.model, prompts, args.dtype, args.max_tokens, eos)
    label = args.label or f"{args.engine}_{args.dtype}{'_eager' if args.eager else ''}"
    result = {"label": label, "engine": args.engine, "dtype": args.dtype, "eager": args.eager,
              "seconds": round(time.perf_counter() - t0, 2), "prompts": prompts,
              "ids": [_strip(x, set(eos)) for x in ids], "eos": eos}
    Path(args.out).write_text(json.dumps(result), encoding="utf-8")
    print(f"{label}: {len(ids)} answers in {result['seconds']} s -> {args.out}")


def _pairs(runs: list[dict], first: int) -> list[dict]:
    rows = []
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            ok = [agrees(x, y, first) for x, y in zip(a["ids"], b["ids"])]
            pre = sorted(common_prefix(x, y) for x, y in zip(a["ids"], b["ids"]))
            rows.append({"a": a["label"], "b": b["label"], "agree_first_share": sum(ok) / len(ok),
                         "median_prefix": pre[len(pre) // 2]})
    return rows


def _fp32_model(model: str):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).to(DEVICE).eval()


def _partings(m, a: dict, b: dict, first: int) -> list[dict]:
    """fp32 logits of both candidates where `a` and `b` part before `first` tokens."""
    import torch

    rows = []
    for q, (prompt, x, y) in enumerate(zip(a["prompts"], a["ids"], b["ids"])):
        p = common_prefix(x, y)
        if agrees(x, y, first) or p >= min(len(x), len(y)):
            continue   # agreed, or one simply stopped earlier (no second candidate to weigh)
        with torch.no_grad():
            logits = m(torch.tensor([prompt + x[:p]]).to(DEVICE)).logits[0, -1].float()
        top2 = torch.topk(logits, 2)
        la, lb = float(logits[x[p]]), float(logits[y[p]])
        rows.append({"question": q, "position": p, "token_a": x[p], "token_b": y[p], "logit_a": round(la, 4),
                     "logit_b": round(lb, 4), "gap": round(abs(la - lb), 4),
                     "fp32_top": int(top2.indices[0]), "fp32_top_gap": round(float(top2.values[0] - top2.values[1]), 4),
                     "fp32_picks": "a" if int(top2.indices[0]) == x[p] else "b" if int(top2.indices[0]) == y[p] else "neither"})
    return rows


def _margins(m, run: dict, first: int, limit: int = 100) -> list[float]:
    """fp32 top-1 minus top-2 logit at every one of the first tokens of `run`: what a typical step's margin is."""
    import torch

    gaps = []
    for prompt, x in list(zip(run["prompts"], run["ids"]))[:limit]:
        ids = prompt + x[:first]
        with torch.no_grad():
            lg = m(torch.tensor([ids]).to(DEVICE)).logits[0, len(prompt) - 1:len(ids) - 1].float()
        top2 = torch.topk(lg, 2, dim=-1).values
        gaps += (top2[:, 0] - top2[:, 1]).tolist()
    return gaps


def judge(args) -> None:
    runs = [json.loads(Path(f).read_text(encoding="utf-8")) for f in args.runs]
    pairs = _pairs(runs, args.first)
    for r in pairs:
        print(f"{r['a']:>24} vs {r['b']:<24} agree on first {args.first}: {r['agree_first_share']:6.1%}  "
              f"median common prefix {r['median_prefix']}")
    m = _fp32_model(args.model)
    parts = _partings(m, runs[0], runs[1], args.first)
    gaps = sorted(r["gap"] for r in parts)
    typical = sorted(_margins(m, runs[0], args.first))
    picks = {k: sum(r["fp32_picks"] == k for r in parts) for k in ("a", "b", "neither")}
    summary = {"partings": len(parts), "fp32_picks": picks,
               "gap_median": statistics.median(gaps) if gaps else None,
               "gap_max": gaps[-1] if gaps else None,
               "gap_share_below": {t: sum(g < t for g in gaps) / max(1, len(gaps)) for t in (0.25, 0.5, 1.0)},
               "typical_step_top_gap_median": statistics.median(typical) if typical else None,
               "typical_step_share_below_0.5": sum(g < 0.5 for g in typical) / max(1, len(typical))}
    print(f"{runs[0]['label']} vs {runs[1]['label']}: {len(parts)} partings before token {args.first}; fp32 picks "
          f"a={picks['a']} b={picks['b']} neither={picks['neither']}; fp32 gap between the two candidates: "
          f"median {summary['gap_median']}, max {summary['gap_max']}, share < 0.25/0.5/1.0: "
          + " / ".join(f"{v:.0%}" for v in summary["gap_share_below"].values())
          + f"; a typical step's fp32 top-2 gap: median {summary['typical_step_top_gap_median']:.3f}, "
            f"{summary['typical_step_share_below_0.5']:.1%} of steps below 0.5")
    out = {"first_tokens": args.first, "runs": [{k: r[k] for k in ("label", "engine", "dtype", "eager", "seconds")}
                                                 for r in runs],
           "pairs": pairs, "partings_summary": summary, "partings": parts}
    Path(args.out).write_text(json.dumps(out, indent=2), encoding="utf-8")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--engine", choices=("native", "vllm", "hf"), required=True)
    g.add_argument("--dtype", default="bfloat16")
    g.add_argument("--eager", action="store_true", help="vLLM: no CUDA graphs / compile")
    g.add_argument("--model", required=True)
    g.add_argument("--data", required=True)
    g.add_argument("--max-tokens", type=int, default=48)
    g.add_argument("--limit", type=int)
    g.add_argument("--label")
    g.add_argument("--out", required=True)
    j = sub.add_parser("judge")
    j.add_argument("--model", required=True)
    j.add_argument("runs", nargs="+", help="gen outputs; the first two are the pair whose partings are weighed")
    j.add_argument("--first", type=int, default=32)
    j.add_argument("--out", required=True)
    args = p.parse_args()
    gen(args) if args.cmd == "gen" else judge(args)


if __name__ == "__main__":
    main()
