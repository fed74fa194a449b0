"""Two real processes on gloo: when one dies, the other stops in one line and both exit non-zero.

The ranks are started the way accelerate's launcher starts them (RANK, WORLD_SIZE, MASTER_ADDR/PORT
in the environment, ACCELERATE_USE_CPU for gloo), without the launcher, so the test is quick.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from tuner.data.synthetic import write_synthetic_clips

_RANK = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import typer
    from tuner import hookimpl
    from tuner.commands.errors import friendly_errors
    from tuner.config import resolve_config
    from tuner.plugins import PluginHost
    from tuner.testing.toy import ToyFamily, toy_config
    from tuner.train.run import train

    class DiesInStep3(ToyFamily):
        @hookimpl
        def compute_loss(self, bundle, batch, generator, config):
            out = super().compute_loss(bundle, batch, generator, config)
            if os.environ["RANK"] == "1" and self.calls["compute_loss"] == 3:
                # Dies inside the backward pass of step 3, while the other syncs its gradients.
                out.loss.register_hook(lambda grad: os.kill(os.getpid(), signal.SIGKILL))
            return out

    folder = Path(sys.argv[1])
    host = PluginHost.build([], extra={"toy": DiesInStep3()})
    cfg = toy_config(folder, max_train_steps=6)
    cfg["validation"]["validation_prompt"] = None
    cfg["distributed"] = {"process_group_timeout": 60}
    try:
        friendly_errors(lambda: train(resolve_config(cfg, host), host))()
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    """
)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="gloo ranks as plain processes")
def test_when_one_rank_is_killed_the_other_stops_in_one_line_and_both_exit_non_zero(tmp_path):
    write_synthetic_clips(tmp_path / "clips", count=4, num_frames=3, width=16, height=16)
    script = tmp_path / "rank.py"
    script.write_text(_RANK)
    port = _port()
    ranks = []
    for rank in (0, 1):
        env = {
            **os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
        }  # fmt: skip
        ranks.append(subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env, stderr=subprocess.PIPE, text=True))
    errs = [p.communicate(timeout=120)[1] for p in ranks]
    assert ranks[1].returncode == -9, errs[1][-3000:]  # the one killed
    assert ranks[0].returncode == 2, errs[0][-3000:]
    assert "Traceback" not in errs[0], errs[0][-3000:]
    lines = [line for line in errs[0].splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "process 0 of 2 stopped while training step 3: another process died" in lines[0], lines
