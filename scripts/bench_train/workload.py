"""The benchmark's workloads: the seed dataset's length distribution, synthetic batches (T1), the data files
and the model every end-to-end variant of one call shares."""

from __future__ import annotations

import json
import random
from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_REPO = Path(__file__).resolve().parents[2]
# ../shared beside the checkout, or shared/ inside the copy a device machine gets
SEED_CANDIDATES = [root / "shared" / "seed_data" / "pmpp_qa_v2.jsonl" for root in (_REPO.parent, _REPO)]
EXAM_SIZE = 193  # as the course project's held-out split
# The course project's dataset (pmpp_qa_v2.jsonl, 3,099 pairs): histogram of estimated Qwen3 token lengths of the
# full chat sample (system + question + answer + template), 8-token bins (lower edge, count),
# 512 = truncated. Estimate: 0.7 tokens per CJK character, 0.3 per other character.
SEED_LENGTH_HISTOGRAM = [
    [104, 1], [112, 3], [120, 5], [128, 9], [136, 21], [144, 56], [152, 75], [160, 118], [168, 169],
    [176, 171], [184, 192], [192, 192], [200, 143], [208, 120], [216, 117], [224, 79], [232, 99],
    [240, 80], [248, 92], [256, 78], [264, 77], [272, 93], [280, 74], [288, 64], [296, 59], [304, 67],
    [312, 76], [320, 53], [328, 62], [336, 60], [344, 37], [352, 32], [360, 36], [368, 26], [376, 29],
    [384, 21], [392, 25], [400, 24], [408, 22], [416, 15], [424, 30], [432, 18], [440, 12], [448, 13],
    [456, 9], [464, 7], [472, 7], [480, 11], [488, 9], [496, 8], [504, 12], [512, 191]]
SEED_PROMPT_TOKENS = 87  # mean estimated prompt length (system + question + template)


def sample_lengths(n: int, rng: random.Random) -> list[int]:
    edges = [e for e, _ in SEED_LENGTH_HISTOGRAM]
    weights = [c for _, c in SEED_LENGTH_HISTOGRAM]
    return [min(512, e + (rng.randrange(8) if e < 512 else 0)) for e in rng.choices(edges, weights, k=n)]


def qwen3_06b_config():
    from transformers import Qwen3Config
    return Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6,
                       tie_word_embeddings=True, eos_token_id=151645, bos_token_id=151643,
                       pad_token_id=151643)


def make_batches(kind: str, n: int, seed: int = 0):
    """n steps of 16 samples: list of (input_ids list, labels list) per step."""
    rng = random.Random(seed)
    steps = []
    for _ in range(n):
        samples = []
        lengths = [512] * 16 if kind == "synthetic" else sample_lengths(16, rng)
        for length in lengths:
            ids = [rng.randrange(1000, 150000) for _ in range(length)]
            if kind == "synthetic":
                labels = list(ids)
                labels[0] = -100  # so the packed row never predicts across samples (same count as padded)
            else:
                prompt = min(length - 8, max(40, int(rng.gauss(SEED_PROMPT_TOKENS, 15))))
                labels = [-100] * prompt + ids[prompt:]
            samples.append((ids, labels))
        steps.append(samples)
    return steps


def padded(samples, device, pad_id: int = 151643):
    import torch

    longest = max(len(i) for i, _ in samples)
    ids = torch.full((len(samples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), longest), -100, dtype=torch.long)
    mask = torch.zeros((len(samples), longest), dtype=torch.long)
    for row, (i, lab) in enumerate(samples):
        ids[row, :len(i)] = torch.tensor(i)
        labels[row, :len(i)] = torch.tensor(lab)
        mask[row, :len(i)] = 1
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


