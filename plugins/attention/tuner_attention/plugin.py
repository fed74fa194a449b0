"""The attention plugin: installs the chosen kernel into the denoiser's attention layers.

It works on any denoiser whose attention goes through diffusers' attention dispatcher and knows no
model family. A kernel that cannot run on this machine stops the run here, before anything loads
into the caches, with one line naming what is missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from tuner import hookimpl

from tuner_attention.settings import AttentionSection

if TYPE_CHECKING:
    import torch

    from tuner.config import RunConfig
    from tuner.types.bundle import ModelBundle


@hookimpl
def register_config_sections(register: Any) -> None:
    register("attention", AttentionSection)


@hookimpl
def prepare_model(
    bundle: ModelBundle, config: RunConfig, phase: Literal["base", "adapted"], device: torch.device
) -> None:
    from tuner.errors import PluginError

    from tuner_attention.backends import BACKENDS, install, problems

    name = config.section("attention").attention_mechanism
    if phase != "base" or BACKENDS[name].diffusers is None:
        return
    missing = problems(name, device, config.train.mixed_precision)
    if missing:
        raise PluginError(
            f"attention_mechanism = '{name}' cannot run here: it needs {'; and '.join(missing)}."
            " Use 'diffusers' (PyTorch SDPA), which runs everywhere"
        )
    layers = sum(install(module, name) for module in bundle.denoisers())
    from tuner.progress import notice, say

    if not BACKENDS[name].backward:
        notice(f"attention_mechanism '{name}' has no backward pass: training uses PyTorch SDPA, validation uses it")
    else:
        say(f"attention: {name} in {layers} attention layers")
