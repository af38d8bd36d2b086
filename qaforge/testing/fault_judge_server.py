"""The fault server in judge mode: the same HTTP, transport faults and statistics as
`fault_llm_server.FaultLLMServer`, but its replies are judge verdicts instead of QA items.

The verdicts are a deterministic function of the prompt, so tests can check what the judge pipeline
did with them: the parts are found by the tags of the default rubric templates (<source>, <question>,
<answer>, <reference>, <answer_1>, <answer_2>), and scores follow the overlap of Chinese character bigrams and Latin words:
  dataset:  accuracy from the answer's bigrams found in the source, relevance from the question's,
            completeness from the answer's length
  answers:  correctness from the answer's bigrams found in the reference (precision),
            completeness from the reference's bigrams found in the answer (recall)
  pairwise: the answer with the higher overlap F1 wins ("tie" within 0.05), except that with
            probability `first_bias` the first answer shown wins regardless: a planted position bias.
Reply faults (each a fraction of requests, none on the re-ask after a bad reply): rate_garbage (no
JSON), rate_out_of_range (a score of 7), rate_malformed (torn JSON, repairable), rate_think, rate_fence.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from qaforge.testing.fault_llm_server import FaultConfig, FaultLLMServer, _dress, _unit

_TAG = re.compile(r"<(source|question|answer|reference|answer_1|answer_2)>\s*(.*?)\s*</\1>", re.DOTALL)
_CJK_RUN = re.compile(r"[\u4e00-\u9fff]+")
_WORD = re.compile(r"[a-z0-9]{2,}")


@dataclass
class JudgeFaultConfig(FaultConfig):
    first_bias: float = 0.0          # share of pairwise verdicts that pick answer 1 whatever it says
    rate_out_of_range: float = 0.0


def bigrams(text: str) -> set[str]:
    """Chinese character bigrams plus whole Latin words (letter bigrams match almost any English)."""
    text = text.lower()
    grams = {run[i:i + 2] for run in _CJK_RUN.findall(text) for i in range(len(run) - 1)}
    return grams | set(_WORD.findall(text))


def overlap(part: str, whole: str) -> float:
    """Share of `part`'s character bigrams that occur in `whole` (0 for an empty part)."""
    grams = bigrams(part)
    return len(grams & bigrams(whole)) / len(grams) if grams else 0.0


def to_score(share: float) -> int:
    return 1 + min(4, int(share * 4 + 0.5))


def f1(answer: str, reference: str) -> float:
    p, r = overlap(answer, reference), overlap(reference, answer)
    return 2 * p * r / (p + r) if p + r else 0.0


class FaultJudgeServer(FaultLLMServer):
    def __init__(self, config: JudgeFaultConfig | None = None) -> None:
        super().__init__(config or JudgeFaultConfig())

    def verdict(self, text: str, key: str) -> dict:
        parts = dict(_TAG.findall(text))
        if "answer_1" in parts:
            one, two = f1(parts["answer_1"], parts.get("reference", "")), f1(parts["answer_2"], parts.get("reference", ""))
            if _unit(key, "first_bias") < self.config.first_bias:
                return {"winner": "1", "reason": "the first answer reads better"}
            winner = "tie" if abs(one - two) < 0.05 else "1" if one > two else "2"
            return {"winner": winner, "reason": f"overlap F1 {one:.2f} vs {two:.2f}"}
        answer = parts.get("answer", "")
        if "reference" in parts:
            precision, recall = overlap(answer, parts["reference"]), overlap(parts["reference"], answer)
            return {"correctness": to_score(precision), "completeness": to_score(recall),
                    "reason": f"{precision:.0%} of the answer matches the reference"}
        source = parts.get("source", "")
        share = overlap(answer, source)
        return {"accuracy": to_score(share), "relevance": to_score(overlap(parts.get("question", ""), source)),
                "completeness": to_score(min(1.0, len(answer) / 120)),
                "reason": f"{share:.0%} of the answer is found in the source"}

    def reply_content(self, messages: list[dict], seed: int | None) -> tuple[str, list[str]]:
        key = hashlib.sha256(json.dumps([messages, seed], ensure_ascii=False, sort_keys=True).encode()).hexdigest()
        first_user = next((str(m.get("content", "")) for m in messages if m.get("role") == "user"), "")
        verdict = self.verdict(first_user, key)
        cfg, faults = self.config, []
        if len([m for m in messages if m.get("role") == "user"]) == 1:   # a re-ask gets a clean reply
            if _unit(key, "garbage") < cfg.rate_garbage:
                return "I think these answers are quite good overall, well done!", ["garbage"]
            if "winner" not in verdict and _unit(key, "range") < cfg.rate_out_of_range:
                verdict = {**verdict, next(iter(verdict)): 7}
                faults.append("out_of_range")
        body = json.dumps(verdict, ensure_ascii=False)
        if _unit(key, "malformed") < cfg.rate_malformed:
            body = body.rstrip("}") + ","          # torn tail and a trailing comma: json-repair's job
            faults.append("malformed")
        return _dress(body, key, cfg, faults, "", "Let me compare {the answer} with the text."), faults
