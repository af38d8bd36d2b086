"""Where the project's data files live (inside the package checkout) and where runs go."""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
TEMPLATES_DIR = PACKAGE_DIR / "templates"
DATA_DIR = REPO_DIR / "data"
DEFAULT_CORPUS_DIR = DATA_DIR / "corpus"
WARMUP_QUESTIONS = DATA_DIR / "warmup_questions.json"
PROFILES_DIR = REPO_DIR / "profiles"
RUNS_DIR = REPO_DIR / "runs"
