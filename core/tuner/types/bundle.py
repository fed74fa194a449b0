"""What a model family's `load_model` hands to the core: the `ModelBundle`, its `Expert` denoisers and its run slots.

A bundle holds two kinds of field. The family *declares* the model in the
`ModelBundle` fields when `load_model` returns; nobody changes them after.
The core and the features *write* `RunSlots` (``bundle.run``) while the run is
set up, and the core writes ``run.training_step`` before each step; a family
leaves them as they are and reads them in its forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from tuner.train.noising import InputRewriter
    from tuner.types.routes import TokenRouter

__all__ = ["Expert", "ModelBundle", "RunSlots"]


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
        trained experts, each adapter file's stem ends in ``_<label>``
        (``pytorch_lora_weights_high_noise.safetensors``; ``_<name>`` when the
        label is empty).
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
class RunSlots:
    """What the core and the features write into a bundle after `load_model` (``bundle.run``).

    Features write theirs in `prepare_model`; the core fills the others once
    the features are in place (``router``, ``input_rewriter``, ``expert_switch``
    unless a feature set it) and ``training_step`` before each step. The family
    reads them in its training forward: it carries out ``router``'s plan, builds
    its input through `tuner.train.noising.noisy_inputs` (which applies
    ``input_rewriter``) and enters each expert with `ModelBundle.enter` (which
    calls ``expert_switch``).

    :ivar block_taps: written by features that read the hidden states a block
        outputs (a representation-alignment loss, for instance), in
        `prepare_model`: feature name -> block index (negative counts from the
        last block). The core refuses a token router whose spans cover a tap,
        since inside a span only the kept tokens exist.
    :ivar trainables: small modules a feature trains together with the adapter
        (a projection head, say), added in `prepare_model` with
        ``phase="adapted"``: name -> module. The core makes their parameters
        float32 and trainable, moves them to the training device, puts them in
        the optimizer after the adapter's, clips them with it, and saves and
        restores them in checkpoints; they are not exported with the adapter
        and not averaged by EMA. Why a slot and not a hidden attribute of the
        denoiser: checkpoints, resume and the optimizer must all see them.
    :ivar expert_switch: called with the expert about to run when experts take
        turns on the accelerator: set by the core (`tuner.train.experts`), or
        first by a feature that places the weights itself (offloading), which
        the core then leaves alone.
    :ivar router: the token router, set by the core when a plugin answers
        `route_tokens` and the routing fits the model
        (`tuner.routing.check_routing`); ``None`` otherwise, and while
        validating.
    :ivar input_rewriter: set by the core when a plugin answers
        `rewrite_noisy_input`.
    :ivar training_step: optimizer steps done before the one running; set by the
        core before each step (a rewriter's schedule reads it).
    """

    block_taps: dict[str, int] = field(default_factory=dict)
    trainables: dict[str, torch.nn.Module] = field(default_factory=dict)
    expert_switch: Callable[[Expert], None] | None = None
    router: TokenRouter | None = None
    input_rewriter: InputRewriter | None = None
    training_step: int = 0


@dataclass
class ModelBundle:
    """What a model family's `load_model` hands to the core: the model, declared once.

    Every field here is the family's to set when it builds the bundle; what the
    core and the features write later lives in ``run`` (`RunSlots`).

    The networks and how features find their way in them:

    :ivar family: the family name the plugin registered (e.g. ``"wan"``).
    :ivar denoiser: the network the adapter is attached to and trained (with
        ``experts``: the first trained expert's module).
    :ivar lora_target_modules: module-name suffixes the default LoRA targets
        (peft's ``target_modules``), chosen by the family.
    :ivar components: everything else the family needs (VAE, text encoder,
        tokenizer, scheduler, ...). The core never looks inside.
    :ivar experts: for models whose noise range is split between several
        denoisers, every one of them (trained or frozen), in the order the
        family names them; ``denoiser`` is then the first trained one. Empty
        for a single denoiser over the whole range. The core attaches an
        adapter to each trained expert and samples sigmas only inside their
        ranges; the family runs each sample through the expert that owns its
        sigma with `tuner.train.experts.run_experts` (by hand: `Expert.owns`,
        entering it with `enter`). Features that change the denoiser's weights
        or kernels (quantization, attention, offload) apply to every module of
        `denoisers`.
    :ivar block_lists: dotted paths, inside ``denoiser``, of the
        ``torch.nn.ModuleList`` objects holding its repeated blocks in execution
        order (``["blocks"]``; Flux: ``["transformer_blocks",
        "single_transformer_blocks"]``); memory features (offloading, block
        swap, quantization) find the blocks through it, and a token router
        plans over all of them (`num_blocks`).
    :ivar encoders: the networks in ``components`` that only encode inputs:
        component key -> kind (``"text"``, ``"latent"``, ``"image"``). Text
        encoders are numbered in this order (``text_encoder_1_precision``
        applies to the first); offloading moves these on and off the
        accelerator as they are used.
    :ivar hidden_size: width of the hidden states the blocks of ``block_lists``
        output; a feature that reads a block (``run.block_taps``) sizes its
        head by it. 0 when the family does not say.
    :ivar token_grid: given a batch as `compute_loss` receives it, the
        ``(frames, height, width)`` grid of the latent tokens the blocks see,
        which the blocks hold frame-major (``frame * height * width + row *
        width + column``); ``None`` when the family does not say. Features that
        read a block per frame (CREPA) need it. An image family gives one frame.
    :ivar block_tokens: given what a block of the first ``block_lists`` stack
        returns, the hidden states of the latent tokens ``(batch, tokens,
        hidden_size)`` in `token_grid`'s order, other tokens (text) left out;
        ``None`` when the block returns exactly those, alone or first in a
        tuple. Features that read a block (``run.block_taps``) take them
        through it (`latent_tokens`).

    What the data must look like, and what the model can do:

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
    :ivar count_prompt_tokens: ``prompts -> token counts``, as the family's
        tokenizer counts them before any cut; with `max_prompt_tokens` (the
        tokens `encode_prompts` keeps) the core tells the user, once, which
        captions are cut. ``None``: the family does not cut prompts.
    :ivar max_prompt_tokens: the tokens of a prompt `encode_prompts` keeps.
    :ivar refused_precisions: base-weight precisions this family cannot train
        in (e.g. ``"int4-quanto"``) -> why; a quantization plugin refuses them
        at start-up with that reason.
    :ivar supports_token_routing: the family's training forward carries out
        the plan of ``run.router`` (see `tuner.types.routes.TokenRouter`); the
        core refuses a router for a family without it.
    :ivar rewritable_inputs: the family's `compute_loss` builds its forward's
        input with `tuner.train.noising.noisy_inputs` and scores the prediction
        with `NoisyInputs.errors`, so a feature may rewrite both (scheduled
        sampling, ``run.input_rewriter``); the core refuses such a feature at
        start-up otherwise.
    :ivar image_conditioned: the model generates from a given first frame
        (image-to-video): each validation prompt needs an image, which the core
        passes in `ValidationRequest.conditioning_frames`; a run without any
        stops at start-up.
    :ivar renders_previews: the family's `validate` honours
        `ValidationRequest.preview_steps` (``validation_preview``); for a family
        that does not, the option is ignored with a notice at start-up.
    :ivar auto_lora_format: the key layout ``lora_format = "auto"`` (the
        default) exports, ``"diffusers"`` or ``"comfyui"``: the family names the
        one that loads in the most tools (ComfyUI and its diffusers pipeline
        alike), shown by a test of the family. The core resolves ``"auto"``
        with it, so `export_adapter` only ever sees those two.

    What outputs say about the model (adapter files, model card, checkpoints):

    :ivar base_model: where the base weights came from (hub id or path), for
        model cards and trackers.
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

    Written after `load_model`:

    :ivar run: the slots the core and the features fill (`RunSlots`); a family
        leaves them as they are.
    """

    family: str
    denoiser: torch.nn.Module
    lora_target_modules: list[str]
    components: dict[str, Any] = field(default_factory=dict)
    experts: list[Expert] = field(default_factory=list)
    block_lists: list[str] = field(default_factory=list)
    encoders: dict[str, str] = field(default_factory=dict)
    hidden_size: int = 0
    token_grid: Callable[[dict[str, torch.Tensor]], tuple[int, int, int]] | None = None
    block_tokens: Callable[[Any], torch.Tensor] | None = None
    # What the data must look like, and what the model can do.
    temporal_compression: int = 1
    max_frames: int | None = None
    spatial_multiple: int = 1
    frame_rate: float | None = None
    cache_id: str = ""
    count_prompt_tokens: Callable[[list[str]], list[int]] | None = None
    max_prompt_tokens: int = 0
    refused_precisions: dict[str, str] = field(default_factory=dict)
    supports_token_routing: bool = False
    rewritable_inputs: bool = False
    image_conditioned: bool = False
    renders_previews: bool = False
    auto_lora_format: str = "diffusers"
    # What outputs say about the model.
    base_model: str = ""
    flavour: str = ""
    architecture: str = ""
    implementation: str = ""
    pipeline_tag: str = ""
    license: str = ""
    # Written after load_model by the core and the features.
    run: RunSlots = field(default_factory=RunSlots)

    @property
    def num_blocks(self) -> int:
        """The blocks a token router plans over: every block of ``block_lists``, in order (0 without any).

        Counted from the denoiser, so a family never states it: Flux's double
        blocks and then its single blocks make one stack of their sum.
        """
        return sum(len(self.denoiser.get_submodule(path)) for path in self.block_lists)

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
        if self.run.expert_switch is not None:
            self.run.expert_switch(expert)
        return expert.module
