"""Webhooks: tell a chat channel or any HTTP endpoint how the run goes.

A built-in lifecycle plugin with the ``[webhooks]`` section. ``webhook_config``
names a JSON file with one endpoint (an object) or several (a list)::

    {"webhook_type": "discord", "webhook_url": "https://discord.com/api/webhooks/...",
     "message_prefix": "wan-disney", "progress_interval": 100}

Events: run start, progress every ``progress_interval`` steps, each validation
round (with its contact sheet and videos when ``send_media``), the error that
stopped a run, and run end. Delivery happens in the background (see
`tuner.report.delivery`), so a slow or failing endpoint never holds a step up.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuner.errors import ConfigError
from tuner.hookspecs import hookimpl
from tuner.report.delivery import Delivery, Post
from tuner.report.secrets import Scrubber, run_scrubber

__all__ = ["WebhookTarget", "WebhooksSection", "Webhooks", "read_webhook_config"]

# Media bigger than this go by name only (Discord refuses large attachments).
MAX_MEDIA_BYTES = 8 * 1024 * 1024
_CONTENT_TYPES = {".png": "image/png", ".mp4": "video/mp4"}
# log_level: Python's order of severities; each event's.
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_EVENT_LEVELS = {"error": "error"}


class WebhookTarget(BaseModel):
    """One endpoint, as written in the ``webhook_config`` file."""

    model_config = ConfigDict(extra="forbid")

    webhook_type: Literal["discord", "raw"] = Field(
        "raw", description="discord: chat messages with attachments; raw: one JSON object per event."
    )
    webhook_url: str = Field(description="The endpoint. Never printed.")
    message_prefix: str = Field("", description="Put before every message, to tell runs apart.")
    auth_token: str | None = Field(None, description="Sent as 'Authorization: Bearer ...'. Never printed.")
    progress_interval: int = Field(100, ge=0, description="Post progress every N steps; 0 posts none.")
    send_media: bool = Field(True, description="Attach the contact sheet and videos of each validation round.")
    timeout: float = Field(5.0, gt=0, le=120, description="Seconds per request attempt.")
    retries: int = Field(2, ge=0, le=10, description="Further attempts after a failed one.")
    flush_timeout: float = Field(10.0, ge=0, le=600, description="Seconds the run's end waits for queued events.")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info",
        description="SimpleTuner's key: the least severe event sent. A failed or interrupted run's error event is"
        " 'error'; start, progress, validation and end are 'info'. warning, error or critical: only the error event.",
    )

    @model_validator(mode="before")
    @classmethod
    def _callback_url(cls, data: Any) -> Any:
        # The guide's raw endpoints call it callback_url.
        if isinstance(data, dict) and "callback_url" in data and "webhook_url" not in data:
            data = {**data, "webhook_url": data["callback_url"]}
            del data["callback_url"]
        return data

    @field_validator("webhook_url")
    @classmethod
    def _http(cls, value: str) -> str:
        # Messages here never quote the value: it is a secret.
        if not value.startswith(("http://", "https://")):
            raise ValueError("webhook_url must start with http:// or https://")
        if any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError("webhook_url contains a space or a control character: percent-encode it (a space is %20)")
        try:
            split = urllib.parse.urlsplit(value)
            host, _ = split.hostname, split.port
        except ValueError:
            raise ValueError("webhook_url has an invalid host or port after http(s)://") from None
        if not host:
            raise ValueError("webhook_url has no host name after http(s)://")
        return value


def read_webhook_config(path: Path) -> list[WebhookTarget]:
    """Parse and check a ``webhook_config`` file; messages never echo the URL or token."""
    from tuner.jsonfile import read_json

    data = read_json(path)
    items = data if isinstance(data, list) else [data]
    targets = []
    for n, item in enumerate(items, 1):
        try:
            targets.append(WebhookTarget.model_validate(item))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "entry"
            raise ValueError(f"{path}: webhook {n}, {where}: {err['msg']}") from None
    if not targets:
        raise ValueError(f"{path}: no webhook in the file")
    return targets


class WebhooksSection(BaseModel):
    """Where the run's events are posted."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    webhook_config: Path | None = Field(
        None,
        description="A JSON file describing one webhook (an object) or several (a list): webhook_type (discord or"
        " raw), webhook_url, message_prefix, auth_token, progress_interval, send_media, timeout, retries, log_level,"
        " flush_timeout. See docs/reporting.md.",
    )

    @field_validator("webhook_config")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and value.is_absolute():  # relative: checked once resolved against the config's folder
            read_webhook_config(value)
        return value


def _summary(logs: dict[str, float]) -> str:
    parts = [f"loss {logs['loss']:.4f}", f"lr {logs['lr']:.2e}", f"{logs['step_time']:.2f} s/it"]
    if "eval_loss" in logs:
        parts.append(f"eval loss {logs['eval_loss']:.4f}")
    return ", ".join(parts)


