"""Where qaforge's own data files live and where runs go: the one home of these paths.

Every file the code reads at run time ships inside the package (pyproject's package-data), so a wheel
install (`pip install qaforge-*.whl`, `pip install git+...`) has the sample textbook, the profiles and the
warm-up questions without a checkout. Runs go under the working directory, never into the package.
"""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# The folder that holds the package: the checkout in a development install, site-packages in a wheel
# install. Only for what a checkout has beside the package (its .venv-vllm) and for a child process's
# PYTHONPATH; no data file is looked up here.
REPO_DIR = PACKAGE_DIR.parent

DATA_DIR = PACKAGE_DIR / "data"
DEFAULT_CORPUS_DIR = DATA_DIR / "corpus"  # the sample textbook, chNN_<slug>.md
WARMUP_QUESTIONS = DATA_DIR / "warmup_questions.json"
PROFILES_DIR = PACKAGE_DIR / "profiles"
TEMPLATES_DIR = PACKAGE_DIR / "templates"  # chat template, dataset and model card templates

GENERATE_DIR = PACKAGE_DIR / "generate"
PROMPTS_DIR = GENERATE_DIR / "prompts"
DOMAINS_DIR = GENERATE_DIR / "domains"
CHAPTER_MAPS_DIR = GENERATE_DIR / "chapter_maps"
PMPP_CHAPTER_MAP = CHAPTER_MAPS_DIR / "pmpp.yaml"
PRICES_FILE = GENERATE_DIR / "prices.yaml"
RULES_TEMPLATES_FILE = GENERATE_DIR / "rules_templates.yaml"
JUDGE_PROMPTS_DIR = PACKAGE_DIR / "judge" / "prompts"
REVIEW_DIR = PACKAGE_DIR / "review"  # its templates/ and static/

# Relative on purpose: resolved against the working directory when used, not when imported.
RUNS_DIR = Path("runs")
