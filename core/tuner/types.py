"""The objects that travel through the hooks.

Plugins receive and return these; the core owns their shape. They hold torch
objects but import nothing heavy at module level, so the CLI stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    import torch

    from tuner.train.noising import InputRewriter

__all__ = [
    "AdapterWeights",
    "AuxiliaryLoss",
    "ClipFeatures",
    "Expert",
    "ModelBundle",
    "LossOutput",
    "ValidationRequest",
    "SkipLayerGuidance",
    "ValidationResult",
    "RunInfo",
    "TokenRoute",
    "TokenRouter",
]


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


_SUBMODULE_PARAMS = {"lora_A", "lora_B", "lora_down", "lora_up", "lora_mid", "a1", "a2", "b1", "b2"}
# A LoKr module's tensors when neither factor is low-rank (LyCORIS's "full matrix" mode).
_FULL_KRONECKER = {"lokr_w1", "lokr_w2", "dora_scale"}


@dataclass
class AdapterWeights:
    """Trained adapter weights, named by the module they modify.

    :ivar kind: ``"lora"`` (peft) or ``"lycoris"``.
    :ivar tensors: ``"<module path>.<param>"`` -> tensor, e.g.
        ``blocks.0.attn1.to_q.lora_A.weight`` or ``blocks.0.attn1.to_q.lokr_w1``.
    :ivar alphas: LoRA only: module path -> alpha (the branch is scaled by alpha / rank).
    :ivar ranks: LoRA only: module path -> rank.
    """

    kind: str
    tensors: dict[str, torch.Tensor]
    alphas: dict[str, float] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)

    def modules(self) -> list[str]:
        """Module paths in first-seen order."""
        seen: dict[str, None] = {}
        for key in self.tensors:
            seen[self.module_of(key)] = None
        return list(seen)

    def module_of(self, key: str) -> str:
        # Parameters that are themselves a submodule's weight (peft's lora_A, LyCORIS's LoCon and GLoRA).
        if key.endswith(".weight") and key.rsplit(".", 2)[1] in _SUBMODULE_PARAMS:
            return key.rsplit(".", 2)[0]
        return key.rsplit(".", 1)[0]

    def scale_baked(self) -> dict[str, torch.Tensor]:
        """LoRA tensors with alpha / rank folded into ``lora_B``, for loaders that assume scale 1."""
        out = dict(self.tensors)
        for module, alpha in self.alphas.items():
            scale = alpha / self.ranks[module]
            if scale != 1.0:
                key = f"{module}.lora_B.weight"
                out[key] = (out[key].float() * scale).to(out[key].dtype)  # one rounding for a bf16/fp16 save_dtype
        return out

    def idle_alphas(self) -> set[str]:
        """Modules whose stored ``alpha`` scales nothing: a LyCORIS LoKr with both Kronecker factors full.

        LyCORIS then stores ``alpha = linear_dim`` (10000 in common configs) and
        applies scale 1, while a loader that divides the alpha by some rank of
        its own would scale the delta far off. An exporter leaves these alphas
        out: every loader applies scale 1 to a module without one.
        """
        params: dict[str, set[str]] = {}
        for key in self.tensors:
            module = self.module_of(key)
            params.setdefault(module, set()).add(key[len(module) + 1 :])
        return {m for m, p in params.items() if "alpha" in p and p - {"alpha"} <= _FULL_KRONECKER}

    def native(self) -> dict[str, torch.Tensor]:
        """The adapter library's own layout: peft names for LoRA, ``lycoris_a_b_c.param`` for LyCORIS."""
        if self.kind != "lycoris":
            return dict(self.tensors)
        return {
            f"lycoris_{self.module_of(k).replace('.', '_')}.{k.rsplit('.', 1)[1]}": v for k, v in self.tensors.items()
        }


@dataclass
class LossOutput:
    """What `compute_loss` returns.

    :ivar loss: a scalar tensor to back-propagate (mean over the micro-batch).
    :ivar logs: plain floats shown in the progress bar and sent to trackers.
    :ivar sigmas: optional ``(batch,)`` noise levels drawn for the samples.
        Features that add a loss term read them (with several trained experts,
        a sample ran through the expert that owns its sigma, `Expert.owns`).
    """

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)
    sigmas: torch.Tensor | None = None


@dataclass
class AuxiliaryLoss:
    """A term a feature adds to the training loss (returned by `auxiliary_loss`).

    The core back-propagates ``loss + sum(weight * term.loss)``; a term whose
    weight is 0 is left out of the graph (its logs still appear).

    :ivar name: the feature's name, for errors.
    :ivar loss: scalar tensor, unweighted; ``None`` when only logs are given.
    :ivar weight: the term's weight at this step (a feature's own schedule).
    :ivar logs: plain floats merged into the step's logs (keep names unique:
        prefix them with the feature's name).
    """

    name: str
    loss: torch.Tensor | None
    weight: float = 1.0
    logs: dict[str, float] = field(default_factory=dict)


