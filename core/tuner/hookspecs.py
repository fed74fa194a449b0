"""The plugin contract: every hook tuner calls, and what it expects back.

This module is the plugin author's manual. A plugin is any object or module with
functions named like the hooks below and marked ``@tuner.hookimpl``; publish it
under the ``tuner.plugins`` entry-point group::

    [project.entry-points."tuner.plugins"]
    myplugin = "my_package.plugin"

Three kinds of hook live here.

* **Registration hooks** run once while plugins load. A plugin receives a
  ``register`` callback and calls it for each thing it contributes; the core
  validates and owns the registries.
* **Model-family hooks** (``firstresult``) are answered by the one plugin that
  registered the family named by the config's ``model_family``; the core calls
  them on that plugin alone, so a family never has to check whether it is meant.
* **Feature and lifecycle hooks** go to every active plugin. Features change
  the model once at set-up (``prepare_model``), offer objects the core installs
  (``route_tokens``, ``rewrite_noisy_input``, ``clip_features``) and add loss
  terms (``auxiliary_loss``); lifecycle hooks observe the run and must not
  change it.

Hooks run at set-up, once per micro-batch (``compute_loss``,
``auxiliary_loss``) or once per step at most, never per block or per token.
Anything that must act inside the forward pass is an object a hook returns,
which the core or the family installs once; the core keeps what it installs
in ``bundle.run`` (`tuner.types.bundle.RunSlots`).

Plugins never import one another: they meet only through these hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pluggy

if TYPE_CHECKING:
    import torch
    from pydantic import BaseModel

    from tuner.config import RunConfig
    from tuner.family_profile import FamilyProfile
    from tuner.lora.layouts import LoraNaming
    from tuner.types.adapter import AdapterWeights
    from tuner.types.bundle import ModelBundle
    from tuner.types.routes import TokenRouter
    from tuner.types.training import AuxiliaryLoss, ClipFeatures, LossOutput, RunInfo
    from tuner.types.validation import ValidationRequest, ValidationResult
    from tuner.train.noising import InputRewriter

__all__ = ["hookspec", "hookimpl", "PROJECT"]

PROJECT = "tuner"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------


@hookspec
def register_config_sections(register: Callable[[str, type[BaseModel]], None]) -> None:
    """Contribute this plugin's config section(s).

    Called once, right after this plugin is registered (a plugin registered
    late still gets the call), with a callback bound to this plugin.

    :param register: call ``register(name, model)`` with the section's name
        (the TOML table, e.g. ``"wan"``) and a pydantic model whose fields are
        the options. Give every field a default and a ``description``, and set
        ``model_config = ConfigDict(extra="forbid", allow_inf_nan=False)`` so a
        mistyped key is an error and ``inf``/``nan`` are refused where a
        number must be finite (give float fields both bounds otherwise).
        Field names must be unique across all sections: a user may
        write any option at the top level of the config (as the Wan guide
        does) and the core finds its section by name. Optionally:

        - another spelling a field also accepts: ``validation_alias=
          AliasChoices(name, other)`` (the core maps ``other`` to ``name``,
          flat or in the table, and refuses both at once);
        - a field typed ``Path`` (or ``Path | None``, or a union holding one)
          is resolved by the core's one path rule (`tuner.config_paths`) and
          validated again with the absolute path;
        - ``environment_variables: ClassVar[tuple[str, ...]]`` on the model:
          fnmatch patterns of the environment variables the plugin reads; when
          one is set while the plugin is not enabled, the core says so.
    """


@hookspec
def register_model_families(register: Callable[..., None]) -> None:
    """Declare the model families this plugin implements.

    :param register: call ``register(name, description, aliases=(...))``;
        ``name`` is what a user writes as ``model_family``, and so is each of the
        optional ``aliases`` (other trainers' spellings). A config whose
        ``model_family`` is one of them switches this plugin on by itself, as
        SimpleTuner's ``"model_family": "wan"`` does. A plugin that registers a family must
        implement `load_model`, `encode_batch`, `encode_prompts` and
        `compute_loss`; the other family hooks are optional: without
        `validate` there is no validation, without `export_adapter` the
        adapter is saved in the adapter library's own key names, without
        `write_tiny_model` ``tuner demo`` cannot use the family, and
        `collate_prompts`, `eval_loss`, `lora_naming` and `describe_family`
        each say what their absence means.
    """


@hookspec
def register_data_backends(register: Callable[[str, Any], None]) -> None:
    """Contribute kinds of dataset storage: the values a backend file's ``type`` may take.

    Called once, right after this plugin is registered, with a callback bound to
    this plugin. The core registers its own ``local`` (a folder, read in place)
    and ``metadata`` (the files a JSONL/CSV/Parquet metadata file lists) the same
    way. A dataset whose ``type`` no active plugin registered is refused when the
    layout is read, naming the dataset, the registered types and the closest one.

    :param register: call ``register(name, backend)`` with the ``type`` a user
        writes (unique across plugins) and an instance of a subclass of
        `tuner.data.storage.DataBackend`. It must implement ``list_files(spec)``
        (every media file of the dataset, each named by a path under
        ``spec.root``, the dataset's ``instance_data_dir``) and ``open(path)``
        (the bytes of a listed file, or of the caption file beside it, as a
        seekable binary file). Optionally ``signature(path)`` (numbers that
        change when the bytes may have: the core then remembers each file's
        probe and digest between runs), ``probe``, ``read_caption`` and
        ``quarantine``. Everything else is the core's: captions (every
        ``caption_strategy``), probing, the content digest that keys the
        caches, sizing, buckets, decoding (from ``open``, in decoder threads)
        and the data report. One instance serves every dataset of its type
        and is called from several threads: keep per-dataset state keyed by
        ``spec.id``, or none.
    """


# --------------------------------------------------------------------------
# Model family (answered only by the plugin owning ``config.model_family``)
# --------------------------------------------------------------------------


@hookspec(firstresult=True)
def load_model(config: RunConfig, device: torch.device) -> ModelBundle:
    """Load every part of the model the run needs.

    Called once at start-up, before any cache is built.

    :param config: the resolved config; read your own section with
        ``config.section("<name>")``. Load the denoiser and text encoders in
        ``tuner.train.precision.base_weight_dtype(config)``.
    :param device: where training runs. Put the encoders there; leave the
        denoiser on the CPU: the core moves it to ``device`` once the caches
        are built (so encoding never shares the accelerator with it), unless
        a feature plugin placed it during `prepare_model` (offloading).
    :return: a `tuner.types.bundle.ModelBundle`. Freeze every parameter: the core
        attaches the adapter and decides what trains. Fill ``block_lists``,
        ``encoders`` and ``refused_precisions`` so that memory features can
        work on the model without knowing the family (``block_lists`` also
        gives a token router its depth, ``bundle.num_blocks``). A model whose noise
        range is split between several denoisers lists them in ``experts``
        (each with its sigma range, trained or frozen); load only the ones
        the run trains or validates with. Store the frozen denoiser in
        `tuner.train.precision.base_weight_dtype`: the core keeps the adapter
        float32, and accelerate runs the denoiser's ``forward`` under the
        ``mixed_precision`` autocast (a loss that calls its blocks directly
        opens the same autocast itself). Leave ``bundle.run`` as it is: the
        core and the features fill it (`tuner.types.bundle.RunSlots`).
    """


@hookspec(firstresult=True)
def encode_batch(bundle: ModelBundle, pixels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Encode a batch of clips (or images) into what the cache stores.

    Called while the latent cache is built, under ``torch.no_grad()``, with
    batches of clips that share one shape.

    :param bundle: the bundle `load_model` returned.
    :param pixels: float tensor ``(batch, frames, channels, height, width)`` in
        ``[-1, 1]``, on the training device.
        Images (and, for a family whose ``ModelBundle.max_frames`` is 1, clips)
        arrive with ``frames = 1``.
    :return: one dict of tensors per clip (e.g. ``{"latents": ...}``), kept on
        disk as given and handed back to `compute_loss` stacked per batch.
        Return CPU tensors in the dtype you want stored.
    """


@hookspec(firstresult=True)
def encode_prompts(bundle: ModelBundle, prompts: list[str]) -> list[dict[str, torch.Tensor]]:
    """Encode captions into what the text cache stores.

    Called while the text cache is built (and once for the empty prompt),
    under ``torch.no_grad()``.

    :param prompts: the captions of one batch.
    :return: one dict of CPU tensors per caption. Tensors may differ in length
        between captions; `collate_prompts` makes a batch of them.
    """


@hookspec(firstresult=True)
def collate_prompts(bundle: ModelBundle, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack cached prompt encodings into one batch (padding as the model expects).

    Optional: without it the core stacks each key with ``torch.stack``, which
    needs equal shapes.

    :param items: one dict per sample, as `encode_prompts` returned them.
    :return: a dict of batched tensors, merged into the batch `compute_loss` gets.
    """


@hookspec(firstresult=True)
def compute_loss(
    bundle: ModelBundle, batch: dict[str, torch.Tensor], generator: torch.Generator, config: RunConfig
) -> LossOutput:
    """Compute the training loss of one micro-batch.

    Called once per micro-batch inside the accumulation context; the core
    back-propagates the returned loss, clips, steps the optimizer and logs.
    With several processes it runs as the forward of accelerate's DDP wrapper
    (`tuner.train.data_parallel`), which averages the adapter's gradients after
    the backward; ``bundle.denoiser`` is still the plain model.

    :param batch: the cached tensors of the micro-batch, stacked, on the
        training device: every key `encode_batch` returned, plus the keys of
        the prompt encodings (after `collate_prompts`) and of any
        `clip_features`.
    :param generator: a generator seeded from ``(seed, micro-batch number)``,
        the number counted across steps and processes (so each process draws its
        own noise). Draw all noise and timesteps from it: that is what makes a
        resumed run repeat an uninterrupted one exactly. Draw sigmas with
        `tuner.train.timesteps.training_sigmas` and ``bundle.sigma_range()``,
        so that a run training some experts of a model draws only their
        noise levels; run each sample through the trained expert that owns
        its sigma with `tuner.train.experts.run_experts` (by hand: pick it
        with `tuner.types.bundle.Expert.owns` and enter it with
        ``bundle.enter(expert)``). A family that sets ``rewritable_inputs``
        builds the forward's input with `tuner.train.noising.noisy_inputs`
        (which applies ``bundle.run.input_rewriter``); one that sets
        ``supports_token_routing`` carries out the plan of
        ``bundle.run.router`` when it is set and the denoiser is training
        (see `route_tokens`).
    :param config: the resolved config.
    :return: a `tuner.types.training.LossOutput`.
    """


@hookspec(firstresult=True)
def validate(bundle: ModelBundle, request: ValidationRequest) -> ValidationResult:
    """Render one validation clip with the adapter as it is now.

    Called on the validation schedule (and at the end of the run) under
    ``torch.no_grad()``, with the denoiser in eval mode and a forked RNG; the
    core puts it back in train mode afterwards. Token routing is off during
    validation (``bundle.run.router`` is ``None``). The core calls it once per
    prompt, size and weight variant (trained / EMA weights, already swapped
    in), and writes the files.

    :param request: the one prompt (``request.prompt``) and the key that names
        its clip (``request.key``), size, frames, sampler settings and the
        seed. Seed a fresh generator from ``request.seed`` in every call, so
        every round starts from the same noise. When
        ``request.skip_layer_guidance`` is set, honour it or raise
        `tuner.errors.PluginError` saying the family cannot. For a model whose
        bundle is ``image_conditioned``, ``request.conditioning_frames`` gives
        the prompt's first (and, when there is one, last) frame at the
        request's size. When ``request.preview_steps`` is not empty (only for a
        bundle that sets ``renders_previews``), also return, for each of those
        sampler steps (counted from 1), a cheap preview of the clip: the
        denoised estimate at that step (flow matching: ``x0 = x_t - sigma *
        velocity``), decoded at low cost (a few frames, a tiny decoder). Take
        it from the sampler as it runs (a diffusers pipeline's
        ``callback_on_step_end``, or the family's own loop): previews must not
        change the final frames. Call ``request.on_sampler_step()`` after each
        sampler step and ``request.on_preview(key, step, frames)`` as each
        preview is rendered, when they are set: the round's progress and its
        previews then show while the clip renders.
    :return: a `tuner.types.validation.ValidationResult` whose ``frames`` maps
        ``request.key`` to the clip's frames, ``(frames, height, width, 3)`` in
        ``[0, 1]``. (A family may instead write a file into
        ``request.output_dir`` and name it in ``media`` under the key.) With
        preview steps, ``preview_frames`` maps the key to ``{step: frames}``
        for every requested step; the core writes them and adds them to the
        contact sheet.
    """


@hookspec(firstresult=True)
def eval_loss(
    bundle: ModelBundle,
    batch: dict[str, torch.Tensor],
    sigmas: torch.Tensor,
    generator: torch.Generator,
    config: RunConfig,
) -> torch.Tensor:
    """The training objective of a batch at given noise levels, per sample.

    Optional; without it a run cannot use ``eval_steps_interval``. Called for
    the stable evaluation loss under ``torch.no_grad()`` with the denoiser in
    eval mode, on held-out samples: the core repeats one sample along the
    batch, once per noise level.

    :param batch: as for `compute_loss`.
    :param sigmas: ``(batch,)`` noise levels in ``(0, 1)``, one per sample:
        use them instead of sampling any.
    :param generator: draw the noise from it (and nothing else random): it is
        seeded the same way every time, which is what makes the loss stable.
    :param config: the resolved config.
    :return: a ``(batch,)`` tensor, the loss of each sample, computed exactly
        as `compute_loss` computes it at those noise levels.
    """


@hookspec(firstresult=True)
def export_adapter(
    bundle: ModelBundle, weights: AdapterWeights, path: Path, lora_format: str, metadata: dict[str, str]
) -> Path | None:
    """Write the trained adapter in a format the family's tools load.

    Called at each checkpoint and at the end of the run (and once more for the
    EMA weights when ``use_ema`` is on), once per trained expert when the
    bundle has several (each with its own weights and ``path``).

    :param weights: a `tuner.types.adapter.AdapterWeights`: tensors named
        ``<module path>.<param>`` plus LoRA alphas and ranks. ``scale_baked()``
        folds alpha / rank into the weights for loaders that assume scale 1.
    :param path: the ``.safetensors`` file to write (a temporary name the core
        renames into place once the file is complete).
    :param lora_format: ``"diffusers"`` (the family's diffusers pipeline) or
        ``"comfyui"`` (the original model's key names, with alphas). The
        user's ``"auto"`` (the default) arrives resolved to the family's
        `ModelBundle.auto_lora_format`.
    :param metadata: the file's safetensors metadata (``ss_*``, ``modelspec.*``,
        diffusers' ``lora_adapter_metadata``, ``tuner.*``; see
        `tuner.lora.metadata`): pass it to ``save_file(..., metadata=)``.
        An implementation that does not take this argument still works: the
        core then adds the metadata to the file it wrote.
    :return: the path written, or ``None`` to let the core write the adapter
        library's own layout (`AdapterWeights.native`), e.g. for a combination
        of adapter kind and format the family has no layout for.
    """


@hookspec(firstresult=True)
def lora_naming() -> LoraNaming:
    """How the family's original model names the modules an adapter changes.

    Optional. With it, ``init_lora``, ``tuner lora info`` and ``tuner lora
    convert`` read and write the layouts in original names that other tools use
    (ComfyUI's ``diffusion_model.*``, kohya/musubi's ``lora_unet_*``); without
    it only the diffusers, peft and LyCORIS layouts are read. Called when one
    of those starts; it must not load weights.

    :return: a `tuner.lora.layouts.LoraNaming`: the two name maps (the
        denoiser's diffusers module path <-> the original's), where each layout
        loads, and optionally the family's own ``comfyui`` writer.
    """


@hookspec(firstresult=True)
def write_tiny_model(path: Path, seed: int, variant: str | None, real_width_blocks: int | None) -> dict[str, Any]:
    """Write a tiny randomly initialised model of this family to ``path``.

    Used by ``tuner demo`` and by the `tuner.testing.fixtures`: it must use the
    same on-disk layout as the real model (so `load_model` is exercised for
    real) and build everything locally (no downloads; a T5 tokenizer comes
    from `tuner.testing.tiny.write_t5_tokenizer`).

    :param path: an empty folder to write into.
    :param seed: seed for the random weights.
    :param variant: which of the family's model shapes to write, in the
        family's own words (Wan: a ``model_flavour`` such as
        ``i2v-14b-2.2-high``); ``None`` for the family's default. Raise
        `tuner.errors.ConfigError` for a variant the family does not know.
        An implementation may leave this parameter out if it has one shape.
    :param real_width_blocks: ``None`` for the tiny shape. A number asks for
        the denoiser at the variant's *real* layer widths (hidden, feed-forward,
        heads, text and image widths as the published model has them) with
        only that many blocks, random weights, in the same layout; the
        encoders may stay tiny inside but must output the widths the denoiser
        reads. The true-width tests and GPU benches use it (no download).
        `tuner.testing.tiny.random_model` builds such a model in seconds. A family
        that leaves this parameter out cannot write one, and the host says so.
    :return: config overrides that make a run use this model and suit its
        size, as ``{"section.key": value}`` (e.g. the model path). An image
        family includes ``"data.num_frames": 1``: the demo and the test
        fixtures then write synthetic stills instead of clips.
    """


@hookspec(firstresult=True)
def describe_family() -> FamilyProfile:
    """Describe the family's models for ``tuner configure``, before any weight is loaded.

    Optional: without it the wizard cannot set up a run of this family. Called
    when the wizard starts; it may import torch and diffusers (the wizard is a
    command, not ``tuner --help``) but must not download or load weights.

    :return: a `tuner.family_profile.FamilyProfile`: the flavours a user picks
        from (the default first), each with the config entries that select it,
        where its weights come from, its denoiser's config and sensible
        resolution, frames and validation settings; the frame rule
        (``frame_step``: lengths of ``frame_step * k + 1`` frames); and
        ``shape``, which counts a denoiser's parameters, adapted layers and
        saved activations from its config for the memory and step-time
        estimate (`tuner.setup.estimate`). Measure the activation counts with
        `tuner.setup.measure.saved_activation_bytes` and keep a test that
        holds them to it.
    """


# --------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------


@hookspec
def prepare_model(
    bundle: ModelBundle, config: RunConfig, phase: Literal["base", "adapted"], device: torch.device
) -> None:
    """Change the model in place, before training starts.

    Called twice on every active plugin: with ``phase="base"`` right after
    `load_model` and before the adapter is attached (quantize the base, swap
    the attention backend, chunk feed-forward layers), then with
    ``phase="adapted"`` once the adapter exists (offloading, a feature's own
    trainable modules).
    Order between plugins with ``@hookimpl(tryfirst=True)`` /
    ``trylast=True``. Install behaviour as module hooks or processors, not by
    patching library functions globally. A feature that reads the hidden
    states a block outputs records it in ``bundle.run.block_taps`` here, so that
    token routing over that block is refused at start-up. A feature that
    trains a module of its own (a projection head) adds it to
    ``bundle.run.trainables`` in the ``"adapted"`` phase: the core optimizes,
    clips, checkpoints and restores it with the adapter (see
    `tuner.types.bundle.RunSlots`). Of ``bundle.run`` a feature writes only
    these two and, when it places the weights itself (offloading),
    ``expert_switch`` in the ``"adapted"`` phase.

    :param device: where training runs. The denoiser may still be on the CPU
        (see `load_model`); a plugin that places weights itself (offloading)
        uses this as the accelerator to stream them to.
    """


@hookspec(firstresult=True)
def route_tokens(bundle: ModelBundle, config: RunConfig) -> TokenRouter | None:
    """Offer a token router (e.g. TREAD) for the training forward.

    Called once at set-up after `prepare_model`. Return ``None`` when your
    feature is off. When a router is returned, the core checks it against the
    model before any step (`tuner.routing.check_routing`): the run fails at
    start-up, with one line, when the family's ``supports_token_routing`` is
    false, when ``router.spans(bundle.num_blocks)`` raises (spans that do not
    fit the model), or when a span covers a block in ``bundle.run.block_taps``.
    Then the core sets ``bundle.run.router``; the family calls ``router.plan``
    once per training forward and carries the plan out (validation and
    inference never route): `tuner.routing.routed_blocks` does it with hooks
    on a block stack, `tuner.routing.gather_tokens` / `scatter_tokens` by hand.

    :param bundle: the model, adapter attached; ``bundle.num_blocks`` is the
        depth of the block stack the router plans for.
    :return: a `tuner.types.routes.TokenRouter`, or ``None``.
    """


@hookspec(firstresult=True)
def rewrite_noisy_input(bundle: ModelBundle, config: RunConfig) -> InputRewriter | None:
    """Offer to rewrite the training forward's noisy input and objective (e.g. scheduled sampling).

    Called once at set-up, after `route_tokens`. Return ``None`` when your
    feature is off; one plugin at most may answer. The core refuses the run
    at start-up, in one line, when the family's ``rewritable_inputs`` is
    false; else it sets ``bundle.run.input_rewriter``, and the family's
    `compute_loss` hands every micro-batch's inputs to it through
    `tuner.train.noising.noisy_inputs`, with a ``predict`` callable that runs
    the family's own forward with the batch's conditioning. Why a hook: a
    method that trains on the model's own rollout needs that forward, which
    only the family knows, while the family must not know the method.

    :param bundle: the model, adapter attached (``bundle.sigma_range()`` is the
        noise range the trained experts own).
    :return: a `tuner.train.noising.InputRewriter`, or ``None``.
    """


@hookspec
def clip_features(bundle: ModelBundle, config: RunConfig) -> ClipFeatures | None:
    """Offer per-clip tensors, computed once from the clean pixels and cached with the latents.

    Called once at set-up, after `route_tokens` and before the caches are
    built; every active plugin may answer. Why a hook of its own: a feature
    whose loss compares the model with a frozen encoder's view of the clip
    (CREPA's DINOv2 features) would otherwise have to decode latents back to
    pixels and run that encoder at every step. Here the core hands the
    feature the same decoded pixels it gives `encode_batch`, only for clips
    whose entry is missing, keys the entries like the latent cache, and merges
    the stored tensors into every batch `compute_loss` and `auxiliary_loss`
    receive.

    :param bundle: the model, adapter attached.
    :return: a `tuner.types.training.ClipFeatures` (its ``name``, ``identity``,
        ``start``, ``encode`` and ``done``), or ``None`` when your feature is off.
    """


@hookspec
def auxiliary_loss(
    bundle: ModelBundle, batch: dict[str, torch.Tensor], output: LossOutput, step: int, config: RunConfig
) -> AuxiliaryLoss | None:
    """Add a weighted term to the training loss of one micro-batch.

    Called on every active plugin right after `compute_loss`, inside the same
    accumulation context; the core back-propagates ``output.loss + sum(weight
    * term)`` and merges each term's logs into the step's. This is how a
    feature regularises training without the family knowing it: it reads
    what it captured during the forward (with objects installed once in
    `prepare_model`, e.g. a forward hook on a block) and the batch.

    :param batch: the micro-batch as `compute_loss` received it (with the
        tensors of any `clip_features`).
    :param output: what `compute_loss` returned (its ``sigmas`` tell which
        expert ran which sample).
    :param step: optimizer steps done before this one (0 for the first), for
        a feature's weight schedule.
    :return: a `tuner.types.training.AuxiliaryLoss`, or ``None`` when your feature is off.
    """


# --------------------------------------------------------------------------
# Lifecycle (observe; must not change training)
# --------------------------------------------------------------------------


@hookspec
def on_run_start(run: RunInfo) -> None:
    """The model, adapter and caches are ready; the first step is next.

    :param run: facts about the run (``start_step`` > 0 when resuming).
    """


@hookspec
def on_step_end(run: RunInfo, step: int, logs: dict[str, float]) -> None:
    """An optimizer step finished.

    :param step: the number of optimizer steps done so far (1 after the first).
    :param logs: ``loss``, ``lr`` and ``step_time``; ``grad_norm`` when the
        step back-propagated, ``skipped`` when its update was dropped (a bad
        loss, an fp16 overflow), ``eval_loss`` on the steps the evaluation
        loss is computed, and what `compute_loss` and `auxiliary_loss` logged. Keep this fast: it runs in the training loop.
    """


@hookspec
def on_checkpoint_saved(run: RunInfo, step: int, path: Path) -> None:
    """A complete checkpoint for ``step`` now exists at ``path``.

    Called after the atomic rename and after rotation, so ``path`` is final:
    copy or upload it from here.
    """


@hookspec
def on_validation_done(run: RunInfo, result: ValidationResult) -> None:
    """A validation round wrote its media.

    :param result: the step, the media files written by media key (as in
        `on_validation_preview`) and the round's contact sheet; with
        ``validation_preview``, ``result.previews`` holds the preview files, by
        media key and sampler step.
    """


@hookspec
def on_validation_preview(run: RunInfo, step: int, key: str, sampler_step: int, path: Path) -> None:
    """A validation preview was written, while its clip is still being sampled.

    Called as the family renders each preview (``validation_preview``), before
    the round ends; a family that returns its previews only at the end has them
    reported then, each in turn, before `on_validation_done`.

    :param step: the training step of the validation round.
    :param key: the media key of the clip (its nickname, with ``-ema`` or a
        ``-WxH`` suffix where the round has several variants or sizes).
    :param sampler_step: the sampler step previewed, counted from 1.
    :param path: the preview file, complete.
    """


@hookspec
def on_run_end(run: RunInfo, outputs: dict[str, Path], error: BaseException | None) -> None:
    """The run is over.

    :param outputs: files the run produced: ``adapter``, ``checkpoint``, ``ema_adapter`` (with EMA) and
        ``validation`` (the final round's main file, when validation ran). With
        several trained experts each adapter file is keyed by its expert's
        label instead: ``adapter_<label>`` (and ``ema_adapter_<label>``).
    :param error: the exception that stopped the run, or ``None`` on success.
    """
