"""Memory and speed features on the tiny Flux, unchanged: they find its parts through the bundle."""

from __future__ import annotations

import pytest

from tuner.report.jsonlog import read_log


@pytest.mark.parametrize(
    "overrides",
    [
        # 4-bit base weights and both text encoders quantized: Flux refuses no precision (Wan refuses 4-bit).
        ["plugins=['flux', 'quantize']", "base_model_precision='int4-quanto'", "text_encoder_1_precision='int8-quanto'",
         "text_encoder_2_precision='int8-quanto'"],
        # Block swap over both block lists (double, then single blocks), chunked feed-forward.
        ["plugins=['flux', 'offload']", "blocks_to_swap=3", "enable_chunked_feed_forward=true",
         "train.gradient_checkpointing=true"],
        ["plugins=['flux', 'offload']", "enable_group_offload=true", "offload_during_startup=true",
         "train.gradient_checkpointing=true"],
        ["plugins=['flux', 'attention']", "attention_mechanism='sdpa-math'"],
    ],
    ids=["int4-quanto", "block-swap+chunked-ff", "group-offload", "attention"],
)
def test_feature_plugins_train_flux_unchanged(make_run, cli, overrides):
    config = make_run(plugin="flux", steps=2, overrides=["validation.validation_prompt=''", *overrides])
    result = cli(["train", "--config", str(config)])
    assert result.exit_code == 0, result.stderr + result.output
    losses = [r["loss"] for r in read_log(config.parent / "output") if r["event"] == "step"]
    assert len(losses) == 2
