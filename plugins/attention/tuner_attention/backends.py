"""The attention kernels a user can name, what each needs, and how one is installed.

Every name maps to a backend of diffusers' attention dispatcher; installing one is diffusers'
``set_attention_backend`` on the denoiser, which sets the backend of each attention processor
(the model's own, not the process-wide default: that is restored right after). A kernel without a
backward pass (SageAttention) serves validation only: a module hook on each attention layer picks
it when no gradient is being recorded, and PyTorch's SDPA otherwise.

Assumed on CUDA, not run in this project's CI (tests/plugins/offload/test_gpu_paths.py plans them on a
CPU; bench/gpu.py times the training ones on a card): the SageAttention kernels take bf16/fp16
query/key/value on a CUDA device in the layout diffusers' dispatcher hands them, and the ``-sm90``
variant needs a Hopper card; flash-attn needs bf16/fp16 too (`problems` refuses float32 for every
kernel marked ``half``, at start-up, before any kernel is called).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

__all__ = ["Backend", "BACKENDS", "MechanismName", "problems", "install"]


@dataclass(frozen=True)
class Backend:
    """One choice of ``attention_mechanism``.

    :ivar diffusers: the diffusers ``AttentionBackendName`` value; ``None`` keeps diffusers' default (SDPA).
    :ivar cuda: needs a CUDA device.
    :ivar half: needs bf16/fp16 activations.
    :ivar backward: has a backward pass; without one it is used for validation and inference only.
    """

    diffusers: str | None
    cuda: bool = True
    half: bool = False
    backward: bool = True


MechanismName = Literal[
    "diffusers",
    "sdpa-math",
    "sdpa-flash",
    "sdpa-efficient",
    "sdpa-cudnn",
    "flex",
    "xformers",
    "flash-attn",
    "flash-attn-varlen",
    "flash-attn-3",
    "flash-attn-hub",
    "flash-attn-3-hub",
    "sageattention",
    "sageattention-varlen",
    "sageattention-int8-fp16-triton",
    "sageattention-int8-fp16-cuda",
    "sageattention-int8-fp8-cuda",
    "sageattention-int8-fp8-cuda-sm90",
    "sageattention-hub",
]

_SAGE = {"cuda": True, "half": True, "backward": False}
BACKENDS: dict[str, Backend] = {
    "diffusers": Backend(None, cuda=False),
    "sdpa-math": Backend("_native_math", cuda=False),
    "sdpa-flash": Backend("_native_flash", cuda=False),
    "sdpa-efficient": Backend("_native_efficient"),
    "sdpa-cudnn": Backend("_native_cudnn", half=True),
    "flex": Backend("flex"),  # runs forward on a CPU, but has no CPU backward
    "xformers": Backend("xformers"),
    "flash-attn": Backend("flash", half=True),
    "flash-attn-varlen": Backend("flash_varlen", half=True),
    "flash-attn-3": Backend("_flash_3", half=True),
    "flash-attn-hub": Backend("flash_hub", half=True),
    "flash-attn-3-hub": Backend("_flash_3_hub", half=True),
    "sageattention": Backend("sage", **_SAGE),
    "sageattention-varlen": Backend("sage_varlen", **_SAGE),
    "sageattention-int8-fp16-triton": Backend("_sage_qk_int8_pv_fp16_triton", **_SAGE),
    "sageattention-int8-fp16-cuda": Backend("_sage_qk_int8_pv_fp16_cuda", **_SAGE),
    "sageattention-int8-fp8-cuda": Backend("_sage_qk_int8_pv_fp8_cuda", **_SAGE),
    "sageattention-int8-fp8-cuda-sm90": Backend("_sage_qk_int8_pv_fp8_cuda_sm90", **_SAGE),
    "sageattention-hub": Backend("sage_hub", **_SAGE),
}


def problems(name: str, device: torch.device, mixed_precision: str) -> list[str]:
    """What ``name`` needs that this run lacks (empty when it can run)."""
    from diffusers.models.attention_dispatch import attention_backend

    backend = BACKENDS[name]
    if backend.diffusers is None:
        return []
    missing = []
    if backend.cuda and device.type != "cuda":
        missing.append(f"a CUDA device (this run is on {device.type})")
    if backend.half and mixed_precision not in ("bf16", "fp16"):
        missing.append(f"bf16 or fp16 activations (mixed_precision is '{mixed_precision}': set it to 'bf16')")
    hub = backend.diffusers.endswith("_hub")
    if not (hub and missing):  # a Hub kernel is downloaded by this check: not for a run that cannot use it
        try:
            with attention_backend(backend.diffusers):
                pass
        except (RuntimeError, ValueError, ImportError) as exc:
            line = str(exc).splitlines()[0].rstrip(".")
            if "sageattention>=2" in line:
                # diffusers asks for SageAttention 2, which PyPI does not serve (it has 1.0.x): say where it comes from.
                line += (
                    " (PyPI serves sageattention 1.0.x only: build 2.x from https://github.com/thu-ml/SageAttention,"
                    " or use sageattention-hub with the kernels package)"
                )
            missing.append(line)
    return missing


def _attention_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if hasattr(getattr(m, "processor", None), "_attention_backend")]


def install(model: torch.nn.Module, name: str) -> int:
    """Put backend ``name`` into the attention layers of ``model``; returns how many there are."""
    from diffusers.models.attention_dispatch import attention_backend

    from tuner.errors import PluginError

    backend = BACKENDS[name]
    layers = _attention_layers(model)
    if backend.diffusers is None:
        return len(layers)
    if not layers or not hasattr(model, "set_attention_backend"):
        raise PluginError(
            f"attention_mechanism = '{name}': the denoiser's attention does not go through diffusers' attention"
            " dispatcher: use 'diffusers'"
        )
    import diffusers.utils.logging as dlog

    # set_attention_backend also makes its backend the process-wide default; the context manager puts the
    # previous default back, so only this model's layers change. Its "experimental feature" warning is
    # replaced by the plugin's own line saying what was installed.
    verbosity = dlog.get_verbosity()
    dlog.set_verbosity_error()
    try:
        with attention_backend(backend.diffusers):
            model.set_attention_backend(backend.diffusers)
    finally:
        dlog.set_verbosity(verbosity)
    if not backend.backward:
        _inference_only(layers, backend.diffusers)
    return len(layers)


def _inference_only(layers: list[torch.nn.Module], kernel: str) -> None:
    """Use ``kernel`` when no gradient is recorded (validation), the default (SDPA) when one is (training)."""
    from diffusers.hooks import HookRegistry

    for layer in layers:
        HookRegistry.check_if_exists_or_initialize(layer).register_hook(_switch_hook(kernel), "tuner_attention_kernel")


def _switch_hook(kernel: str) -> Any:
    import torch
    from diffusers.hooks import ModelHook
    from diffusers.models.attention_dispatch import AttentionBackendName

    inference = AttentionBackendName(kernel)

    class ForwardOnlyKernel(ModelHook):
        def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            module.processor._attention_backend = None if torch.is_grad_enabled() else inference
            return args, kwargs

    return ForwardOnlyKernel()
