"""Flux sampler previews (validation_preview) through FluxPipeline's callback, on the tiny model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from tuner.config import resolve_config
from tuner.plugins import PluginHost
from tuner.types.validation import ValidationRequest
from tuner.validate.inference import inference_state


@pytest.fixture(scope="module")
def flux(tiny_model_dir):
    host = PluginHost.build(["flux"])
    section = {"flux_pretrained_model_name_or_path": str(tiny_model_dir("flux")), "flux_t5_max_length": 32}
    bundle = host.load_model(resolve_config({"flux": section}, host), torch.device("cpu"))
    return host, bundle


def _render(flux, tmp_path, steps=(), on_step=None, on_preview=None):
    host, bundle = flux
    request = ValidationRequest(step=0, key="main", prompt="a red square", negative_prompt="", num_frames=1, width=32,
                                height=32, num_inference_steps=4, guidance_scale=3.5, seed=2, output_dir=tmp_path,
                                preview_steps=steps, on_sampler_step=on_step, on_preview=on_preview)
    with inference_state(bundle):
        return host.validate(bundle, request)


def test_flux_previews_each_requested_step_and_leaves_the_image_unchanged(flux, tmp_path):
    assert flux[1].renders_previews
    plain = _render(flux, tmp_path)
    handed: list[tuple[str, int, Any]] = []
    result = _render(flux, tmp_path, steps=(1, 2, 3, 4), on_preview=lambda *a: handed.append(a))
    assert [(k, s) for k, s, _ in handed] == [("main", s) for s in (1, 2, 3, 4)], "handed over as rendered"
    assert all(f is result.preview_frames["main"][s] for _, s, f in handed)
    assert np.array_equal(result.frames["main"], plain.frames["main"]), "previews do not change the image"
    previews = result.preview_frames["main"]
    assert sorted(previews) == [1, 2, 3, 4] and all(p.shape == (1, 32, 32, 3) for p in previews.values())
    assert all(np.abs(previews[s] - previews[s + 1]).mean() > 1e-4 for s in (1, 2, 3)), "each step differs"
    # Flux's Euler sampler ends at sigma 0: the last step's estimate is the image.
    assert np.abs(previews[4] - plain.frames["main"]).max() < 1e-4
    assert not flux[1].components["pipeline"].transformer._forward_hooks, "the hook is gone afterwards"


def test_flux_reports_each_sampler_step_with_and_without_previews(flux, tmp_path):
    for steps in ((), (2,)):
        seen: list[int] = []
        _render(flux, tmp_path, steps, on_step=lambda: seen.append(1))
        assert len(seen) == 4, steps
