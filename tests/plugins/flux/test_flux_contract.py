"""tuner's contract kit (`tuner.testing.contract`), run on the Flux family as an outside family author runs it on theirs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tuner.testing.contract import FamilyContract


@pytest.mark.slow
class TestFluxContract(FamilyContract):
    plugin = "flux"

    def render(self, model_dir: Path, adapter: Path | None) -> np.ndarray:
        import torch
        from diffusers import FluxPipeline

        pipe = FluxPipeline.from_pretrained(str(model_dir))
        pipe.set_progress_bar_config(disable=True)
        if adapter is not None:
            pipe.load_lora_weights(str(adapter.parent), weight_name=adapter.name)
        return pipe(
            "a red square", height=32, width=32, num_inference_steps=3, guidance_scale=1.0,
            generator=torch.Generator().manual_seed(0), output_type="np", max_sequence_length=32,
        ).images[0]

