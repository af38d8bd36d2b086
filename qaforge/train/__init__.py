"""LoRA SFT of Qwen3/Qwen2 models: chat-template data with assistant-only loss, padding-free packing,
profiles, a Trainer-based loop with a fused fast path, merge, and ROUGE-L evaluation.

Entry points: `qaforge.train.trainer.train(config)`, `qaforge.train.profiles.load_profile(name, **overrides)`.
Parts: data.py, model.py, loop.py, callbacks.py, report.py (docs/training.md, "Where the code is").
"""
