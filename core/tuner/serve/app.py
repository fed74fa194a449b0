"""The web app: four pages (Runs, a run, Compare, Start), their JSON and the run files.

Pages are small HTML shells; `static/app.js` fetches the JSON and polls it
every second, so a new log line shows within ~1 s. A poll that names the
version it already has gets ``{"unchanged": true}`` back, so an idle page costs
one ``stat`` per second. Files are served only from inside the folder
(`RunFolder.resolve`) with Starlette's `FileResponse`, which answers HTTP range
requests (the video element seeks with them).
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tuner.serve.curves import DEFAULT_POINTS, curves
from tuner.serve.folder import RunFolder
from tuner.serve.guard import Guard
from tuner.serve.jobs import JobError, Jobs
from tuner.serve.runlog import RunLog
from tuner.serve.rundir import card_family, flavour, run_config, validation_rounds, written_files

__all__ = ["build_app"]

STATIC = Path(__file__).parent / "static"
PAGE_SIZE = 100
_TITLES = {"runs": "Runs", "run": "Run", "compare": "Compare", "start": "Start a run"}


def _page(kind: str, data: dict[str, Any], status: int = 200) -> HTMLResponse:
    """The shell every page shares: the nav, the vendored scripts, and what the page is about as JSON."""
    nav = "".join(
        f'<a href="/{"" if k == "runs" else k}" class="{"on" if k == kind else ""}">{t}</a>'
        for k, t in _TITLES.items()
        if k != "run"
    )
    # A <script> holds raw text (entities are not decoded): escape the characters that could end it as JSON does.
    payload = json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tuner · {_TITLES.get(kind, "")}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/uPlot.min.css"><link rel="stylesheet" href="/static/serve.css">
</head><body data-page="{kind}">
<header><b>tuner</b><nav>{nav}</nav><span id="folder">{html.escape(str(data.get("folder", "")))}</span></header>
<main id="main"><p class="muted">loading…</p></main>
<script id="page-data" type="application/json">{payload}</script>
<script src="/static/uPlot.iife.min.js"></script><script src="/static/serve.js"></script>
</body></html>"""
    return HTMLResponse(body, status_code=status)


