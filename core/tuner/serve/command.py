"""The ``tuner serve`` command (registered by `tuner.cli`).

Light to import: typer only; Starlette, uvicorn and numpy load when the command runs.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["serve", "check_serve_options", "ServeOptionError"]

_TOKEN = re.compile(r"[A-Za-z0-9._~-]{16,}")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ServeOptionError(ValueError):
    """A refused combination of options, with the one line that says how to fix it."""


def check_serve_options(folder: Path, host: str, token: str | None) -> None:
    if not folder.is_dir():
        raise ServeOptionError(f"FOLDER {folder} is not a folder: give an output_dir or a folder of runs")
    if host not in _LOOPBACK and not token:
        raise ServeOptionError(
            f"--host {host} shares the runs (and the Start page) with the network: give --token too,"
            " e.g. --token $(python3 -c 'import secrets; print(secrets.token_urlsafe())')"
        )
    if token is not None and not _TOKEN.fullmatch(token):
        raise ServeOptionError("--token must be at least 16 characters of A-Z a-z 0-9 . _ ~ - (it travels in a URL)")


def serve(
    folder: Annotated[Path, typer.Argument(help="An output_dir, or a folder holding several.")] = Path("."),
    host: Annotated[
        str, typer.Option(help="Address to listen on. Anything but 127.0.0.1/localhost needs --token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).", min=0, max=65535)] = 8765,
    token: Annotated[
        str | None, typer.Option(help="A secret every request must carry (?token=... once, then a cookie).")
    ] = None,
) -> None:
    """Watch, compare and start runs in a browser: a local web server over a folder of runs."""
    try:
        check_serve_options(folder, host, token)
    except ServeOptionError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    import uvicorn

    from tuner.serve.app import build_app

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)  # connections made as soon as the URL is printed wait for uvicorn instead of failing
    except OSError as exc:
        typer.echo(f"error: cannot listen on {host}:{port} ({exc.strerror}): pick another with --port", err=True)
        raise typer.Exit(code=2) from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}/" + (f"?token={token}" if token else "")
    app = build_app(folder, token=token, loopback_only=host in _LOOPBACK)
    typer.echo(f"serving {folder.resolve()} at {url}", err=False)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down cleanly, then hands Ctrl-C back: that is the normal way out
        pass
    finally:
        for job in app.app.state.jobs.all():
            if job.process.poll() is None:
                typer.echo(f"job {job.id} is still training (pid {job.process.pid}); stop it with: kill -INT -{job.process.pid}")
