"""`tuner serve` over plain HTTP: run states, live logs, downsampling, bad input and what is never served."""

from __future__ import annotations

import json
import os
import shutil

from serve_helpers import get_json, request, start, steps, write_log

from tuner.testing.runs import run_cli

TOKEN = "s3cret-token-for-tests"


def _run(address: str, run_id: str, **params: str) -> dict:
    query = "&".join(f"{k}={v}" for k, v in {"id": run_id, **params}.items())
    return get_json(address, f"/api/run?{query}")


def test_an_empty_folder_says_so(tmp_path, served):
    address, _ = served(tmp_path)
    assert get_json(address, "/api/runs")["total"] == 0
    status, headers, body = request(address, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    status, _, body = request(address, "/run?id=nothing")
    assert status == 404 and b"no run 'nothing'" in body and b"Traceback" not in body


def test_states_come_from_what_each_run_wrote(tmp_path, served):
    now = [start(100)]
    write_log(tmp_path / "done", [*now, *steps(3), {"event": "end", "time": 2000.0, "error": None, "outputs": {}}])
    write_log(tmp_path / "stopped", [*now, *steps(3), {"event": "end", "error": "KeyboardInterrupt()", "outputs": {}}])
    write_log(tmp_path / "failed", [*now, *steps(3), {"event": "end", "error": "RuntimeError('boom')", "outputs": {}}])
    write_log(tmp_path / "group" / "live", [*now, *steps(10)])
    old = write_log(tmp_path / "killed", [*now, *steps(3)])
    os.utime(old, (1000.0, 1000.0))  # nothing written for ages and no end record: killed, or copied mid-run
    address, _ = served(tmp_path)
    runs = {r["id"]: r for r in get_json(address, "/api/runs")["runs"]}
    assert {k: r["state"] for k, r in runs.items()} == {
        "done": "finished", "stopped": "stopped", "failed": "failed", "group/live": "running", "killed": "interrupted",
    }
    live = runs["group/live"]
    assert (live["step"], live["total"], live["last_loss"]) == (10, 100, 0.1)
    assert live["eta_s"] == 45.0  # 90 steps left at 0.5 s
    assert runs["failed"]["error"] == "RuntimeError('boom')" and runs["done"]["ended"] == 2000.0


def test_a_half_written_line_waits_for_its_end(tmp_path, served):
    record = json.dumps(steps(1, start=6)[0])
    log = write_log(tmp_path / "run", [start(10), *steps(5)], tail=record[:20])
    address, _ = served(tmp_path)
    assert _run(address, "run")["curves"]["steps"] == [1, 2, 3, 4, 5]
    with log.open("a") as f:
        f.write(record[20:] + "\n" + "not json\n")
    data = _run(address, "run")
    assert data["curves"]["steps"] == [1, 2, 3, 4, 5, 6]
    assert data["summary"]["bad_lines"] == 1


def test_a_resumed_run_tells_its_repeated_steps_once(tmp_path, served):
    write_log(tmp_path / "run", [start(8), *steps(7), start(8, start_step=4), *steps(4, start=5, loss=lambda s: 9.0)])
    address, _ = served(tmp_path)
    c = _run(address, "run")["curves"]
    assert c["steps"] == list(range(1, 9)) and c["series"]["loss"][4:] == [9.0] * 4


def test_a_run_deleted_while_shown_is_a_clear_404(tmp_path, served):
    write_log(tmp_path / "run", [start(10), *steps(5)])
    address, _ = served(tmp_path)
    assert _run(address, "run")["summary"]["step"] == 5
    shutil.rmtree(tmp_path / "run")
    status, _, body = request(address, "/api/run?id=run")
    assert status == 404 and "deleted" in json.loads(body)["error"]
    status, _, body = request(address, "/run?id=run")
    assert status == 404 and b"Traceback" not in body
    assert get_json(address, "/api/runs")["runs"] == []


def test_ten_thousand_runs_come_a_page_at_a_time(tmp_path, served):
    for i in range(10_000):
        write_log(tmp_path / f"sweep/r{i:05d}", [start(2), *steps(1)])
    address, _ = served(tmp_path)
    first = get_json(address, "/api/runs")
    assert (first["total"], first["pages"], len(first["runs"])) == (10_000, 100, 100)
    last = get_json(address, "/api/runs?page=100")
    assert len(last["runs"]) == 100 and last["page"] == 100
    assert sorted(r["id"] for r in get_json(address, "/api/runs?q=r0999")["runs"]) == [f"sweep/r0999{i}" for i in range(10)]


def test_a_long_run_is_downsampled_and_keeps_its_spike(tmp_path, served):
    records = steps(100_000, loss=lambda s: 50.0 if s == 54_321 else 1.0)
    write_log(tmp_path / "big", [start(100_000), *records])
    address, _ = served(tmp_path)
    data = _run(address, "big")
    c = data["curves"]
    assert c["records"] == 100_000 and len(c["steps"]) <= 1500 and c["steps"][-1] == 100_000
    assert max(c["series"]["loss_max"]) == 50.0 and max(c["series"]["loss_smooth"]) < 50.0
    assert sum(c["sigma_hist"]["counts"]) == 100_000
    assert _run(address, "big", v=data["version"]) == {"unchanged": True, "version": data["version"]}


def test_nothing_outside_the_folder_is_served(tmp_path, served):
    root, secret = tmp_path / "root", tmp_path / "secret.txt"
    secret.write_text("do not serve")
    write_log(root / "run", [start(2), *steps(1)])
    outside = tmp_path / "elsewhere"
    write_log(outside, [start(2), *steps(1)])
    (root / "run" / "leak.mp4").symlink_to(secret)
    (root / "linked-run").symlink_to(outside, target_is_directory=True)
    (root / "run" / "up").symlink_to(tmp_path, target_is_directory=True)
    address, _ = served(root)
    for path in [
        "/files/../secret.txt", "/files/%2e%2e/secret.txt", "/files/..%2fsecret.txt", "/files/run/..%2f..%2fsecret.txt",
        "/files/run/leak.mp4", "/files/run/up/secret.txt", "/files/linked-run/train_log.jsonl", "/files//etc/passwd",
        "/files/%2fetc%2fpasswd", "/api/run?id=../elsewhere", "/api/run?id=linked-run", "/run?id=..", "/static/../app.py",
    ]:
        status, _, body = request(address, path)
        assert status == 404, path
        assert b"do not serve" not in body and b"root:" not in body and b"Traceback" not in body, path
    assert [r["id"] for r in get_json(address, "/api/runs")["runs"]] == ["run"]  # the linked run is not listed


def test_video_is_served_with_ranges(tmp_path, served):
    write_log(tmp_path / "run", [start(2)])
    clip = tmp_path / "run" / "validation" / "step-1" / "main.mp4"
    clip.parent.mkdir(parents=True)
    clip.write_bytes(bytes(range(256)) * 10)
    address, _ = served(tmp_path)
    status, headers, body = request(address, "/files/run/validation/step-1/main.mp4", headers={"Range": "bytes=10-19"})
    assert status == 206 and body == bytes(range(10, 20))
    assert headers["content-range"] == "bytes 10-19/2560" and headers["content-type"] == "video/mp4"


def test_rounds_pair_ema_with_plain_and_show_rounds_still_rendering(tmp_path, served):
    run = tmp_path / "run"
    write_log(run, [start(20), *steps(20)])
    done, rendering = run / "validation" / "step-10", run / "validation" / "step-20"
    for name in ["main.mp4", "main-ema.mp4", "contact-sheet.png", "previews/main-step-5.mp4"]:
        (done / name).parent.mkdir(parents=True, exist_ok=True)
        (done / name).write_bytes(b"x")
    (run / "validation" / ".step-10.json").write_text(json.dumps({
        "step": 10, "media": {"main": "main.mp4", "main-ema": "main-ema.mp4"}, "contact_sheet": "contact-sheet.png",
        "previews": {"main": {"5": "previews/main-step-5.mp4"}},
    }))
    rendering.mkdir()
    (rendering / "main.mp4").write_bytes(b"x")
    (run / "checkpoint-10").mkdir()
    (run / "checkpoint-10" / "manifest.json").write_text("{}")
    (run / "checkpoint-20").mkdir()  # being written
    (run / "pytorch_lora_weights.safetensors").write_bytes(b"x" * 100)
    address, _ = served(tmp_path)
    data = _run(address, "run")
    newest, older = data["rounds"]
    assert (newest["step"], newest["complete"], older["step"], older["complete"]) == (20, False, 10, True)
    clip = older["clips"][0]
    assert clip["variants"] == {"trained": "run/validation/step-10/main.mp4", "ema": "run/validation/step-10/main-ema.mp4"}
    assert clip["previews"]["trained"] == [{"step": "5", "url": "run/validation/step-10/previews/main-step-5.mp4"}]
    assert older["contact_sheet"] == "run/validation/step-10/contact-sheet.png"
    files = {f["name"]: f for f in data["files"]}
    assert files["checkpoint-10"]["intact"] and not files["checkpoint-20"]["intact"]
    assert files["pytorch_lora_weights.safetensors"]["kind"] == "adapter"
    status, _, body = request(address, "/files/" + clip["variants"]["ema"])
    assert status == 200 and body == b"x"


def test_with_a_token_a_request_without_it_gets_nothing(tmp_path, served):
    write_log(tmp_path / "run", [start(2), *steps(1)])
    address, _ = served(tmp_path, token=TOKEN, loopback_only=False)
    for path in ["/", "/api/runs", "/files/run/train_log.jsonl", "/static/serve.js", "/?token=wrong"]:
        status, _, body = request(address, path)
        assert (status, body) == (403, b""), path
    status, headers, _ = request(address, f"/?token={TOKEN}")
    assert status == 200 and TOKEN in headers["set-cookie"] and "HttpOnly" in headers["set-cookie"]
    assert request(address, "/api/runs", headers={"Cookie": f"tuner_serve_token={TOKEN}"})[0] == 200
    assert request(address, "/api/runs", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200


def test_other_sites_cannot_drive_a_local_server(tmp_path, served):
    address, _ = served(tmp_path)
    assert request(address, "/api/runs", headers={"Host": "evil.example"})[0] == 403  # DNS rebinding
    body = json.dumps({"config": "x.toml"}).encode()
    evil = {"Origin": "http://evil.example", "Content-Type": "application/json"}
    assert request(address, "/api/jobs", "POST", evil, body)[0] == 403
    form = {"Content-Type": "application/x-www-form-urlencoded"}  # a cross-site form needs no preflight
    assert request(address, "/api/jobs", "POST", form, body)[0] == 403


def test_start_refuses_bad_configs_with_one_line(tmp_path, served, toy_run):
    config = toy_run(steps=2)  # its output_dir lies beside it, outside the served folder
    served_root = tmp_path / "served"
    served_root.mkdir()
    address, _ = served(served_root)
    post = {"Content-Type": "application/json"}
    status, _, body = request(address, "/api/jobs", "POST", post, json.dumps({"config": "missing.toml"}).encode())
    assert status == 400 and json.loads(body)["error"] == f"no config file at {served_root / 'missing.toml'}"
    status, _, body = request(address, "/api/jobs", "POST", post, json.dumps({"config": str(config)}).encode())
    assert status == 400 and "outside the served folder" in json.loads(body)["error"]
    bad = json.dumps({"config": str(config), "sets": ["train.max_train_steps"]}).encode()
    status, _, body = request(address, "/api/jobs", "POST", post, bad)
    assert status == 400 and "KEY=VALUE" in json.loads(body)["error"]


def test_host_without_token_is_refused(tmp_path):
    result = run_cli(["serve", str(tmp_path), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "give --token too" in result.stderr
    result = run_cli(["serve", str(tmp_path), "--host", "0.0.0.0", "--token", "short"])
    assert result.exit_code == 2 and "--token must be at least 16" in result.stderr
    result = run_cli(["serve", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "is not a folder" in result.stderr


def test_importing_the_cli_loads_no_web_server():
    import subprocess
    import sys

    code = "import sys, tuner.cli; print(sorted(m for m in ('torch', 'starlette', 'uvicorn', 'numpy') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


def test_the_command_prints_its_url_and_serves(tmp_path):
    import signal
    import subprocess
    import sys

    write_log(tmp_path / "run", [start(2), *steps(1)])
    server = subprocess.Popen(
        [sys.executable, "-m", "tuner", "serve", str(tmp_path), "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        line = server.stdout.readline()
        assert line.startswith(f"serving {tmp_path.resolve()} at http://127.0.0.1:"), line
        address = line.split("http://")[1].strip().rstrip("/")
        assert [r["id"] for r in get_json(address, "/api/runs")["runs"]] == ["run"]
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(30) == 0


def test_a_run_named_like_markup_reaches_the_page_intact(tmp_path, served):
    name = "a&b <script>alert(1)</script>"
    write_log(tmp_path / name, [start(2), *steps(1)])
    address, _ = served(tmp_path)
    from urllib.parse import quote

    status, _, body = request(address, "/run?id=" + quote(name))
    page = body.decode()
    assert status == 200 and "<script>alert" not in page
    data = page.split('<script id="page-data" type="application/json">')[1].split("</script>")[0]
    assert json.loads(data)["id"] == name


def test_the_folder_itself_can_be_the_run(tmp_path, served):
    write_log(tmp_path, [start(2), *steps(2)])
    sheet = tmp_path / "validation" / "step-2" / "contact-sheet.png"
    sheet.parent.mkdir(parents=True)
    sheet.write_bytes(b"png")
    address, _ = served(tmp_path)
    assert [r["id"] for r in get_json(address, "/api/runs")["runs"]] == ["."]
    data = get_json(address, "/api/run?id=.")
    assert data["summary"]["step"] == 2 and data["rounds"][0]["contact_sheet"] == "validation/step-2/contact-sheet.png"
    assert request(address, "/files/validation/step-2/contact-sheet.png")[2] == b"png"


def test_a_round_shows_as_it_starts_and_as_it_lands(tmp_path, served):
    run = tmp_path / "run"
    write_log(run, [start(20), *steps(10)])
    address, _ = served(tmp_path)
    version = _run(address, "run")["version"]
    folder = run / "validation" / "step-10"
    folder.mkdir(parents=True)  # the round starts
    data = _run(address, "run", v=version)
    assert [(r["step"], r["complete"], r["clips"]) for r in data["rounds"]] == [(10, False, [])]
    (folder / "main.mp4").write_bytes(b"x")  # its first clip
    data = _run(address, "run", v=data["version"])
    assert data["rounds"][0]["clips"][0]["variants"] == {"trained": "run/validation/step-10/main.mp4"}
    (run / "validation" / ".step-10.json").write_text(json.dumps({"step": 10, "media": {"main": "main.mp4"}}))
    data = _run(address, "run", v=data["version"])
    assert data["rounds"][0]["complete"] is True
    assert _run(address, "run", v=data["version"]) == {"unchanged": True, "version": data["version"]}


def test_pages_polling_one_growing_run_at_once_all_get_answers(tmp_path, served):
    """Curves are read from numpy views of the log's arrays: a refresh growing them meanwhile must wait."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    log = write_log(tmp_path / "run", [start(50_000), *steps(30_000)])
    address, _ = served(tmp_path)
    training = threading.Event()
    training.set()

    def poll(_: int) -> list[int]:
        statuses = []
        while training.is_set():
            statuses.append(request(address, "/api/run?id=run")[0])
        return statuses

    with ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(poll, i) for i in range(4)]
        for block in range(60):  # the run keeps training while four pages poll it
            with log.open("a") as f:
                f.writelines(json.dumps(r) + "\n" for r in steps(50, start=30_001 + block * 50))
            time.sleep(0.03)
        training.clear()
        statuses = [s for p in pending for s in p.result()]
    assert len(statuses) > 8 and set(statuses) == {200}
    assert _run(address, "run")["curves"]["records"] == 33_000
