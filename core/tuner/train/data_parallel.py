"""Handing the trained networks to accelerate: placement, autocast, and DDP around the training forward.

The model family's ``compute_loss`` calls the denoiser itself (token routing calls
its blocks directly; a model with experts picks one per sample), so wrapping only
the denoiser in DDP would leave those calls outside the wrapper. Instead the whole
loss computation is the forward of `TrainingForward`, whose submodules are the
trained networks: accelerate's wrapper sees every training forward, and plugins
keep seeing the plain networks in ``bundle.denoiser`` and ``bundle.experts``.
With one process `TrainingForward` is not wrapped at all.

FSDP2 over NCCL (docs/scale.md), assumed and not yet run on GPUs by this project (accelerate on a
CPU keeps a run MULTI_CPU and ignores the FSDP plugin; tests/plugins/offload/test_gpu_paths.py checks
the plan on a CPU): accelerate wraps `TrainingForward` and its auto-wrap policy shards each module
whose class is named in ``fsdp_transformer_layer_cls_to_wrap`` (``WanTransformerBlock``) wherever it
sits, so a block called directly by token routing or an expert switch is still one FSDP unit; each
block holds frozen bf16 weights and float32 LoRA parameters together, which FSDP2 (per-parameter
sharding) allows and FSDP1's flat parameters did not; NCCL needs one CUDA device per process
(``LOCAL_RANK``), which accelerate's launcher sets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from tuner.config import RunConfig
    from tuner.plugins import PluginHost
    from tuner.train.adapters import AdapterSet
    from tuner.types.bundle import ModelBundle
    from tuner.types.training import LossOutput

__all__ = ["TrainingForward", "prepare_training"]


class TrainingForward(torch.nn.Module):
    """``forward(batch, generator)`` -> the family's `LossOutput` for one micro-batch."""

    def __init__(self, host: PluginHost, bundle: ModelBundle, config: RunConfig) -> None:
        super().__init__()
        # The trained networks are the submodules: DDP finds the adapters' parameters through them.
        self.trained = torch.nn.ModuleList(expert.module for expert in bundle.trained_experts())
        self._call = (host, bundle, config)

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> LossOutput:
        host, bundle, config = self._call
        return host.compute_loss(bundle, batch, generator, config)


def _ignore_frozen(module: torch.nn.Module) -> None:
    """DDP leaves frozen weights and buffers alone: each process loaded the same base, so nothing is broadcast."""
    frozen = [name for name, p in module.named_parameters() if not p.requires_grad]
    frozen += [name for name, _ in module.named_buffers()]
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, frozen)


def prepare_training(
    accelerator: Any,
    host: PluginHost,
    bundle: ModelBundle,
    config: RunConfig,
    adapter: AdapterSet,
    optimizer: Any,
    keep_all: bool,
) -> tuple[Any, Any]:
    """``(forward, optimizer)`` prepared by accelerate: DDP over the processes when there are several.

    Each trained network is prepared as a network of its own (placed on the device, its own
    forward under mixed-precision autocast, which validation and the evaluation loss rely on) but
    never wrapped. When experts take turns on the accelerator (`tuner.train.experts`), accelerate
    must not place them all there at once: only the adapters go now, each expert's frozen weights
    when it runs. The wrapper goes around `TrainingForward`, with accelerate's autocast taken off
    it again, so that autocast covers the networks' forwards only, with one process or several.
    """
    from tuner.train.experts import install_expert_turns

    experts = bundle.trained_experts()
    for expert in experts:
        expert.module.train()
    install_expert_turns(bundle, accelerator.device, keep_all)
    turns = bundle.run.expert_switch is not None
    if turns:
        for param in adapter.params:
            param.data = param.data.to(accelerator.device)
    for expert in experts:
        module = accelerator.prepare_model(expert.module, device_placement=False if turns else None, evaluation_mode=True)
        if bundle.experts:
            expert.module = module
        if expert is experts[0]:
            bundle.denoiser = module
    forward = TrainingForward(host, bundle, config)
    if accelerator.num_processes > 1:
        _ignore_frozen(forward)
    forward = accelerator.prepare_model(forward, device_placement=False)  # the networks are placed already
    accelerator.unwrap_model(forward, keep_fp32_wrapper=False)  # drops the autocast wrapper, in place
    return forward, accelerator.prepare_optimizer(optimizer)
