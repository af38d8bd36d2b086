"""Root shim for the course grader's Docker CMD: `uvicorn serve:app --host 0.0.0.0 --port 8000`.

Settings come from QAFORGE_* environment variables (QAFORGE_MODEL, QAFORGE_ENGINE, ...);
see docs/serving.md. The model loads in the background once uvicorn starts the app.
"""

from qaforge.serve.app import app_from_env

app = app_from_env()
