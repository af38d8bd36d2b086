"""ROUGE parity with LLaMA-Factory's ComputeSimilarity (jieba + rouge_chinese + NLTK) and the course metric."""

from __future__ import annotations

import json
from pathlib import Path

import jieba
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_chinese import Rouge

from qaforge.evaluate.course_metric import course_rouge_l, course_tokens
from qaforge.evaluate.rouge import char_bleu4, lcs_length, score_pair

SHARED_QA = Path(__file__).resolve().parents[1].parent / "shared" / "seed_data" / "pmpp_qa_v2.jsonl"


def llamafactory_similarity(pred: str, label: str) -> dict[str, float]:
    """ComputeSimilarity's per-sample body (LLaMA-Factory src/llamafactory/train/sft/metric.py), unrounded."""
    hypothesis, reference = list(jieba.cut(pred)), list(jieba.cut(label))
    if len(" ".join(hypothesis).split()) == 0 or len(" ".join(reference).split()) == 0:
        result = {"rouge-1": {"f": 0.0}, "rouge-2": {"f": 0.0}, "rouge-l": {"f": 0.0}}
    else:
        result = Rouge().get_scores(" ".join(hypothesis), " ".join(reference))[0]
    return {k: v["f"] for k, v in result.items()}


def assert_parity(pred: str, label: str) -> None:
    expected = llamafactory_similarity(pred, label)
    got = score_pair(pred, label)
    assert got.rouge_1 == pytest.approx(expected["rouge-1"], abs=1e-6), (pred, label)
    assert got.rouge_2 == pytest.approx(expected["rouge-2"], abs=1e-6), (pred, label)
    assert got.rouge_l == pytest.approx(expected["rouge-l"], abs=1e-6), (pred, label)


VARIED_PAIRS = [
    ("CUDA核函数使用__global__声明。", "核函数用 __global__ 修饰，由主机调用。"),
    ("A warp has 32 threads.", "In NVIDIA GPUs a warp consists of 32 threads that execute in SIMT."),
    ("共享内存（shared memory）位于SM上！延迟低？是的。", "shared memory 是片上存储，延迟远低于全局内存。"),
    ("```cuda\n__global__ void add(float* a){ a[threadIdx.x] += 1; }\n```", "使用 threadIdx.x 索引：a[threadIdx.x] += 1;"),
    ("第一段。\n\n第二段……还有“引号。”后面", "第一段。\n\n第二段......后面"),
    ("", "参考答案不为空"),
    ("预测不为空", ""),
    ("   \n\t", "空白预测"),
    ("", ""),
    ("同样的答案。", "同样的答案。"),
    ("完全 无关 的 内容", "thread block grid"),
    ("！？?。", "。。。"),
]


@pytest.mark.parametrize("pred,label", VARIED_PAIRS)
def test_rouge_matches_rouge_chinese_on_varied_pairs(pred: str, label: str) -> None:
    assert_parity(pred, label)


def test_identical_answer_scores_one_and_empty_scores_zero() -> None:
    assert score_pair("线程块内的线程可以同步。", "线程块内的线程可以同步。").rouge_l == pytest.approx(1.0, abs=1e-6)
    assert score_pair("", "线程块").rouge_l == 0.0
    assert score_pair("线程块", "  ").rouge_1 == 0.0


_ALPHABET = list("线程块网格内存共享全局核函数的是在一个") + list("abcXYZ0129_") + list(" \n\t。！？?.…”’，,()[]{}=+;")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=_ALPHABET, max_size=60), st.text(alphabet=_ALPHABET, max_size=60))
def test_rouge_matches_rouge_chinese_on_random_text(pred: str, label: str) -> None:
    assert_parity(pred, label)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from("abcde"), max_size=40), st.lists(st.sampled_from("abcde"), max_size=40))
def test_bit_parallel_lcs_matches_dynamic_programming(a: list[str], b: list[str]) -> None:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = table[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(table[i - 1][j], table[i][j - 1])
    assert lcs_length(a, b) == table[len(a)][len(b)]


def test_rouge_matches_rouge_chinese_on_real_answers() -> None:
    if not SHARED_QA.exists():
        pytest.skip(f"shared seed data not found at {SHARED_QA}")
    rows = [json.loads(line) for line in SHARED_QA.read_text(encoding="utf-8").splitlines()[:40]]
    # Pair each answer with its neighbour (realistic partial overlap) and with its own question.
    for row, other in zip(rows, rows[1:]):
        assert_parity(row["output"], other["output"])
        assert_parity(row["instruction"], row["output"])


def test_char_bleu4_follows_nltk_method3() -> None:
    assert char_bleu4("共享内存延迟低", "共享内存延迟低") == pytest.approx(1.0)
    assert char_bleu4("", "共享内存") == 0.0
    assert 0.0 < char_bleu4("共享内存延迟很低", "共享内存的延迟低") < 1.0


def test_course_metric_keeps_only_latin_and_digit_tokens() -> None:
    text = "CUDA 核函数 使用 __global__ 声明 warp 有 32 个 线程"
    assert course_tokens(text) == ["cuda", "global", "warp", "32"]


def test_course_metric_ignores_chinese_entirely() -> None:
    # Completely different Chinese, same English keywords: the course metric calls it perfect.
    assert course_rouge_l("线程束 warp 包含 32 个线程", "一个 warp 由 32 条 执行 路径 组成") == pytest.approx(1.0)
    # Identical Chinese with no Latin token at all scores 0 on the course metric, 1 on rouge-chinese.
    assert course_rouge_l("共享内存位于片上", "共享内存位于片上") == 0.0
    assert score_pair("共享内存位于片上", "共享内存位于片上").rouge_l == pytest.approx(1.0, abs=1e-6)
