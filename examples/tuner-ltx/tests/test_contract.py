"""tuner's contract kit, run on the ltx family (installed, or from this source tree)."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import tuner_ltx.plugin

from tuner.testing.contract import FamilyContract

INSTALLED = any(ep.name == "ltx" for ep in entry_points(group="tuner.plugins"))


class TestLtxContract(FamilyContract):
    plugin = "ltx"
    # Installed: through its entry point, as users get it; else the source tree, registered directly.
    plugin_object = None if INSTALLED else tuner_ltx.plugin

    def render(self, model_dir: Path, adapter: Path | None) -> np.ndarray:
        import torch
        from diffusers import LTXPipeline

        pipe = LTXPipeline.from_pretrained(str(model_dir))
        pipe.set_progress_bar_config(disable=True)
        if adapter is not None:
            pipe.load_lora_weights(str(adapter.parent), weight_name=adapter.name)
        return pipe(
            "a red square moving right", height=64, width=64, num_frames=9, num_inference_steps=3,
            generator=torch.Generator().manual_seed(0), output_type="np", max_sequence_length=32,
        ).frames[0]