def packed(samples, device):
    import torch

    from qaforge.train.data import SFTCollator
    # what the Trainer's collator makes: packed row + host-side label positions (no nonzero() sync)
    batch = SFTCollator(0, packing=True, label_positions=True)([{"input_ids": i, "labels": lab} for i, lab in samples])
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def synthetic_texts(out_dir: Path, n_train=3099, n_exam=EXAM_SIZE):
    """Tokenizer from the project's corpus + QA texts whose token lengths follow the seed's histogram."""
    from qaforge.chat import DEFAULT_SYSTEM_PROMPT
    from qaforge.paths import DEFAULT_CORPUS_DIR
    from qaforge.tiny import read_corpus_text, train_tokenizer

    texts = read_corpus_text(DEFAULT_CORPUS_DIR)
    tokenizer = train_tokenizer(texts, vocab_size=8192)
    corpus = "".join(texts).replace("\n", " ")
    chars_per_token = len(corpus) / len(tokenizer(corpus, add_special_tokens=False)["input_ids"])
    overhead = len(tokenizer(DEFAULT_SYSTEM_PROMPT)["input_ids"]) + 16
    rng = random.Random(0)

    def snippet(tokens):
        n_chars = max(4, int(tokens * chars_per_token))
        start = rng.randrange(0, len(corpus) - n_chars - 1)
        return corpus[start:start + n_chars]

    def write(path, n):
        with open(path, "w", encoding="utf-8") as f:
            for length in sample_lengths(n, rng):
                q_tokens = max(8, int(rng.gauss(SEED_PROMPT_TOKENS, 15)) - overhead)
                a_tokens = max(8, length - overhead - q_tokens)
                f.write(json.dumps({"instruction": snippet(q_tokens) + "？", "input": "",
                                    "output": snippet(a_tokens), "difficulty": rng.choice(["easy", "medium", "hard"])},
                                   ensure_ascii=False) + "\n")

    out_dir.mkdir(parents=True, exist_ok=True)
    write(out_dir / "train.jsonl", n_train)
    write(out_dir / "exam.jsonl", n_exam)
    return tokenizer


def split_file(data: Path, out_dir: Path, exam_size: int = EXAM_SIZE, seed: int = 0) -> tuple[Path, Path]:
    """A fixed train/exam split of one alpaca file, so every variant trains and evaluates on the same lines."""
    lines = [line for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    order = list(range(len(lines)))
    random.Random(seed).shuffle(order)
    held = set(order[:min(exam_size, len(lines) // 10)])
    out_dir.mkdir(parents=True, exist_ok=True)
    train, exam = out_dir / "train.jsonl", out_dir / "exam.jsonl"
    train.write_text("".join(lines[i] + "\n" for i in range(len(lines)) if i not in held), encoding="utf-8")
    exam.write_text("".join(lines[i] + "\n" for i in sorted(held)), encoding="utf-8")
    return train, exam


def random_qwen3_dir(work: Path, tokenizer, device: str) -> Path:
    """Qwen3-0.6B's architecture with random bf16 weights (speed does not depend on the values) + `tokenizer`."""
    import torch
    from transformers import GenerationConfig, Qwen3ForCausalLM

    model_dir = work / "qwen3_0.6b_random"
    if (model_dir / "config.json").exists():
        return model_dir
    cfg = qwen3_06b_config()
    cfg.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    cfg.pad_token_id = cfg.bos_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM._from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    GenerationConfig(eos_token_id=[cfg.eos_token_id], pad_token_id=cfg.pad_token_id).save_pretrained(model_dir)
    return model_dir


def prepare(work: Path, model: str | None, data: str | None, exam: str | None, device: str) -> dict:
    """The files of one benchmark call: train/exam split and model directory (built once, before any variant)."""
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = None
    if data:
        train, exam_path = (Path(data), Path(exam)) if exam else split_file(Path(data), work / "data")
        source = data
    elif any(c.is_file() for c in SEED_CANDIDATES):
        seed = next(c for c in SEED_CANDIDATES if c.is_file())
        train, exam_path = split_file(seed, work / "data")
        source = str(seed.resolve())
    else:
        tokenizer = synthetic_texts(work / "data")
        train, exam_path, source = work / "data/train.jsonl", work / "data/exam.jsonl", "synthetic (seed lengths)"
    if model is None:
        if tokenizer is None:
            from qaforge.paths import DEFAULT_CORPUS_DIR
            from qaforge.tiny import read_corpus_text, train_tokenizer
            tokenizer = train_tokenizer(read_corpus_text(DEFAULT_CORPUS_DIR), vocab_size=8192)
        model = str(random_qwen3_dir(work, tokenizer, device))
    return {"model": model, "train": str(train), "exam": str(exam_path), "data_source": source,
            "train_lines": sum(1 for _ in open(train, encoding="utf-8")),
            "exam_lines": sum(1 for _ in open(exam_path, encoding="utf-8"))}
