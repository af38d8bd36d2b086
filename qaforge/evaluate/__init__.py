"""Evaluation stage: ROUGE-L identical to LLaMA-Factory's, the course metric, baselines, contamination,
answer collection from a local model or an endpoint, reports and plots, and the grader simulator.

Entry point: `qaforge.evaluate.run.evaluate(...)`; CLI: `qaforge eval` (`command.py`).
"""
