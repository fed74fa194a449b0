"""Reporting: trackers, webhooks, the model card and Hub push, log modes. Real local servers, no network."""

from __future__ import annotations

import base64
import gzip
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tuner import hookimpl
from tuner.config import resolve_config
from tuner.data.synthetic import write_synthetic_clips
from tuner.errors import ConfigError, PluginError
from tuner.outputs import LOG_NAME
from tuner.plugins import PluginHost
from tuner.report.webhooks import Webhooks
from tuner.testing.toy import ToyFamily, toy_config
from tuner.train.run import train
from tuner.types.training import RunInfo

SECRET = "s3cr3t-token-xyz"


class Recorder(ThreadingHTTPServer):
    """A loopback HTTP server that records what it is sent; ``mode`` says how it answers."""

    daemon_threads = True

    def __init__(self, mode: str = "ok") -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = mode
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()  # lets hanging handlers go at teardown

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class _Handler(BaseHTTPRequestHandler):
    server: Recorder

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, code: int, obj: Any) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding") == "gzip":
            data = gzip.decompress(data)
        self.server.requests.append({"path": self.path, "headers": dict(self.headers), "body": data})
        if self.server.mode == "hang":
            self.server.release.wait(5)  # bounded: the server stops by itself
            return
        if self.server.mode == "fail":
            return self._reply(500, {"error": "down"})
        if self.server.mode == "hub":
            return self._hub(data)
        self._reply(200, {"ok": True})

    def _hub(self, data: bytes) -> None:
        """Just enough of the Hub's API for huggingface_hub's create_repo and upload_folder."""
        base = self.server.url
        if self.path == "/api/repos/create":
            d = json.loads(data)
            return self._reply(200, {"url": f"{base}/{d['organization']}/{d['name']}"})
        if self.path == "/api/validate-yaml":
            return self._reply(200, {"errors": [], "warnings": []})
        if "/preupload/" in self.path:
            files = json.loads(data)["files"]
            return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        if "/commit/" in self.path:
            repo = self.path.split("/api/models/")[1].split("/commit/")[0]
            return self._reply(200, {"commitUrl": f"{base}/{repo}/commit/0", "commitOid": "0" * 40})
        self._reply(404, {"error": "unknown"})