class ClipFeatures(Protocol):
    """Per-clip tensors a feature computes from the clean pixels, cached beside the latents.

    Returned by `clip_features` at set-up. Its entries are content-keyed like
    the latent cache (the latent entry's key plus ``name`` and ``identity``),
    written atomically, built only for clips that lack them, and merged into
    the batch `compute_loss` gets, so a run whose caches are complete never
    loads the feature's encoder.

    :ivar name: names the feature in entry keys and errors.
    :ivar identity: changes whenever what `encode` returns would change (the
        encoder, its input size, a version): entries made otherwise are not
        reused.
    """

    name: str
    identity: str

    def start(self, latents_to_encode: int) -> None:
        """Called once before any clip is encoded (also when nothing is), with how many clips still
        need the family's latents (`encode_batch`). A feature that frees the latent encoder refuses
        here when that is not 0."""
        ...

    def encode(self, pixels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """``(batch, frames, channels, height, width)`` pixels in ``[-1, 1]`` -> one dict of CPU tensors
        per clip, called under ``torch.no_grad()`` on the encoding thread. Key names must differ
        from the family's (prefix them with ``name``)."""
        ...

    def done(self) -> None:
        """The caches are complete: release whatever `encode` loaded."""
        ...


@dataclass
class ValidationRequest:
    """One validation round.

    :ivar step: the optimizer step the round belongs to (0 = before training).
    :ivar prompts: nickname -> prompt; nicknames name the output files.
    :ivar negative_prompt: shared negative prompt ('' for none).
    :ivar num_frames: frames per clip (1 for images).
    :ivar width: output width in pixels.
    :ivar height: output height in pixels.
    :ivar num_inference_steps: sampler steps.
    :ivar guidance_scale: classifier-free guidance scale.
    :ivar seed: noise seed; the same seed every round makes rounds comparable.
    :ivar output_dir: the folder the media go into (already created).
    :ivar fps: frame rate of written videos.
    :ivar skip_layer_guidance: skip-layer guidance to apply, or ``None``.
    :ivar conditioning_frames: for an image-conditioned model
        (`ModelBundle.image_conditioned`): nickname -> the frames to start from,
        ``(n, height, width, 3)`` uint8 at the request's size (resized to cover
        it, centre-cropped): the first frame and, when the source has one, the
        last (a video's last frame, or a library entry's ``last_image``). A
        family that conditions on the first frame only uses ``[0]``.
    :ivar preview_steps: sampler steps (counted from 1) at which to return a
        cheap preview of the clip in `ValidationResult.preview_frames`: the
        denoised estimate at that step, decoded at low cost. Empty: no previews
        (always empty for a bundle whose ``renders_previews`` is false).
    :ivar on_sampler_step: a family calls it once after each sampler step of
        each clip (no argument) so that the round's progress moves while a
        clip renders; ``None``: nobody listens. A family that never calls it
        still works: the progress then moves a whole clip at a time.
    :ivar on_preview: set by the core when previews are asked for: call it
        ``on_preview(key, step, frames)`` as soon as the preview of sampler step
        ``step`` is rendered, with the same frames later returned in
        ``preview_frames``; the core writes the file then and reports it
        (`on_validation_preview`), so a webhook sees it while the sampler runs.
        A family that never calls it still works: its previews are written and
        reported when its ``validate`` returns.
    """

    step: int
    prompts: dict[str, str]
    negative_prompt: str
    num_frames: int
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    output_dir: Path
    fps: int = 16
    skip_layer_guidance: SkipLayerGuidance | None = None
    conditioning_frames: dict[str, Any] = field(default_factory=dict)
    preview_steps: tuple[int, ...] = ()
    on_sampler_step: Callable[[], None] | None = None
    on_preview: Callable[[str, int, Any], None] | None = None


@dataclass(frozen=True)
class SkipLayerGuidance:
    """Skip-layer guidance for one validation round.

    On the sampler steps inside ``[start, stop)`` (fractions of the steps), run
    one more conditional pass with the blocks ``layers`` skipped and add
    ``scale * (full - skipped)`` to the guided prediction.

    :ivar layers: indices of the blocks to skip (0-based).
    :ivar start: fraction of the steps after which it starts.
    :ivar stop: fraction of the steps after which it stops.
    :ivar scale: strength of the correction.
    """

    layers: tuple[int, ...]
    start: float
    stop: float
    scale: float

    def active(self, index: int, num_steps: int) -> bool:
        """Whether sampler step ``index`` (0-based) of ``num_steps`` gets the extra pass."""
        return self.start * num_steps <= index < self.stop * num_steps


@dataclass
class ValidationResult:
    """What `validate` returns.

    :ivar step: the step of the request.
    :ivar frames: nickname -> rendered frames, ``(frames, height, width, 3)``,
        float in ``[0, 1]`` or uint8. The core writes them (mp4 for clips, PNG
        for single frames) and adds the contact sheet: return frames rather
        than writing files yourself.
    :ivar media: nickname -> file. In the result the core passes to
        `on_validation_done`, every file of the round; a family may also write
        files itself and name them here.
    :ivar contact_sheet: the round's contact sheet PNG (set by the core).
    :ivar preview_frames: from the family, when the request has
        ``preview_steps``: nickname -> {sampler step -> preview frames}, one
        entry per requested step, frames as in ``frames`` (a few frames, or one,
        at any size: they are previews). The core writes them and puts them on
        the contact sheet.
    :ivar previews: in the result the core passes to `on_validation_done`: the
        preview files written, media key -> {sampler step -> file}.
    """

    step: int
    media: dict[str, Path] = field(default_factory=dict)
    frames: dict[str, Any] = field(default_factory=dict)
    contact_sheet: Path | None = None
    preview_frames: dict[str, dict[int, Any]] = field(default_factory=dict)
    previews: dict[str, dict[int, Path]] = field(default_factory=dict)


@dataclass(eq=False)  # compared and hashed by identity: plugins may key per-run state on it
class RunInfo:
    """Facts about the run, passed to the lifecycle hooks.

    :ivar output_dir: where checkpoints, adapters and validation media go.
    :ivar max_train_steps: optimizer steps the run will take.
    :ivar start_step: 0 for a fresh run, k when resuming after step k.
    :ivar family: the model family being trained.
    :ivar config: the resolved `tuner.config.RunConfig`.
    :ivar base_model: the bundle's ``base_model`` (hub id or path of the base weights).
    :ivar pipeline_tag: the bundle's ``pipeline_tag`` (the Hub's task).
    :ivar flavour: the bundle's ``flavour``.
    :ivar license: the bundle's ``license``.
    """

    output_dir: Path
    max_train_steps: int
    start_step: int
    family: str
    config: Any
    base_model: str = ""
    pipeline_tag: str = ""
    flavour: str = ""
    license: str = ""


class TokenRoute(NamedTuple):
    """One span of one training forward: which tokens run through it.

    :ivar start: first block of the span (resolved, ``0 <= start``).
    :ivar end: last block of the span, inclusive.
    :ivar keep: ``(batch, kept)`` long tensor, ascending within each row: the
        positions (in the family's routable token sequence) that run through
        blocks ``start..end``. Every other token skips the span and rejoins,
        unchanged and in place, after block ``end``.
    """

    start: int
    end: int
    keep: torch.Tensor


class TokenRouter(Protocol):
    """A policy for which tokens skip which blocks (returned by `route_tokens`).

    The model family owns the mechanism: before a span it gathers the kept
    tokens together with everything that travels per token (positional
    encodings, per-token conditioning), runs the span's blocks on them, and
    scatters them back into place after it (see `tuner.routing`). The router
    only decides. A family calls `plan` once per training forward and never
    while validating or at inference.

    Routable tokens are the family's latent (image / video) tokens; text and
    other context tokens are never routed. A router may also carry an
    ``option`` attribute, the config option that sets its routes, which
    start-up errors name.
    """

    def spans(self, num_blocks: int) -> list[tuple[int, int]]:
        """The block spans ``[(start, end), ...]`` (inclusive, in order) for a stack of ``num_blocks``.

        Called by the core at set-up; raise `tuner.errors.ConfigError` when
        the configured spans do not fit a model of this depth.
        """
        ...

    def plan(
        self,
        num_blocks: int,
        num_tokens: int,
        batch_size: int,
        generator: torch.Generator | None,
        force_keep: torch.Tensor | None = None,
    ) -> list[TokenRoute]:
        """Choose the tokens of one forward: one `TokenRoute` per span that skips anything.

        :param num_blocks: the depth of the block stack.
        :param num_tokens: routable tokens per sample.
        :param batch_size: samples in the batch; every sample keeps the same
            number of tokens so the kept ones stack into one tensor.
        :param generator: draw all randomness from it (the one `compute_loss`
            received), so routing repeats exactly when the run does.
        :param force_keep: optional ``(batch, num_tokens)`` bool tensor; tokens
            marked True never skip a span (conditioning frames, the tokens a
            loss mask keeps).
        :return: routes in block order; the ``keep`` tensors live on the
            generator's device.
        """
        ...
