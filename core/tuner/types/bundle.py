"""What a model family's `load_model` hands to the core: the `ModelBundle` and its `Expert` denoisers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from tuner.train.noising import InputRewriter
    from tuner.types.routes import TokenRouter

__all__ = ["Expert", "ModelBundle"]


@dataclass
class Expert:
    """One denoiser of a model that splits the noise range between several (Wan 2.2 A14B: two).

    Each expert denoises the samples whose noise level sigma falls in its
    ``sigma_range``; together the experts of a bundle cover ``[0, 1]``.

    :ivar name: the component name in the family's pipeline (``"transformer"``,
        ``"transformer_2"``); also names the expert in logs and errors.
    :ivar module: the network.
    :ivar sigma_range: ``(low, high)``: the expert owns ``low <= sigma < high``
        (the expert whose ``high`` is 1 owns sigma = 1 too).
    :ivar trained: the run attaches an adapter to it and trains it; a frozen
        expert is loaded only for validation (the full sampler).
    :ivar label: a short word for file names (``"high_noise"``): with several
        trained experts, each adapter file is ``<name>_<label>.safetensors``.
    :ivar load_kwargs: what the family's diffusers pipeline's ``load_lora_weights``
        needs to put this expert's adapter into it (Wan 2.2's low-noise expert:
        ``{"load_into_transformer_2": True}``); empty for the pipeline's default
        denoiser. Adapter files record it (``tuner.load_kwargs``) and the model
        card's snippet passes it.
    """

    name: str
    module: torch.nn.Module
    sigma_range: tuple[float, float] = (0.0, 1.0)
    trained: bool = True
    label: str = ""
    load_kwargs: dict[str, Any] = field(default_factory=dict)

    def owns(self, sigmas: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the ``sigmas`` this expert denoises."""
        low, high = self.sigma_range
        return (sigmas >= low) & ((sigmas < high) if high < 1.0 else (sigmas <= 1.0))


