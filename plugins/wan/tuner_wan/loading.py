"""Loading Wan's parts with diffusers / transformers ``from_pretrained``.

Sources follow the guide's options: one diffusers-layout folder or hub id, with
optional overrides for the transformer (also a single ``.safetensors`` file, in
diffusers or original key names), the VAE and the UMT5 text encoder.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from tuner.errors import ConfigError
from tuner.loading import fingerprint, load_denoiser
from tuner.train.precision import base_weight_dtype

from tuner_wan.experts import boundary_ratio, loaded_experts, make_experts, trained_experts, validation_transformers
from tuner_wan.flavours import EXPERT_COMPONENTS, FLAVOURS

if TYPE_CHECKING:
    import torch

    from tuner.config import RunConfig
    from tuner.loading import ModelSources

    from tuner_wan.settings import WanSection

__all__ = ["load_components", "load_conditioning_parts"]


@contextmanager
def _quiet_library_bars() -> Iterator[None]:
    """Hide the libraries' per-file loading bars for the duration, then restore them.

    The Hub's download bars stay: a first run downloads tens of gigabytes, and its own bars
    (file, size, rate, time left) are the progress of that wait. transformers'
    ``disable_progress_bar`` turns those off too, so they are turned back on.
    """
    import diffusers.utils.logging as dlog
    import huggingface_hub.utils as hub
    import transformers.utils.logging as tlog

    downloads = not hub.are_progress_bars_disabled()
    states = [(lib, lib.is_progress_bar_enabled()) for lib in (dlog, tlog)]
    for lib, _ in states:
        lib.disable_progress_bar()
    if downloads:
        hub.enable_progress_bars()
    try:
        yield
    finally:
        for lib, enabled in states:
            if enabled:
                lib.enable_progress_bar()


def _transformer_sources(section: WanSection, sources: ModelSources) -> dict[str, tuple[str, str | None, str]]:
    """What to load for each transformer: key -> (source, subfolder, component of the base).

    Keys are ``"single"`` for a one-transformer flavour, else ``"high"``/``"low"``.
    The transformer options (``pretrained_transformer_*``) name the trained
    expert's weights; a frozen other stage always comes from the base.
    """
    flavour = FLAVOURS[section.model_flavour]
    transformer_src, subfolder = sources.transformer, sources.transformer_subfolder
    if flavour.expert is None:
        return {"single": (transformer_src, subfolder, "transformer")}
    explicit_subfolder = "pretrained_transformer_subfolder" in section.model_fields_set
    found = {}
    for which in loaded_experts(flavour, section):
        component = EXPERT_COMPONENTS[which]
        if which == flavour.expert and section.pretrained_transformer_model_name_or_path:
            found[which] = (transformer_src, subfolder if explicit_subfolder else component, component)
        else:
            found[which] = (sources.base, component, component)
    return found


def _load_parts(
    sources: ModelSources, section: WanSection, dtype: torch.dtype
) -> tuple[dict[str, Any], Any, Any, Any, Any]:
    import diffusers
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from safetensors import SafetensorError
    from transformers import AutoTokenizer, UMT5EncoderModel

    from tuner.progress import stage

    base, vae_src, t5_src, revision = sources.base, sources.vae, sources.t5, sources.revision
    try:
        transformers = {}
        for key, (source, subfolder, component) in _transformer_sources(section, sources).items():
            with stage(f"loading {component} from {source}"):  # a 14B expert takes minutes from a slow disk
                transformers[key] = load_denoiser(
                    WanTransformer3DModel, source, base=base, subfolder=subfolder, dtype=dtype, revision=revision,
                    option=section.source_option("transformer"), component=component,
                    diffusers_prefixes=("blocks.0.attn1.", "condition_embedder."),
                )
        with stage(f"loading vae from {vae_src}"):
            vae = AutoencoderKLWan.from_pretrained(
                vae_src, subfolder="vae", torch_dtype=torch.float32, revision=revision
            )
        with stage(f"loading text_encoder (UMT5) from {t5_src}"):
            text_encoder = UMT5EncoderModel.from_pretrained(
                t5_src, subfolder="text_encoder", torch_dtype=dtype, revision=revision
            )
        tokenizer = AutoTokenizer.from_pretrained(t5_src, subfolder="tokenizer", revision=revision)
        # Any scheduler class reads scheduler_config.json; its _class_name picks the real one (UniPC for Wan).
        scheduler_config = UniPCMultistepScheduler.load_config(base, subfolder="scheduler", revision=revision)
    except (OSError, ValueError, SafetensorError) as exc:  # missing, damaged (cut-off weights, bad JSON) files
        reason = (str(exc) or type(exc).__name__).splitlines()[0]
        raise ConfigError(f"cannot load Wan from '{base}': {reason}") from None
    return transformers, vae, text_encoder, tokenizer, scheduler_from_config(diffusers, scheduler_config, base)


def scheduler_from_config(library: Any, config: dict[str, Any], source: str) -> Any:
    """The scheduler ``scheduler_config.json`` names in ``_class_name``; one line when it names none."""
    name = config.get("_class_name")
    cls = getattr(library, name, None) if isinstance(name, str) else None
    if cls is None or not hasattr(cls, "from_config"):
        got = f"'_class_name' is {name!r}, not a diffusers scheduler" if name else "it has no '_class_name'"
        raise ConfigError(
            f"{source}: scheduler/scheduler_config.json: {got}; set it to the scheduler class"
            " (UniPCMultistepScheduler for Wan)"
        )
    return cls.from_config(config)


def _model_index(base: str, revision: str | None) -> dict[str, Any]:
    """The base's ``model_index.json`` (the pipeline's class and settings such as ``boundary_ratio``)."""
    from diffusers import DiffusionPipeline

    try:
        return dict(DiffusionPipeline.load_config(base, revision=revision))
    except OSError as exc:
        raise ConfigError(f"cannot read model_index.json of '{base}': {str(exc).splitlines()[0]}") from None


def _check_sources(section: WanSection, sources: ModelSources) -> None:
    """A missing local folder or part is named now, not after diffusers asks the Hub."""
    from tuner.paths import check_model_parts

    option = sources.options
    parts = [
        (option["model"], sources.base, "scheduler"),
        (option["vae"], sources.vae, "vae"),
        (option["t5"], sources.t5, "text_encoder"),
        (option["t5"], sources.t5, "tokenizer"),
    ]
    for source, subfolder, _ in _transformer_sources(section, sources).values():
        own = source == sources.transformer and sources.transformer != sources.base
        name = option["transformer"] if own else option["model"]
        parts.append((name, source, "" if source.endswith(".safetensors") else subfolder or ""))
    check_model_parts(parts, layout="transformer/, vae/, text_encoder/, tokenizer/ and scheduler/")


def load_components(section: WanSection, config: RunConfig, device: torch.device) -> dict[str, Any]:
    """Every Wan part, frozen; the encoders on ``device``, the transformer on the CPU until the core places it.

    The VAE stays in float32 for clean latents.
    """
    from diffusers import WanPipeline

    flavour = FLAVOURS[section.model_flavour]
    dtype = base_weight_dtype(config)
    sources = section.model_sources(config.resolve_path, flavour.repo)
    base = sources.base
    _check_sources(section, sources)
    with _quiet_library_bars():
        transformers, vae, text_encoder, tokenizer, scheduler = _load_parts(sources, section, dtype)
    experts = []
    if flavour.expert is not None:
        boundary = boundary_ratio(section, _model_index(base, section.revision), base)
        experts = make_experts(transformers, trained_experts(flavour, section), boundary)
    transformer = next(e.module for e in experts if e.trained) if experts else transformers["single"]
    for module in (*transformers.values(), vae, text_encoder):
        module.requires_grad_(False)
    for module in (vae, text_encoder):
        module.to(device)
    vae.eval()
    text_encoder.eval()
    pipeline = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        **validation_transformers(experts, transformer),
    )
    pipeline.set_progress_bar_config(disable=True)
    # Image-to-video parts (CLIP encoder, the I2V pipeline, how the transformer is conditioned).
    conditioned = load_conditioning_parts(section, base, pipeline, device)
    cache_id = fingerprint(
        "wan-2.1",
        dict(vae.config),
        dict(text_encoder.config.to_dict()),
        sources.vae,
        sources.t5,
        section.max_sequence_length,
        *conditioned.pop("cache_id_parts"),
    )
    return {
        **conditioned,
        "experts": experts,
        "transformer": transformer,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "pipeline": pipeline,
        "dtype": dtype,
        "max_sequence_length": section.max_sequence_length,
        "cache_id": cache_id,
    }


def load_conditioning_parts(section: WanSection, base: str, pipeline: Any, device: torch.device) -> dict[str, Any]:
    """What image conditioning needs, beside the text-to-video parts in ``pipeline``.

    ``conditioning`` (a `tuner_wan.conditioning.Conditioning`) always; for an
    image-conditioned flavour also ``i2v_pipeline``, a ``WanImageToVideoPipeline``
    sharing ``pipeline``'s modules (its ``prepare_latents`` and ``encode_image``
    make the conditioning), and for Wan 2.1 I2V / FLF2V the CLIP
    ``image_encoder`` + ``image_processor`` of the model folder (frozen, on
    ``device``). ``cache_id_parts`` lists what must key the latent cache.
    """
    import torch
    from diffusers import WanImageToVideoPipeline

    from tuner_wan.conditioning import conditioning_mode

    flavour = FLAVOURS[section.model_flavour]
    cond = conditioning_mode(
        flavour,
        pipeline.transformer.config,
        pipeline.vae.config.z_dim,
        section.wan_ti2v_text_only_probability,
        per_sample_timestep=section.wan_force_2_1_time_embedding,
    )
    if section.wan_force_2_1_time_embedding and cond.mode != "expand":
        from tuner.progress import notice

        notice(
            f"wan_force_2_1_time_embedding has no effect on {section.model_flavour}: its transformer already embeds"
            " one timestep per sample (only ti2v-5b-2.2 embeds one per token)"
        )
    out: dict[str, Any] = {"conditioning": cond, "cache_id_parts": [cond.mode, cond.last_frame]}
    if not cond.image_conditioned:
        return out
    encoder = processor = None
    if cond.image_embeds:
        from transformers import CLIPImageProcessor, CLIPVisionModel

        try:
            with _quiet_library_bars():
                encoder = CLIPVisionModel.from_pretrained(
                    base, subfolder="image_encoder", torch_dtype=torch.float32, revision=section.revision
                )
                processor = CLIPImageProcessor.from_pretrained(
                    base, subfolder="image_processor", revision=section.revision
                )
        except OSError as exc:
            raise ConfigError(
                f"wan.model_flavour '{section.model_flavour}' needs the CLIP image_encoder/ and image_processor/ of"
                f" '{base}': {str(exc).splitlines()[0]}"
            ) from None
        encoder.requires_grad_(False).eval().to(device)
        out.update(image_encoder=encoder, image_processor=processor)
        out["cache_id_parts"].append(dict(encoder.config.to_dict()))
    i2v = WanImageToVideoPipeline(
        tokenizer=pipeline.tokenizer,
        text_encoder=pipeline.text_encoder,
        vae=pipeline.vae,
        scheduler=pipeline.scheduler,
        transformer=pipeline.transformer,
        image_encoder=encoder,
        image_processor=processor,
        expand_timesteps=cond.mode == "expand",
    )
    i2v.set_progress_bar_config(disable=True)
    out["i2v_pipeline"] = i2v
    return out
