"""`qaforge review DIR`: a local web page where people check a dataset (or an eval run) and say what is right.

Layout: `dataset.py` (what is shown: sample, chunks, highlights, judge scores), `journal.py` (verdicts and
edits, append-only), `stats.py` (Wilson intervals, judge agreement, review_report.*), `export.py` (edited
train/exam files), `evalrun.py` (eval_results.json side by side), `app.py` (HTTP), `command.py` (CLI).
"""
