"""qaforge: textbook -> QA dataset -> LoRA fine-tuned Qwen3 -> ROUGE-L report -> fast HTTP serving."""

__version__ = "0.1.0"
