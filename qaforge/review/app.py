"""The review page's HTTP app.

Why FastAPI + server-rendered Jinja2 + a little vanilla JS: FastAPI and uvicorn are already qaforge's
dependencies (the serving stage), Jinja2 comes with them in every install we ship, and a page rendered on the
server needs no Node toolchain or build step; the JS only adds keyboard shortcuts and saves each verdict the
moment it is given. (Gradio would pull a large dependency tree and own the page's state, which we want in
our own append-only journal.)

Every request passes the token check when a token is set; the command refuses to bind beyond loopback
without one. State lives in the journal, never in the page: a reload or a restarted server shows the same.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

import jinja2
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.middleware.trustedhost import TrustedHostMiddleware
from pydantic import BaseModel, ConfigDict

from qaforge.review.evalrun import is_eval_run, load_eval_run, sorted_rows
from qaforge.review.items import ReviewInputError, ReviewSet, item_view, load_review_set
from qaforge.review.journal import JOURNAL_NAME, VERDICTS, Journal
from qaforge.review.stats import review_results, write_report

from qaforge.paths import REVIEW_DIR as HERE
TOKEN_COOKIE = "qaforge_review_token"
MAX_TEXT_CHARS = 20_000   # an edit longer than this is a paste accident, not an answer


class VerdictIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    verdict: str | None


class EditIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str | None = None
    answer: str | None = None


def _presented_token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return (request.headers.get("x-review-token") or request.query_params.get("token")
            or request.cookies.get(TOKEN_COOKIE))


def _install_token_check(app: FastAPI, token: str) -> None:
    @app.middleware("http")
    async def check_token(request: Request, call_next):
        presented = _presented_token(request)
        if presented is None or not hmac.compare_digest(presented.encode(), token.encode()):
            return JSONResponse({"detail": "missing or wrong review token (open the page as /?token=...)"},
                                status_code=401)
        response = await call_next(request)
        if request.query_params.get("token"):
            # The page's own fetch() calls then carry the token without putting it in every URL.
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    return Jinja2Templates(env=env)


def create_app(folder: Path, sample: int = 50, seed: int = 0, corpus: Path | None = None,
               token: str | None = None, judge_pass: float = 4.0,
               allowed_hosts: list[str] | None = None) -> FastAPI:
    """The app over a dataset folder (qa.json) or an eval run folder (eval_results.json).

    `allowed_hosts` (Host header names) guards a token-less loopback server against DNS rebinding: a web
    page on another name that resolves to 127.0.0.1 must not be able to drive the review.
    """
    folder = Path(folder)
    app = FastAPI(title="qaforge review", docs_url=None, redoc_url=None, openapi_url=None)
    if token:
        _install_token_check(app, token)
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = _templates()

    @app.exception_handler(ReviewInputError)
    async def bad_input(request: Request, exc: ReviewInputError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, exc: RequestValidationError):
        # One readable sentence (the page shows `detail` as is) instead of pydantic's error list.
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse({"detail": f"bad request: {problems}"}, status_code=422)

    @app.get("/api/health")
    def health() -> dict[str, str]:
        return {"mode": "eval" if eval_mode else "dataset", "folder": str(folder)}

    eval_mode = is_eval_run(folder)
    if eval_mode:
        _eval_routes(app, templates, folder)
        return app
    if not (folder / "qa.json").is_file():
        raise ReviewInputError(f"{folder}: neither a dataset folder (qa.json) nor an eval run (eval_results.json)")
    review = load_review_set(folder, sample, seed, corpus)
    journal = Journal(folder / JOURNAL_NAME)
    app.state.review, app.state.journal = review, journal
    _dataset_routes(app, templates, folder, review, journal, judge_pass)
    return app


def _dataset_routes(app: FastAPI, templates: Jinja2Templates, folder: Path, review: ReviewSet,
                    journal: Journal, judge_pass: float) -> None:
    def view(item_id: str) -> dict[str, Any]:
        return item_view(review, item_id, journal.state.get(item_id).to_dict())

    def known(item_id: str) -> None:
        if item_id not in review.records:
            raise HTTPException(404, f"no item {item_id!r} in {folder / 'qa.json'}")

    def results() -> dict[str, Any]:
        return review_results(journal.state, set(review.records), review.sample, review.judge, judge_pass)

    @app.get("/")
    def page(request: Request):
        items = [view(i) for i in review.sample]
        return templates.TemplateResponse(request, "dataset.html", {
            "folder": str(folder), "items": items, "results": results(), "verdicts": VERDICTS,
            "has_judge": bool(review.judge), "corpus": str(review.corpus) if review.corpus else None})

    @app.get("/api/items")
    def list_items() -> list[dict[str, Any]]:
        return [_public(view(i)) for i in review.sample]

    @app.get("/api/items/{item_id}")
    def get_item(item_id: str) -> dict[str, Any]:
        known(item_id)
        return _public(view(item_id))

    @app.post("/api/items/{item_id}/verdict")
    def set_verdict(item_id: str, body: VerdictIn) -> dict[str, Any]:
        known(item_id)
        if body.verdict is not None and body.verdict not in VERDICTS:
            raise HTTPException(400, f"verdict must be one of {list(VERDICTS)} or null, got {body.verdict!r}")
        journal.append({"id": item_id, "kind": "verdict", "verdict": body.verdict})
        return {"saved": True, "item": _public(view(item_id)), "results": results()}

    @app.post("/api/items/{item_id}/edit")
    def edit(item_id: str, body: EditIn) -> dict[str, Any]:
        known(item_id)
        fields = {k: v for k, v in body.model_dump().items() if v is not None}
        if not fields:
            raise HTTPException(400, "an edit needs 'question' and/or 'answer'")
        for key, value in fields.items():
            if not value.strip():
                raise HTTPException(400, f"the edited {key} is empty; mark the item inaccurate to drop it")
            if len(value) > MAX_TEXT_CHARS:
                raise HTTPException(400, f"the edited {key} is over {MAX_TEXT_CHARS} characters")
        journal.append({"id": item_id, "kind": "edit", **fields})
        return {"saved": True, "item": _public(view(item_id)), "results": results()}

    @app.get("/api/report")
    def report() -> dict[str, Any]:
        data = results()
        return {**data, "files": write_report(data, folder)}

    @app.get("/report")
    def report_page(request: Request):
        data = results()
        return templates.TemplateResponse(request, "report.html", {
            "folder": str(folder), "results": data, "files": write_report(data, folder)})


def _public(view: dict[str, Any]) -> dict[str, Any]:
    # The chunk's highlighted pieces are for the template; the API gives the spans' share instead.
    return {k: v for k, v in view.items() if k != "chunk_pieces"}


def _eval_routes(app: FastAPI, templates: Jinja2Templates, folder: Path) -> None:
    run = load_eval_run(folder)

    def ordering(sort: str | None, order: str) -> list[dict[str, Any]]:
        if order not in ("asc", "desc"):
            raise HTTPException(400, f"order must be 'asc' (worst first) or 'desc', got {order!r}")
        return sorted_rows(run, sort, descending=order == "desc")

    @app.get("/")
    def root():
        return RedirectResponse("/eval")

    @app.get("/eval")
    def eval_page(request: Request, sort: str | None = None, order: str = "asc"):
        sort = sort or run["labels"][-1]   # the system under test is listed last
        return templates.TemplateResponse(request, "eval.html", {
            "folder": str(folder), "run": run, "rows": ordering(sort, order), "sort": sort, "order": order})

    @app.get("/api/eval")
    def eval_rows(sort: str | None = None, order: str = "asc") -> dict[str, Any]:
        return {"labels": run["labels"], "means": run["means"], "rows": ordering(sort, order)}