@contextmanager
def serving(mode: str = "ok") -> Iterator[Recorder]:
    server = Recorder(mode)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def clips(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    write_synthetic_clips(tmp_path / "clips", count=2, num_frames=3, width=16, height=16)
    return tmp_path


def _run(folder: Path, top: dict[str, Any] | None = None, **train_opts: Any) -> tuple[dict[str, Path], Any]:
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    raw = toy_config(folder, **train_opts)
    raw["validation"].update({"validation_num_video_frames": 1, "validation_step_interval": 2})
    raw.update(top or {})
    config = resolve_config(raw, host, base_dir=folder)
    return train(config, host), config


def _webhook(folder: Path, **target: Any) -> str:
    (folder / "webhook.json").write_text(json.dumps(target))
    return "webhook.json"


# -- trackers ---------------------------------------------------------------


def test_tensorboard_event_files_hold_the_scalars_and_the_contact_sheet(clips):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _run(clips, {"report_to": "tensorboard", "tracker_run_name": "first", "eval_steps_interval": 2,
                 "eval_split": 0.5, "tracker_project_name": "proj"}, max_train_steps=4)
    logs = clips / "out" / "logs" / "proj" / "first"
    events = EventAccumulator(str(logs), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "train/grad_norm", "train/s_per_it", "eval/loss"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in events.Scalars("eval/loss")] == [2, 4]
    assert [e.step for e in events.Images("validation/contact_sheet")] == [2, 4]
    assert [e.step for e in events.Images("validation/main")] == [2, 4], "each validation picture, not only the sheet"


def test_validation_videos_reach_tensorboard_as_animated_gifs(tmp_path):
    pytest.importorskip("tensorboard")
    import io

    import numpy as np
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from tuner.report.trackers import gif_summary

    frames = np.stack([np.full((8, 12, 3), 30 * i, np.uint8) for i in range(5)])
    writer = SummaryWriter(str(tmp_path))
    writer._get_file_writer().add_summary(gif_summary("validation/main", frames), 3)
    writer.close()
    [event] = EventAccumulator(str(tmp_path), size_guidance={"images": 0}).Reload().Images("validation/main")
    with Image.open(io.BytesIO(event.encoded_image_string)) as gif:
        assert (event.step, gif.format, gif.n_frames, gif.size) == (3, "GIF", 5, (12, 8))


def test_wandb_logs_offline_with_no_network(clips, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _run(clips, {"report_to": ["tensorboard", "wandb"], "tracker_run_name": "offline"}, max_train_steps=2)
    runs = list((clips / "out" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert (clips / "out" / "logs").is_dir(), "both trackers at once"


def test_report_to_is_checked_when_the_config_loads(monkeypatch):
    import importlib.util

    host = PluginHost.build([], extra={"toy": ToyFamily()})
    with pytest.raises(ConfigError, match="unknown tracker 'comet'"):
        resolve_config({"report_to": "tensorboard,comet"}, host)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="needs the 'wandb' package: pip install wandb"):
        resolve_config({"report_to": "wandb"}, host)


# -- webhooks ---------------------------------------------------------------


def test_webhook_server_receives_the_events_in_order(clips, caplog):
    with serving() as server:
        config = _webhook(clips, webhook_url=f"{server.url}/hook?token={SECRET}", auth_token=SECRET,
                          message_prefix="toyrun", progress_interval=2, timeout=2)
        _run(clips, {"webhook_config": config}, max_train_steps=4)
    bodies = [json.loads(r["body"]) for r in server.requests]
    assert [b["event"] for b in bodies] == ["start", "progress", "validation", "progress", "validation", "end"]
    assert [b.get("step") for b in bodies[1:5]] == [2, 2, 4, 4]
    assert bodies[0]["message"].startswith("toyrun Training started")
    assert "loss" in bodies[1]["logs"] and bodies[1]["eta_seconds"] >= 0
    media = {m["name"]: m for m in bodies[2]["media"]}
    assert base64.b64decode(media["contact-sheet.png"]["base64"]).startswith(b"\x89PNG")
    assert "main.png" in media and bodies[-1]["error"] is None
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"


def test_discord_webhooks_attach_the_media(clips):
    with serving() as server:
        config = _webhook(clips, webhook_type="discord", webhook_url=server.url, progress_interval=0)
        _run(clips, {"webhook_config": config}, max_train_steps=2)
    kinds = [r["headers"]["Content-Type"].split(";")[0] for r in server.requests]
    assert kinds == ["application/json", "multipart/form-data", "application/json"]
    assert json.loads(server.requests[0]["body"])["content"].startswith("Training started")
    form = server.requests[1]["body"]
    assert b'name="payload_json"' in form and b'filename="contact-sheet.png"' in form and b'filename="main.png"' in form


def test_errors_are_posted_and_urls_and_tokens_never_logged(clips, caplog, capsys):
    class Exploding(ToyFamily):
        @hookimpl
        def compute_loss(self, bundle, batch, generator, config):  # type: ignore[override]
            raise RuntimeError("boom")

    with serving() as ok, serving("fail") as failing:
        (clips / "webhook.json").write_text(json.dumps([
            {"webhook_url": f"{ok.url}/a?key={SECRET}", "progress_interval": 1},
            {"webhook_url": f"{failing.url}/b?key={SECRET}", "auth_token": SECRET, "retries": 1, "timeout": 1},
        ]))
        host = PluginHost.build([], extra={"toy": Exploding()})
        raw = {**toy_config(clips, max_train_steps=2), "webhook_config": "webhook.json"}
        with caplog.at_level(logging.DEBUG), pytest.raises(RuntimeError, match="boom"):
            train(resolve_config(raw, host, base_dir=clips), host)
    assert [json.loads(r["body"])["event"] for r in ok.requests] == ["start", "error", "end"]
    assert "RuntimeError: boom" in json.loads(ok.requests[1]["body"])["message"]
    assert len(failing.requests) == 3 * 2, "three events, each tried twice"
    seen = caplog.text + "".join(capsys.readouterr()) + (clips / "out" / LOG_NAME).read_text()
    assert "could not be delivered" in caplog.text
    assert SECRET not in seen and ok.url not in seen and failing.url not in seen


def test_a_hanging_endpoint_does_not_hold_steps_up(clips):
    with serving("hang") as server:
        config = _webhook(clips, webhook_url=server.url, progress_interval=1, timeout=0.3, retries=1, flush_timeout=1)
        host = PluginHost.build([], extra={"toy": ToyFamily()})
        run_config = resolve_config({**toy_config(clips), "webhook_config": config}, host, base_dir=clips)
        hooks = Webhooks()
        run = RunInfo(clips / "out", 1000, 0, "toy", run_config)
        hooks.on_run_start(run)
        logs = {"loss": 0.5, "lr": 1e-4, "step_time": 0.1}
        started = time.perf_counter()
        for step in range(1, 301):  # more events than the queue holds: the surplus is dropped, not waited for
            hooks.on_step_end(run, step, logs)
        per_step = (time.perf_counter() - started) / 300
        started = time.perf_counter()
        hooks.on_run_end(run, {}, None)
        closing = time.perf_counter() - started
    assert per_step < 0.005, f"a step waited {per_step:.4f}s on the webhook"
    assert closing < 1 + 0.5, f"the run's end waited {closing:.1f}s, more than flush_timeout"
    assert server.requests, "the endpoint was tried"


def test_webhook_config_is_checked_when_the_config_loads(tmp_path):
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    (tmp_path / "w.json").write_text(json.dumps({"webhook_url": f"ftp://host/{SECRET}"}))
    with pytest.raises(ConfigError, match="must start with http") as err:
        resolve_config({"webhook_config": "w.json"}, host, base_dir=tmp_path)
    assert SECRET not in str(err.value)
    (tmp_path / "w.json").write_text(json.dumps({"callback_url": "https://example.invalid/x", "webhook_type": "raw"}))
    resolve_config({"webhook_config": "w.json"}, host, base_dir=tmp_path)  # the guide's raw form


# -- model card and Hub -----------------------------------------------------


def test_model_card_is_written_without_pushing(clips):
    outputs, _ = _run(clips, max_train_steps=2)
    card = (clips / "out" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusers")
    assert "## Prompts" in card and "a toy" in card
    assert "![contact sheet](validation/step-2/contact-sheet.png)" in card
    assert "| `train.learning_rate` | 0.02 |" in card and "| `train.max_train_steps` | 2 |" in card
    assert "output_dir" not in card, "local paths stay out of the card"
    assert 'weight_name="pytorch_lora_weights.safetensors"' in card


def test_push_to_hub_uploads_through_hf_endpoint(clips, monkeypatch):
    with serving("hub") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
        _run(clips, {"push_to_hub": True, "hub_model_id": "someone/toy-lora", "push_checkpoints_to_hub": True},
             max_train_steps=2, checkpoint_step_interval=1)
    paths = [r["path"] for r in hub.requests]
    assert paths[0] == "/api/repos/create"
    commits = [r for r in hub.requests if "/commit/" in r["path"]]
    files = [[json.loads(line)["value"]["path"] for line in c["body"].splitlines()[1:]] for c in commits]
    assert files[:2] == [["checkpoint-1/pytorch_lora_weights.safetensors"],
                         ["checkpoint-2/pytorch_lora_weights.safetensors"]]
    assert sorted(files[-1]) == ["README.md", "pytorch_lora_weights.safetensors", "validation/step-2/contact-sheet.png",
                                 "validation/step-2/main.png"]
    card = json.loads(commits[-1]["body"].splitlines()[1])
    assert "# someone/toy-lora" in base64.b64decode(card["value"]["content"]).decode()


def test_push_to_hub_fails_at_start_when_the_hub_refuses(clips, monkeypatch):
    with serving("fail") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
        monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")
        with pytest.raises(PluginError, match="push_to_hub: cannot create or reach 'someone/toy-lora'"):
            _run(clips, {"push_to_hub": True, "hub_model_id": "someone/toy-lora"}, max_train_steps=1)
    with pytest.raises(ConfigError, match="push_to_hub needs hub_model_id"):
        resolve_config({"push_to_hub": True}, PluginHost.build([], extra={"toy": ToyFamily()}))


# -- console modes ----------------------------------------------------------


def test_json_log_mode_prints_the_events_as_json_lines(clips, capsys):
    _run(clips, {"log_format": "json"}, max_train_steps=2)
    out, err = capsys.readouterr()
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["event"] for e in events] == ["start", "step", "step", "checkpoint", "validation", "end"]
    assert "step 2/2" not in err and "encoding" not in err, "no progress lines"
    # The start record describes the run (tuner serve shows it for runs copied from elsewhere).
    assert events[0]["family"] == "toy" and events[0]["config"]["train"]["max_train_steps"] == 2


def test_quiet_log_mode_prints_no_progress(clips, capsys):
    _run(clips, {"log_format": "quiet"}, max_train_steps=2)
    out, err = capsys.readouterr()
    assert out == "" and "step" not in err and "encoding" not in err


def test_webhook_log_level_error_sends_only_a_failed_runs_error(clips):
    with serving() as server:
        config = _webhook(clips, webhook_url=server.url, progress_interval=1, log_level="error")
        _run(clips, {"webhook_config": config}, max_train_steps=2)
    assert server.requests == [], "a run that finished has no error event"
    with serving() as server:
        config = _webhook(clips, webhook_url=server.url, log_level="info")
        _run(clips, {"webhook_config": config}, max_train_steps=1, output_dir=str(clips / "out-info"))
    assert [json.loads(r["body"])["event"] for r in server.requests][0] == "start"


def test_webhook_receives_each_validation_preview_while_the_sampler_runs(clips):
    """validation_preview with a webhook: each preview is posted as made, scrubbed, before the round's event."""
    from test_previews import PreviewToy

    family = PreviewToy(streams=True)
    with serving() as server:
        config = _webhook(clips, webhook_url=f"{server.url}/hook?token={SECRET}", auth_token=SECRET, progress_interval=0)
        host = PluginHost.build([], extra={"toy": family})
        raw = toy_config(clips, max_train_steps=1)
        raw["validation"].update(validation_num_video_frames=1, validation_preview=True, validation_preview_steps=2,
                                 validation_prompt=f"a toy {SECRET}")
        raw["webhook_config"] = config
        train(resolve_config(raw, host, base_dir=clips), host)
    bodies = [json.loads(r["body"]) for r in server.requests]
    assert [b["event"] for b in bodies] == ["start", "validation_preview", "validation_preview", "validation", "end"]
    previews = bodies[1:3]
    assert [(b["step"], b["key"], b["sampler_step"]) for b in previews] == [(1, "main", 2), (1, "main", 4)]
    assert [b["media"][0]["name"] for b in previews] == ["main-step-2.png", "main-step-4.png"]
    assert base64.b64decode(previews[0]["media"][0]["base64"]).startswith(b"\x89PNG")
    assert previews[0]["message"] == "Validation preview at step 1: main, sampler step 2."
    assert all(SECRET not in r["body"].decode() for r in server.requests), "the token is scrubbed everywhere"