@dataclass
class ModelBundle:
    """What a model family's `load_model` hands to the core.

    :ivar family: the family name the plugin registered (e.g. ``"wan"``).
    :ivar denoiser: the network the adapter is attached to and trained.
    :ivar lora_target_modules: module-name suffixes the default LoRA targets
        (peft's ``target_modules``), chosen by the family.
    :ivar components: everything else the family needs (VAE, text encoder,
        tokenizer, scheduler, ...). The core never looks inside.
    :ivar temporal_compression: frames folded into one latent frame; clip
        lengths must be ``k * temporal_compression + 1``. 1 for image models.
    :ivar max_frames: the most frames one training sample may have, or ``None``
        for no limit. Image families set 1: a clip then trains as its first
        frame (a still), so video datasets serve them too.
    :ivar spatial_multiple: height and width must be multiples of this.
    :ivar frame_rate: the frames per second the model is trained and sampled
        at (Wan 2.1: 16), or ``None`` for a family that does not say (an image
        family). Clips are resampled to it from their frames' timestamps, so a
        30 fps clip teaches motion at the speed it was filmed, not twice as fast.
    :ivar cache_id: a string that changes whenever the encoders change, so
        cached latents and embeddings made by other encoders are not reused.
    :ivar supports_token_routing: the family's training forward honours `router`.
    :ivar num_blocks: how many transformer blocks a router may route over (the
        length of the block stack); set by families that support routing.
    :ivar block_taps: features that read the hidden states a block outputs (a
        representation-alignment loss, for instance) record it here from
        `prepare_model`: feature name -> block index (negative counts from the
        last block). The core refuses a token router whose spans cover a tap,
        since inside a span only the kept tokens exist.
    :ivar router: set by the core when a plugin answers `route_tokens`.
    :ivar base_model: where the base weights came from (hub id or path), for
        model cards and trackers.
    :ivar block_lists: dotted paths, inside ``denoiser``, of the
        ``torch.nn.ModuleList`` objects holding its repeated blocks in execution
        order (``["blocks"]``); memory features (offloading, block swap,
        quantization) find the blocks through it.
    :ivar encoders: the networks in ``components`` that only encode inputs:
        component key -> kind (``"text"``, ``"latent"``, ``"image"``). Text
        encoders are numbered in this order (``text_encoder_1_precision``
        applies to the first); offloading moves these on and off the
        accelerator as they are used.
    :ivar refused_precisions: base-weight precisions this family cannot train
        in (e.g. ``"int4-quanto"``) -> why; a quantization plugin refuses them
        at start-up with that reason.
    :ivar experts: for models whose noise range is split between several
        denoisers, every one of them (trained or frozen), in the order the
        family names them; ``denoiser`` is then the first trained one. Empty
        for a single denoiser over the whole range. The core attaches an
        adapter to each trained expert and samples sigmas only inside their
        ranges; the family runs each sample through the expert that owns its
        sigma (`Expert.owns`), entering it with `enter`. Features that change
        the denoiser's weights or kernels (quantization, attention, offload)
        apply to every module of `denoisers`.
    :ivar expert_switch: set by the core when experts take turns on the
        accelerator: called with the expert about to run.
    :ivar image_conditioned: the model generates from a given first frame
        (image-to-video): each validation prompt needs an image, which the core
        passes in `ValidationRequest.conditioning_frames`; a run without any
        stops at start-up.
    :ivar hidden_size: width of the hidden states the blocks of ``block_lists``
        output; a feature that reads a block (``block_taps``) sizes its head by
        it. 0 when the family does not say.
    :ivar token_grid: given a batch as `compute_loss` receives it, the
        ``(frames, height, width)`` grid of the latent tokens the blocks see,
        which the blocks hold frame-major (``frame * height * width + row *
        width + column``); ``None`` when the family does not say. Features that
        read a block per frame (CREPA) need it. An image family gives one frame.
    :ivar block_tokens: given what a block of the first ``block_lists`` stack
        returns, the hidden states of the latent tokens ``(batch, tokens,
        hidden_size)`` in `token_grid`'s order, other tokens (text) left out;
        ``None`` when the block returns exactly those, alone or first in a
        tuple. Features that read a block (``block_taps``) take them through it.
    :ivar trainables: small modules a feature trains together with the adapter
        (a projection head, say), added from `prepare_model` with
        ``phase="adapted"``: name -> module. The core makes their parameters
        float32 and trainable, moves them to the training device, puts them in
        the optimizer after the adapter's, clips them with it, and saves and
        restores them in checkpoints; they are not exported with the adapter
        and not averaged by EMA. Why a field and not a hidden attribute of the
        denoiser: checkpoints, resume and the optimizer must all see them.
    :ivar count_prompt_tokens: ``prompts -> token counts``, as the family's
        tokenizer counts them before any cut; with `max_prompt_tokens` (the
        tokens `encode_prompts` keeps) the core tells the user, once, which
        captions are cut. ``None``: the family does not cut prompts.
    :ivar max_prompt_tokens: the tokens of a prompt `encode_prompts` keeps.
    :ivar auto_lora_format: the key layout ``lora_format = "auto"`` (the
        default) exports, ``"diffusers"`` or ``"comfyui"``: the family names the
        one that loads in the most tools (ComfyUI and its diffusers pipeline
        alike), shown by a test of the family. The core resolves ``"auto"``
        with it, so `export_adapter` only ever sees those two.
    :ivar renders_previews: the family's `validate` honours
        `ValidationRequest.preview_steps` (``validation_preview``); for a family
        that does not, the option is ignored with a notice at start-up.
    :ivar flavour: the family's name for the exact model trained (Wan's
        ``model_flavour``); exported adapter files and the model card name it,
        and checkpoints record it: a resume into another flavour is refused
        (`tuner.train.identity`).
    :ivar architecture: a ModelSpec-style id of the base architecture
        (``"wan2.2-t2v-a14b"``); adapter files carry it as
        ``modelspec.architecture`` (with ``/lora``) and ``ss_base_model_version``.
        Empty: the family name.
    :ivar implementation: ModelSpec's ``implementation`` of the ``comfyui``
        layout (the original model's code, whose names that layout uses); the
        ``diffusers`` layout says ``diffusers``. Empty: ``diffusers``.
    :ivar pipeline_tag: the Hub's task of the model (``"text-to-video"``),
        written into the model card's metadata.
    :ivar license: the base model's license as the Hub names it
        (``"apache-2.0"``, or ``"other"`` for a custom one); the model card and
        adapter files (``modelspec.license``) carry it. Empty: not said.
    :ivar rewritable_inputs: the family's `compute_loss` builds its forward's
        input with `tuner.train.noising.noisy_inputs` and scores the prediction
        with `NoisyInputs.errors`, so a feature may rewrite both (scheduled
        sampling); the core refuses such a feature at start-up otherwise.
    :ivar input_rewriter: set by the core when a plugin answers `rewrite_noisy_input`.
    :ivar training_step: optimizer steps done before the one running; set by the
        core before each step (a rewriter's schedule reads it).
    """

    family: str
    denoiser: torch.nn.Module
    lora_target_modules: list[str]
    components: dict[str, Any] = field(default_factory=dict)
    temporal_compression: int = 1
    max_frames: int | None = None
    spatial_multiple: int = 1
    frame_rate: float | None = None
    cache_id: str = ""
    supports_token_routing: bool = False
    num_blocks: int = 0
    block_taps: dict[str, int] = field(default_factory=dict)
    router: TokenRouter | None = None
    base_model: str = ""
    block_lists: list[str] = field(default_factory=list)
    encoders: dict[str, str] = field(default_factory=dict)
    refused_precisions: dict[str, str] = field(default_factory=dict)
    image_conditioned: bool = False
    experts: list[Expert] = field(default_factory=list)
    expert_switch: Callable[[Expert], None] | None = None
    hidden_size: int = 0
    token_grid: Callable[[dict[str, torch.Tensor]], tuple[int, int, int]] | None = None
    block_tokens: Callable[[Any], torch.Tensor] | None = None
    trainables: dict[str, torch.nn.Module] = field(default_factory=dict)
    count_prompt_tokens: Callable[[list[str]], list[int]] | None = None
    max_prompt_tokens: int = 0
    auto_lora_format: str = "diffusers"
    renders_previews: bool = False
    flavour: str = ""
    architecture: str = ""
    implementation: str = ""
    pipeline_tag: str = ""
    license: str = ""
    rewritable_inputs: bool = False
    input_rewriter: InputRewriter | None = None
    training_step: int = 0

    def latent_tokens(self, block_output: Any) -> torch.Tensor:
        """The latent tokens' hidden states in what a block of the first ``block_lists`` stack returned."""
        if self.block_tokens is not None:
            return self.block_tokens(block_output)
        return block_output[0] if isinstance(block_output, tuple) else block_output

    def trained_experts(self) -> list[Expert]:
        """The experts the run trains; a single denoiser is one expert over the whole range."""
        if not self.experts:
            return [Expert("denoiser", self.denoiser)]
        return [e for e in self.experts if e.trained]

    def denoisers(self) -> list[torch.nn.Module]:
        """Every denoising network of the bundle, trained or frozen."""
        return [e.module for e in self.experts] or [self.denoiser]

    def sigma_range(self) -> tuple[float, float]:
        """The noise levels training samples: the span of the trained experts' ranges."""
        ranges = [e.sigma_range for e in self.trained_experts()]
        return min(r[0] for r in ranges), max(r[1] for r in ranges)

    def enter(self, expert: Expert) -> torch.nn.Module:
        """The module of ``expert``, ready to run (on the accelerator when experts take turns)."""
        if self.expert_switch is not None:
            self.expert_switch(expert)
        return expert.module