def _clean(value: Any) -> Any:
    """Records as JSON allows them (the log may hold NaN or Infinity for a diverged loss)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def build_app(root: Path, token: str | None = None, loopback_only: bool = True) -> Guard:
    """The ASGI app serving ``root``: Starlette routes behind the `Guard`."""
    folder = RunFolder(root)
    jobs = Jobs(folder)

    def locked_curves(log: RunLog, points: int) -> dict[str, Any]:
        with log.lock:  # numpy views of the log's arrays: no refresh may grow them meanwhile
            return curves(log, points)

    def not_found(what: str) -> HTTPException:
        return HTTPException(404, what)

    def summary(run_id: str) -> dict[str, Any] | None:
        log = folder.log(run_id)
        if log is None:
            return None
        with log.lock:
            row = log.summary()
        run_dir = folder.root / run_id
        if row["family"] is None:
            row["family"] = card_family(run_dir)
        start = log.last("start")
        row["flavour"] = flavour((start or {}).get("config"), row["family"])
        job = jobs.for_run(run_id)
        if job is not None and job.process.poll() is None and row["state"] in ("starting", "interrupted"):
            row["state"] = "running"  # its process is ours and alive: a quiet log is a slow step
        return {"id": run_id, **row}

    async def runs_page(request: Request) -> Response:
        return _page("runs", {"folder": str(folder.root)})

    async def run_page(request: Request) -> Response:
        run_id = request.query_params.get("id", ".")
        if folder.resolve(run_id) is None or (folder.log(run_id) is None and jobs.for_run(run_id) is None):
            return _page("missing", {"folder": str(folder.root), "what": f"no run '{run_id}' in this folder"}, 404)
        return _page("run", {"folder": str(folder.root), "id": run_id})

    async def compare_page(request: Request) -> Response:
        return _page("compare", {"folder": str(folder.root), "ids": request.query_params.getlist("id")})

    async def start_page(request: Request) -> Response:
        return _page("start", {"folder": str(folder.root)})

    def runs_json(query: str, page: int) -> dict[str, Any]:
        ids = [i for i in folder.run_ids() if query.lower() in i.lower()]
        pages = max(1, math.ceil(len(ids) / PAGE_SIZE))
        page = min(max(page, 1), pages)
        rows = [s for s in (summary(i) for i in ids[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]) if s is not None]
        return {"folder": str(folder.root), "total": len(ids), "page": page, "pages": pages, "runs": _clean(rows)}

    async def api_runs(request: Request) -> Response:
        try:
            page = int(request.query_params.get("page", "1"))
        except ValueError:
            page = 1
        return JSONResponse(await run_in_threadpool(runs_json, request.query_params.get("q", ""), page))

    rounds_cache: dict[str, tuple[tuple[float, ...], list[dict[str, Any]]]] = {}

    def rounds_key(run_dir: Path, rounds: list[dict[str, Any]]) -> tuple[float, ...]:
        """What changes when a round starts or ends (validation/), or a round still rendering writes a file."""
        folder = run_dir / "validation"
        try:
            entries = float(len(os.listdir(folder)))  # a coarse clock may not tell two changes apart; a count does
        except OSError:
            entries = -1.0
        return (entries, _mtime(folder), *(_mtime(folder / f"step-{r['step']}") for r in rounds if not r["complete"]))

    def rounds_of(run_id: str, run_dir: Path) -> tuple[tuple[float, ...], list[dict[str, Any]]]:
        """The run's rounds, read again only when `rounds_key` changed (a live page asks every second)."""
        cached = rounds_cache.get(run_id)
        if cached is not None and rounds_key(run_dir, cached[1]) == cached[0]:
            return cached
        rounds = validation_rounds(run_dir, run_id)
        rounds_cache[run_id] = (rounds_key(run_dir, rounds), rounds)
        return rounds_cache[run_id]

    def run_json(run_id: str, points: int, seen: str | None) -> dict[str, Any] | None:
        run_dir = folder.resolve(run_id)
        job = jobs.for_run(run_id)
        log = folder.log(run_id) if run_dir is not None else None
        if run_dir is None or (log is None and job is None):
            return None
        console = job.console() if job is not None else ""
        seen_rounds, rounds = rounds_of(run_id, run_dir)
        version = "-".join(
            str(x)
            for x in (log.offset if log else -1, _mtime(run_dir), *seen_rounds, len(console), job.process.poll() if job else "")
        )
        if seen == version:
            return {"unchanged": True, "version": version}
        start = log.last("start") if log else None
        config, config_source = run_config(run_dir, start)
        return _clean(
            {
                "version": version,
                "summary": summary(run_id) if log else {"id": run_id, "state": "starting", "step": 0},
                "curves": locked_curves(log, points) if log else None,
                "rounds": rounds,
                "files": written_files(run_dir, run_id),
                "config": config,
                "config_source": config_source,
                "checkpoints": [r for r in (log.events if log else []) if r.get("event") == "checkpoint"][-50:],
                "job": job.describe() if job else None,
                "notices": [line for line in console.splitlines() if line.startswith("notice:")][-50:],
                "console": "\n".join(console.splitlines()[-40:]),
            }
        )

    async def api_run(request: Request) -> Response:
        try:
            points = int(request.query_params.get("points", DEFAULT_POINTS))
        except ValueError:
            points = DEFAULT_POINTS
        data = await run_in_threadpool(
            run_json, request.query_params.get("id", "."), points, request.query_params.get("v")
        )
        if data is None:
            raise not_found("no such run (it may have been deleted)")
        return JSONResponse(data)

    def compare_json(ids: list[str], points: int) -> dict[str, Any]:
        out = []
        for run_id in ids[:8]:
            log = folder.log(run_id)
            run_dir = folder.resolve(run_id)
            if log is None or run_dir is None:
                out.append({"id": run_id, "missing": True})
                continue
            c = locked_curves(log, points)
            keep = {k: c["series"][k] for k in ("loss", "loss_smooth", "eval_loss") if k in c["series"]}
            out.append({"id": run_id, "summary": summary(run_id), "steps": c["steps"], "series": keep,
                        "rounds": validation_rounds(run_dir, run_id)[:20]})
        return _clean({"runs": out})

    async def api_compare(request: Request) -> Response:
        ids = request.query_params.getlist("id")
        return JSONResponse(await run_in_threadpool(compare_json, ids, 800))

    async def api_jobs(request: Request) -> Response:
        return JSONResponse(_clean({"jobs": [j.describe() for j in jobs.all()]}))

    async def api_start(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("config"), str):
            return JSONResponse({"error": "send JSON: {\"config\": PATH, \"sets\": [KEY=VALUE, ...]}"}, 400)
        sets = body.get("sets") or []
        if not isinstance(sets, list) or not all(isinstance(s, str) for s in sets):
            return JSONResponse({"error": "sets must be a list of KEY=VALUE strings"}, 400)
        try:
            job = await run_in_threadpool(jobs.start, body["config"], sets)
        except JobError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse(job.describe())

    async def api_stop(request: Request) -> Response:
        job = jobs.stop(request.path_params["job"])
        if job is None:
            raise not_found("no such job")
        return JSONResponse(job.describe())

    async def run_file(request: Request) -> Response:
        path = folder.resolve(request.path_params["path"])
        if path is None or not path.is_file():
            raise not_found("no such file in this folder")
        return FileResponse(path, headers={"Cache-Control": "no-cache"})

    async def missing(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        detail = getattr(exc, "detail", None) or "not found"
        if request.url.path.startswith(("/api/", "/files/", "/static/")):
            return JSONResponse({"error": detail}, status)
        return _page("missing", {"folder": str(folder.root), "what": detail}, status)

    async def failed(request: Request, exc: Exception) -> Response:
        # Never a traceback on a page: name what failed; the server's console has the rest.
        what = f"the server could not answer {request.url.path}: {type(exc).__name__}"
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": what}, 500)
        return _page("missing", {"folder": str(folder.root), "what": what}, 500)

    app = Starlette(
        routes=[
            Route("/", runs_page),
            Route("/run", run_page),
            Route("/compare", compare_page),
            Route("/start", start_page),
            Route("/favicon.ico", lambda request: Response(status_code=204)),
            Route("/api/runs", api_runs),
            Route("/api/run", api_run),
            Route("/api/compare", api_compare),
            Route("/api/jobs", api_jobs),
            Route("/api/jobs", api_start, methods=["POST"]),
            Route("/api/jobs/{job}/stop", api_stop, methods=["POST"]),
            Route("/files/{path:path}", run_file),
            Mount("/static", StaticFiles(directory=STATIC)),
        ],
        exception_handlers={HTTPException: missing, Exception: failed},
    )
    app.state.jobs = jobs
    app.state.folder = folder
    return Guard(app, token=token, loopback_only=loopback_only)
