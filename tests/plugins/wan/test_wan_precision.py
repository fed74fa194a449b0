"""The tiny Wan under bf16 and fp16 mixed precision on the CPU: float32 adapter, falling loss, save_dtype."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tuner.train.checkpoints import read_checkpoint
from safetensors.torch import load_file

from tuner import hookimpl
from tuner.config import read_config_file, resolve_config
from tuner.plugins import PluginHost
from tuner.report.jsonlog import read_log
from tuner.testing.runs import write_run_folder
from tuner.train.run import train


class DtypeProbe:
    def __init__(self) -> None:
        self.trainable: set[torch.dtype] = set()
        self.frozen: set[torch.dtype] = set()

    @hookimpl
    def prepare_model(self, bundle, config, phase):  # type: ignore[no-untyped-def]
        if phase == "adapted":
            for name, p in bundle.denoiser.named_parameters():
                if p.requires_grad:
                    self.trainable.add(p.dtype)
                elif ".attn1.to_q." in name:  # an adapted linear layer (diffusers keeps norms and embedders float32)
                    self.frozen.add(p.dtype)


@pytest.mark.parametrize(
    ("mixed", "adapter", "save"),
    [("bf16", "standard", "bf16"), ("fp16", "standard", "fp16"), ("bf16", "lycoris", "fp32")],
)
def test_mixed_precision_trains_a_float32_adapter_and_saves_the_chosen_dtype(tmp_path, tiny_model_dir, mixed, adapter, save):
    overrides = [
        f"train.mixed_precision='{mixed}'",
        f"train.save_dtype='{save}'",
        "train.checkpoint_step_interval=0",
        "validation.validation_prompt=''",
    ]
    if adapter == "lycoris":
        (tmp_path / "lokr.json").write_text(json.dumps({"algo": "lokr", "linear_dim": 10000, "linear_alpha": 1, "factor": 4}))
        overrides += ["train.lora_type='lycoris'", f"train.lycoris_config='{tmp_path / 'lokr.json'}'"]
        # The LoRA targets only (20 layers of the tiny model, not every Linear and Conv): a larger step to fall as fast.
        overrides += ["train.learning_rate=3e-3"]
    config_path = write_run_folder(tmp_path / "run", tiny_model_dir("wan"), plugin="wan", steps=40, overrides=overrides)
    probe = DtypeProbe()
    host = PluginHost.build(["wan"], extra={"probe": probe})
    config = resolve_config(read_config_file(config_path), host, config_path.parent)
    outputs = train(config, host)

    low = {"bf16": torch.bfloat16, "fp16": torch.float16}[mixed]
    assert probe.frozen == {low}, "the frozen base layers are stored in the mixed-precision dtype"
    if adapter == "standard":  # peft's layers live in the model; LyCORIS's network beside it
        assert probe.trainable == {torch.float32}, "the adapter is float32"
    state = read_checkpoint(outputs["checkpoint"])[0]
    assert {p.dtype for p in state["params"]} == {torch.float32}, "the trained parameters, as they were"
    losses = [r["loss"] for r in read_log(config.train.output_dir) if r["event"] == "step"]
    assert len(losses) == 40 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-10:]) < 0.95 * np.mean(losses[:10]), "the loss falls"
    saved = load_file(outputs["adapter"])
    wanted = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[save]
    # The weights in save_dtype; the .alpha scalars (ComfyUI's layout, the default) stay exact in float32.
    assert saved and {v.dtype for k, v in saved.items() if not k.endswith(".alpha")} == {wanted}
    assert {v.dtype for k, v in saved.items() if k.endswith(".alpha")} <= {torch.float32}
    assert any(k.endswith(".alpha") for k in saved) == (adapter == "standard")  # full-factor LoKr: no alpha
