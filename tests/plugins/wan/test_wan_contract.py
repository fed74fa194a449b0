"""tuner's contract kit (`tuner.testing.contract`), run on the Wan family as an outside family author runs it on theirs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tuner.testing.contract import FamilyContract


@pytest.mark.slow
class TestWanContract(FamilyContract):
    plugin = "wan"

    def render(self, model_dir: Path, adapter: Path | None) -> np.ndarray:
        import torch
        from diffusers import WanPipeline

        pipe = WanPipeline.from_pretrained(str(model_dir))
        pipe.set_progress_bar_config(disable=True)
        if adapter is not None:
            pipe.load_lora_weights(str(adapter.parent), weight_name=adapter.name)
        return pipe(
            "a red square moving right", height=32, width=32, num_frames=5, num_inference_steps=3,
            generator=torch.Generator().manual_seed(0), output_type="np", max_sequence_length=32,
        ).frames[0]
