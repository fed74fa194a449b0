"""No secret printed: webhook URLs and tokens never reach the console, a log, a tracker or the model card."""

from __future__ import annotations

import json
import logging

import pytest
from reliability_setup import toy_runs

from tuner.config import resolve_config
from tuner.errors import ConfigError
from tuner.plugins import PluginHost
from tuner.report.delivery import Delivery, Post
from tuner.report.secrets import Scrubber
from tuner.testing.toy import ToyFamily, toy_config
from tuner.train.run import train


SECRET = "s3cr3t-T0ken-xyz"


@pytest.fixture
def toy(tmp_path):
    """``toy(name, family=None, validation=False, **train_options)`` trains the toy family into ``tmp_path/name``."""
    return toy_runs(tmp_path)


def test_a_webhook_url_urllib_rejects_is_never_printed(caplog):
    """urllib quotes only the URL's path when it refuses it: that rendering is a secret too."""
    urls = [f"http://127.0.0.1:9/api/webhooks/123/{SECRET} x", f"http://127.0.0.1:9/hook/{SECRET}\n",
            f"http://127.0.0.1:{SECRET}/x", f"http://user:{SECRET}@127.0.0.1:9/x"]
    for url in urls:
        delivery = Delivery(url, "webhook 1 (raw)", headers={"Authorization": f"Bearer {SECRET}"}, timeout=1, retries=0)
        with caplog.at_level(logging.WARNING):
            delivery.post(Post(json_body={"event": "start"}))
            delivery.stop(5)
            delivery.join()
    assert caplog.text.count("an event could not be delivered") == len(urls)
    assert "InvalidURL" in caplog.text, "urllib did refuse them"
    assert SECRET not in caplog.text and "s3cr3t" not in caplog.text


def test_the_scrubber_knows_every_rendering_of_a_url():
    url = f"https://discord.com/api/webhooks/123/{SECRET}?wait=true&key=k3y-{SECRET}"
    scrub = Scrubber([url], [f"Bearer tok-{SECRET}"])
    for text in (url, url.replace("/", "%2F"), repr(url), json.dumps(repr(url)), f"/api/webhooks/123/{SECRET}",
                 f"key=k3y-{SECRET}", f"tok-{SECRET}", f"'discord.com' said no to {SECRET}"):
        assert "s3cr3t" not in scrub(text), text
    assert scrub("step 4 of 10: loss 0.5") == "step 4 of 10: loss 0.5"


def test_webhook_urls_with_spaces_are_refused_without_echoing_them(tmp_path):
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    for url in (f"https://discord.com/api/webhooks/1/{SECRET} ", f"https://discord.com/{SECRET}\t/x",
                f"https://discord.com:{SECRET}/x"):
        (tmp_path / "w.json").write_text(json.dumps({"webhook_url": url}))
        with pytest.raises(ConfigError) as err:
            resolve_config({"webhook_config": "w.json"}, host, base_dir=tmp_path)
        assert "webhook_url" in str(err.value) and SECRET not in str(err.value)


def test_no_secret_reaches_a_log_tracker_or_model_card(toy, monkeypatch, caplog, capsys):
    """The token set as a prompt (careless, but possible) is masked in every file the run writes."""
    pytest.importorskip("tensorboard")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    (toy.folder / "webhook.json").write_text(json.dumps(
        {"webhook_url": f"http://127.0.0.1:9/hook/{SECRET}", "auth_token": f"tok-{SECRET}", "retries": 0, "timeout": 1}
    ))
    host = PluginHost.build([], extra={"toy": ToyFamily()})
    cfg = toy_config(toy.folder, max_train_steps=2)
    cfg["validation"]["validation_prompt"] = f"a toy posted to http://127.0.0.1:9/hook/{SECRET}"
    cfg.update({"webhook_config": "webhook.json", "report_to": "tensorboard", "tracker_run_name": "r"})
    with caplog.at_level(logging.DEBUG):
        train(resolve_config(cfg, host, base_dir=toy.folder), host)
    out = toy.folder / "out"
    assert (out / "README.md").is_file() and list((out / "logs").rglob("events.out.tfevents.*"))
    assert "a toy posted to ***" in (out / "README.md").read_text()
    written = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file() and p.suffix not in (".safetensors",))
    seen = caplog.text + "".join(capsys.readouterr())
    assert b"s3cr3t" not in written and "s3cr3t" not in seen