class _Endpoint:
    """One target: how its events are worded and packed."""

    def __init__(self, target: WebhookTarget, index: int, scrub: Scrubber) -> None:
        self.target = target
        self.scrub = scrub
        headers = {"Authorization": f"Bearer {target.auth_token}"} if target.auth_token else {}
        self.delivery = Delivery(
            target.webhook_url,
            f"webhook {index} ({target.webhook_type})",
            headers=headers,
            timeout=target.timeout,
            retries=target.retries,
        )

    def send(self, event: str, message: str, data: dict[str, Any], media: Sequence[Path] = ()) -> None:
        t = self.target
        if _LEVELS[_EVENT_LEVELS.get(event, "info")] < _LEVELS[t.log_level]:
            return
        text = self.scrub(f"{t.message_prefix} {message}".strip())
        files = [p for p in media if p.is_file()] if t.send_media else []
        if t.webhook_type == "discord":
            attach = [p for p in files if p.stat().st_size <= MAX_MEDIA_BYTES][:10]
            payload = {"content": text[:2000]}
            if not attach:
                self.delivery.post(Post(json_body=payload))
                return
            parts = [(f"files[{i}]", p, _CONTENT_TYPES.get(p.suffix, "application/octet-stream")) for i, p in enumerate(attach)]
            self.delivery.post(Post(fields={"payload_json": json.dumps(payload)}, files=parts))
            return
        body: dict[str, Any] = {"event": event, "message": text, **data}
        if files:
            body["media"] = [
                {
                    "name": p.name,
                    "content_type": _CONTENT_TYPES.get(p.suffix, "application/octet-stream"),
                    **({"base64": base64.b64encode(p.read_bytes()).decode()} if p.stat().st_size <= MAX_MEDIA_BYTES else {}),
                }
                for p in files
            ]
        self.delivery.post(Post(json_body=body))


class Webhooks:
    """Posts the run's events to every endpoint of ``webhook_config``."""

    def __init__(self) -> None:
        self.endpoints: list[_Endpoint] = []
        self.scrub = Scrubber()
        self.started = 0.0
        self.step_times: list[float] = []

    @hookimpl
    def register_config_sections(self, register: Any) -> None:
        register("webhooks", WebhooksSection)

    def _all(self, event: str, message: str, data: dict[str, Any], media: Sequence[Path] = ()) -> None:
        for endpoint in self.endpoints:
            endpoint.send(event, message, data, media)

    @hookimpl
    def on_run_start(self, run: Any) -> None:
        path = run.config.section("webhooks").webhook_config
        try:
            targets = read_webhook_config(path) if path else []
        except ValueError as exc:  # checked at config load; changed since
            raise ConfigError(f"webhook_config: {exc}") from None
        self.scrub = run_scrubber(run.config)  # no endpoint is told another's URL, nor any token
        self.endpoints = [_Endpoint(t, i, self.scrub) for i, t in enumerate(targets, 1)]
        self.started = time.monotonic()
        self.step_times = []
        what = "resumed" if run.start_step else "started"
        self._all(
            "start",
            f"Training {what}: {run.family}, step {run.start_step} of {run.max_train_steps}.",
            {"family": run.family, "start_step": run.start_step, "max_train_steps": run.max_train_steps},
        )

    @hookimpl
    def on_step_end(self, run: Any, step: int, logs: dict[str, float]) -> None:
        if not self.endpoints:
            return
        self.step_times = (self.step_times + [logs["step_time"]])[-50:]
        due = [e for e in self.endpoints if e.target.progress_interval and step % e.target.progress_interval == 0]
        if not due:
            return
        eta = (run.max_train_steps - step) * sum(self.step_times) / len(self.step_times)
        message = f"Step {step} of {run.max_train_steps}: {_summary(logs)}, about {eta / 60:.1f} min left."
        data = {"step": step, "max_train_steps": run.max_train_steps, "eta_seconds": round(eta, 1), "logs": logs}
        for endpoint in due:
            endpoint.send("progress", message, data)

    @hookimpl
    def on_validation_done(self, run: Any, result: Any) -> None:
        media = ([result.contact_sheet] if result.contact_sheet else []) + list(result.media.values())
        self._all(
            "validation",
            f"Validation at step {result.step}: {len(result.media)} file(s).",
            {"step": result.step, "files": {k: str(v) for k, v in result.media.items()}},
            [Path(p) for p in media],
        )

    @hookimpl
    def on_validation_preview(self, run: Any, step: int, key: str, sampler_step: int, path: Path) -> None:
        # Sent as the sampler makes it (the guide streams previews): posting only queues it for the
        # delivery thread, so sampling does not wait on the network.
        if not self.endpoints:
            return
        self._all(
            "validation_preview",
            f"Validation preview at step {step}: {key}, sampler step {sampler_step}.",
            {"step": step, "key": key, "sampler_step": sampler_step},
            [path],
        )

    @hookimpl
    def on_run_end(self, run: Any, outputs: dict[str, Path], error: BaseException | None) -> None:
        if not self.endpoints:
            return
        elapsed = time.monotonic() - self.started
        data: dict[str, Any] = {"outputs": {k: str(v) for k, v in outputs.items()}, "seconds": round(elapsed, 1)}
        if error is not None:
            kind = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
            reason = self.scrub(f"{type(error).__name__}: {str(error)[:500]}")
            self._all("error", f"Training {kind}: {reason}", {"error": reason})
            self._all("end", f"Training stopped after {elapsed / 60:.1f} min.", {**data, "error": reason})
        else:
            self._all("end", f"Training finished after {elapsed / 60:.1f} min.", {**data, "error": None})
        # Every endpoint gets its own flush_timeout, all at once: the run ends within the longest.
        for endpoint in self.endpoints:
            endpoint.delivery.stop(endpoint.target.flush_timeout)
        for endpoint in self.endpoints:
            endpoint.delivery.join()
        self.endpoints = []
