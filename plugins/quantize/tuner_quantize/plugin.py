"""The quantize plugin: the frozen base (and the first text encoder) stored in fewer bits.

Quantization happens in the ``base`` phase, before the adapter exists, so the adapter wraps the
quantized layers and is the only thing that trains. A family names the precisions its model does
not survive in ``ModelBundle.refused_precisions``; this plugin refuses them with the family's reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from tuner import hookimpl
from tuner.progress import notice, say, task_progress

from tuner_quantize.settings import QuantizeSection

if TYPE_CHECKING:
    import torch

    from tuner.config import RunConfig
    from tuner.types.bundle import ModelBundle


@hookimpl
def register_config_sections(register: Any) -> None:
    register("quantize", QuantizeSection)


@hookimpl(tryfirst=True)
def prepare_model(
    bundle: ModelBundle, config: RunConfig, phase: Literal["base", "adapted"], device: torch.device
) -> None:
    import torch

    from tuner.errors import PluginError

    from tuner_quantize.quanto import quantize_weights

    section: QuantizeSection = config.section("quantize")
    if phase != "base":
        return
    where = torch.device("cpu") if section.quantize_via == "cpu" else device
    if "quantize_via" in section.model_fields_set and not section.quantizes:
        # The guide's example sets it beside base_model_precision = "no_change": accepted, and said.
        notice("quantize_via has no effect: every *_precision option is 'no_change'")
    precision = section.base_model_precision
    if precision != "no_change":
        if (reason := bundle.refused_precisions.get(precision)) is not None:
            raise PluginError(
                f"base_model_precision = '{precision}' is refused for model family '{bundle.family}': {reason}"
            )
        # Block by block (each visits `where` alone, and a 14B expert's 40 blocks show their progress);
        # a family that lists no blocks is quantized whole.
        parts = [
            [block for path in bundle.block_lists for block in module.get_submodule(path)] or [module]
            for module in bundle.denoisers()  # every expert of a model that has several
        ]
        layers = 0
        with task_progress(f"quantizing the denoiser to {precision}", sum(map(len, parts)), unit="blocks") as advance:
            for part in (p for group in parts for p in group):
                layers += quantize_weights(part, precision, include=None, where=where, option="base_model_precision")
                advance(1)
        say(f"quantized base: {layers} layers of the denoiser in {precision}, on {where}")
    text = [key for key, kind in bundle.encoders.items() if kind == "text"]
    for n, precision in enumerate((section.text_encoder_1_precision, section.text_encoder_2_precision)):
        option = f"text_encoder_{n + 1}_precision"
        if precision == "no_change":
            continue
        if len(text) <= n:
            raise PluginError(f"{option}: model family '{bundle.family}' has {len(text)} text encoder(s)")
        layers = quantize_weights(bundle.components[text[n]], precision, include=None, where=where, option=option)
        say(f"quantized {text[n]}: {layers} layers in {precision}, on {where}")
        bundle.cache_id = f"{bundle.cache_id}+{text[n]}:{precision}"  # other embeddings: re-encode them
