"""The model card (``README.md``) written beside the trained adapter."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.durable import replacing
from tuner.outputs import CARD_NAME, claim

if TYPE_CHECKING:
    from tuner.types.training import RunInfo
    from tuner.types.validation import ValidationResult

__all__ = ["model_card", "write_model_card"]

# Options about the output folder, not about what was trained.
_HOUSEKEEPING = {"resume_from_checkpoint", "overwrite_output_dir"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _card_data(run: RunInfo, validation: ValidationResult | None, on_hub: bool) -> Any:
    """The card's YAML head as the Hub reads it: base model, task, tags, trigger words, widget examples."""
    from huggingface_hub import ModelCardData

    from tuner.validate.prompts import round_prompts

    config = run.config
    tags = ["lora", "tuner", run.family, *([run.flavour] if run.flavour else [])]
    widget = []
    if validation is not None:
        prompts = round_prompts(config.validation)
        root = Path(run.output_dir)
        widget = [
            {"text": prompts.get(name, name), "output": {"url": _rel(Path(media), root)}}
            for name, media in validation.media.items()
        ]
    return ModelCardData(
        library_name="diffusers",
        base_model=run.base_model if on_hub else None,
        pipeline_tag=run.pipeline_tag or None,
        license=run.license or None,
        tags=tags,
        instance_prompt=", ".join(config.train.trigger_words) or None,
        widget=widget or None,
    )


def _load_line(source: str, adapter: Path) -> str:
    """``pipe.load_lora_weights(...)`` for one adapter file, into the denoiser its metadata names."""
    from tuner.lora.metadata import read_metadata

    import json

    kwargs = json.loads(read_metadata(adapter).get("tuner.load_kwargs", "{}")) if adapter.is_file() else {}
    extra = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    return f'pipe.load_lora_weights("{source}", weight_name="{adapter.name}"{extra})'


def model_card(
    run: RunInfo, outputs: dict[str, Path], validation: ValidationResult | None, repo_id: str | None = None
) -> str:
    """Markdown with the Hub's YAML metadata: base model, prompts, training settings, the last validation round."""
    from huggingface_hub import ModelCard

    from tuner.validate.prompts import round_prompts

    config = run.config
    base = run.base_model
    on_hub = bool(base) and _HUB_ID.match(base) is not None and not Path(base).exists()
    title = repo_id or Path(run.output_dir).name
    lines = [f"# {title}", ""]
    what = f"`{base or 'the base model'}` (model family `{run.family}`"
    what += f", flavour `{run.flavour}`)" if run.flavour else ")"
    lines.append(f"A LoRA adapter for {what}, trained with tuner for {run.max_train_steps} steps.")
    triggers = config.train.trigger_words
    if triggers:
        lines += ["", "Trigger words: " + ", ".join(f"`{_cell(t)}`" for t in triggers)]
    prompts = round_prompts(config.validation)
    if prompts:
        lines += ["", "## Prompts", "", "The validation prompts, by nickname:", ""]
        lines += [f"- **{_cell(n)}**: {_cell(p)}" for n, p in prompts.items()]
    if validation is not None:
        root = Path(run.output_dir)
        lines += ["", f"## Validation at step {validation.step}", ""]
        if validation.contact_sheet is not None:
            lines.append(f"![contact sheet]({_rel(validation.contact_sheet, root)})")
            lines.append("")
        lines += [f"- [{_cell(k)}]({_rel(Path(p), root)})" for k, p in validation.media.items()]
    # Local paths say nothing to a reader of the card; they are left out.
    settings = {
        f"{section}.{key}": value
        for section in ("train", "validation")
        for key, value in config.section(section).model_dump().items()
        if value is not None and not isinstance(value, (Path, dict, list)) and key not in _HOUSEKEEPING
    }
    lines += ["", "## Training settings", "", "| setting | value |", "| --- | --- |"]
    lines += [f"| `{k}` | {_cell(v)} |" for k, v in settings.items()]
    # One adapter, or one per expert ("adapter_high_noise", ...): each loads into the denoiser its metadata names.
    adapters = [Path(p) for k, p in outputs.items() if k == "adapter" or k.startswith("adapter_")]
    if adapters:
        source = repo_id or str(Path(run.output_dir).resolve())
        lines += ["", "## Use it", ""]
        if len(adapters) > 1:
            lines += ["One adapter file per expert denoiser, each loaded into its own.", ""]
        lines += ["```python", "from diffusers import DiffusionPipeline", "", f'pipe = DiffusionPipeline.from_pretrained("{base}")']
        lines += [_load_line(source, adapter) for adapter in adapters]
        lines.append("```")
    card = ModelCard(f"---\n{_card_data(run, validation, on_hub).to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
    return str(card)


def write_model_card(
    run: RunInfo, outputs: dict[str, Path], validation: ValidationResult | None, repo_id: str | None = None
) -> Path:
    path = Path(run.output_dir) / CARD_NAME
    from tuner.report.secrets import run_scrubber

    claim(path)  # never over the user's own README.md (output_dir = ".")

    # A prompt or setting may quote a webhook URL or token; the card is published.
    with replacing(path, path.with_name(f".{CARD_NAME}.partial")) as tmp:
        tmp.write_text(run_scrubber(run.config)(model_card(run, outputs, validation, repo_id)), encoding="utf-8")
    return path
