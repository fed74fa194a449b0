"""`tuner serve` in a real headless browser (Debian's chromium driven by Playwright), over real training runs.

A run trains in the background while its page is open: the step counter and the
loss chart move, a validation clip appears and plays. The Start page launches a
second real run and its Stop button ends it the Ctrl-C way (a checkpoint of the
last step, state 'stopped'); the Compare page shows both. Screenshots of every
page go to the test's temporary folder (and to $TUNER_SERVE_SCREENSHOTS when set).

Without chromium or Playwright the test skips with the reason, except under CI
(``CI`` set), where .ci/run installs both and a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from serve_helpers import serving

TIMEOUT_MS = 120_000  # a loaded machine starts a training process slowly; an idle one needs a fraction


def _browser_or_reason() -> tuple[str | None, str]:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return None, "the playwright package is not installed (pip install -e '.[test]')"
    for name in (os.environ.get("TUNER_CHROMIUM", ""), "chromium", "chromium-browser"):
        path = shutil.which(name) if name else None
        if path:
            return path, ""
    return None, "no chromium executable (Debian: apt-get install chromium; scripts/setup.sh does it as root)"


@pytest.fixture(scope="module")
def page():
    executable, reason = _browser_or_reason()
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        yield page
        browser.close()
        assert not errors, errors


def _shoot(page, folder: Path, name: str) -> None:
    folder.mkdir(exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
    extra = os.environ.get("TUNER_SERVE_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / f"{name}.png", Path(extra) / f"{name}.png")


def _overrides(out: Path) -> list[str]:
    # Long enough to watch, validating often with a 2-step sampler; no checkpoint but the one Stop writes.
    return [f"train.output_dir={out}", "train.checkpoint_step_interval=100000", "validation.validation_step_interval=20",
            "validation.validation_num_inference_steps=2"]


def _step(page) -> int:
    return int(page.locator("#step").inner_text())


def test_watch_start_stop_and_compare_runs(page, make_run, tmp_path, monkeypatch):
    # Two trainings share the machine with the browser: one thread each (the started run inherits this too).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runs, shots = tmp_path / "runs", tmp_path / "screenshots"
    runs.mkdir()
    config = make_run(steps=5000)
    log = (tmp_path / "a.log").open("wb")
    watched = subprocess.Popen(
        [sys.executable, "-m", "tuner", "train", "--config", str(config), *[f"--set={s}" for s in _overrides(runs / "watched")]],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        with serving(runs) as (address, _):
            base = f"http://{address}"
            # Start: a second real run from its config file, launched at once so both start up side by side.
            page.goto(base + "/start")
            page.fill("input[name=config]", str(config))
            page.fill("textarea[name=sets]", "\n".join(_overrides(runs / "started")))
            page.click("#start-form button[type=submit]")
            page.wait_for_url("**/run?id=started")

            # Runs: the background run shows up while it trains.
            page.goto(base + "/")
            page.wait_for_selector('tr[data-run="watched"] .badge.running')
            page.wait_for_function("!document.querySelector('tr[data-run=\"watched\"] td.step').textContent.startsWith('0 ')")
            _shoot(page, shots, "runs")

            # A run: the step counter and the loss chart move; a validation clip appears and plays.
            page.click('a[href="/run?id=watched"]')
            page.wait_for_function("Number(document.querySelector('#step')?.textContent) > 0")
            first, points = _step(page), int(page.get_attribute('[data-chart="loss"]', "data-points"))
            page.wait_for_function(f"Number(document.querySelector('#step').textContent) > {first}")
            page.wait_for_function(f"Number(document.querySelector('[data-chart=\"loss\"]').dataset.points) > {points}")
            page.wait_for_selector("#rounds video")
            page.eval_on_selector("#rounds video", "v => v.play()")
            page.wait_for_function("(() => { const v = document.querySelector('#rounds video');"
                                   " return v.readyState >= 2 && !v.error && v.currentTime > 0.2; })()")
            assert page.locator('[data-chart="sigma"] rect').count() == 20
            _shoot(page, shots, "run")

            # Stop the started run (SIGINT, as Ctrl-C: it saves its last step) once a validation round landed.
            page.goto(base + "/run?id=started")
            page.wait_for_function("Number(document.querySelector('#step')?.textContent) >= 21")
            page.click("button.stop")
            page.wait_for_selector(".runhead .badge.stopped")
            stopped_at = _step(page)
            page.wait_for_selector(f"text=checkpoint-{stopped_at}")
            assert (runs / "started" / f"checkpoint-{stopped_at}" / "manifest.json").is_file()
            assert "stopped by SIGINT" in page.locator(".runhead .error").inner_text()
            _shoot(page, shots, "run-stopped")
            page.goto(base + "/start")
            page.wait_for_selector("#jobs td >> text=stopped (exit")
            _shoot(page, shots, "start")

            # Compare: both runs' curves on one chart and their clips for the same prompt side by side.
            page.goto(base + "/compare?id=watched&id=started")
            page.wait_for_selector('.compare-col[data-run="watched"] video')
            page.wait_for_selector('.compare-col[data-run="started"] video')
            legend = page.locator('[data-chart="loss (smoothed)"] .u-legend').inner_text()
            assert "watched" in legend and "started" in legend
            _shoot(page, shots, "compare")
    except Exception:
        # Say where it stood: the page as it was, and what both trainings printed.
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        for printed in [tmp_path / "a.log", *sorted((runs / ".tuner-serve").glob("*.log"))]:
            print(f"--- {printed}\n{printed.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        if watched.poll() is None:
            os.killpg(watched.pid, signal.SIGINT)
        watched.wait(60)
        log.close()
    assert all((shots / f"{n}.png").stat().st_size > 5000 for n in ["runs", "run", "start", "run-stopped", "compare"])
