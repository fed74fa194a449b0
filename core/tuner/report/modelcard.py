"""The model card (``README.md``) written beside the trained adapter."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.durable import replacing

if TYPE_CHECKING:
    from tuner.types import RunInfo, ValidationResult

__all__ = ["CARD_NAME", "model_card", "write_model_card"]

CARD_NAME = "README.md"
# Options about the output folder, not about what was trained.
_HOUSEKEEPING = {"resume_from_checkpoint", "overwrite_output_dir"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def model_card(
    run: RunInfo, outputs: dict[str, Path], validation: ValidationResult | None, repo_id: str | None = None
) -> str:
    """Markdown with YAML metadata: base model, prompts, training settings, the last validation round."""
    from tuner.validate.prompts import round_prompts

    config = run.config
    base = run.base_model
    on_hub = bool(base) and _HUB_ID.match(base) is not None and not Path(base).exists()
    meta = ["---", "library_name: diffusers"]
    if on_hub:
        meta.append(f"base_model: {base}")
    meta += ["tags:", "- lora", "- tuner", f"- {run.family}", "---", ""]
    title = repo_id or Path(run.output_dir).name
    lines = [*meta, f"# {title}", ""]
    lines.append(
        f"A LoRA adapter for `{base or 'the base model'}` (model family `{run.family}`), trained with tuner"
        f" for {run.max_train_steps} steps."
    )
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
    # One adapter, or one per expert ("adapter_high_noise", ...): each loads into its own denoiser.
    adapters = [p for k, p in outputs.items() if k == "adapter" or k.startswith("adapter_")]
    if adapters:
        source = repo_id or str(Path(run.output_dir).resolve())
        lines += ["", "## Use it", ""]
        if len(adapters) > 1:
            lines += [
                "One adapter file per expert denoiser: the first loads into `transformer`, the second into"
                " `transformer_2` (diffusers' `load_into_transformer_2=True`).",
                "",
            ]
        lines += ["```python", "from diffusers import DiffusionPipeline", "", f'pipe = DiffusionPipeline.from_pretrained("{base}")']
        for n, adapter in enumerate(adapters):
            into = ", load_into_transformer_2=True" if n == 1 else ""
            lines.append(f'pipe.load_lora_weights("{source}", weight_name="{adapter.name}"{into})')
        lines.append("```")
    return "\n".join(lines) + "\n"


def write_model_card(
    run: RunInfo, outputs: dict[str, Path], validation: ValidationResult | None, repo_id: str | None = None
) -> Path:
    path = Path(run.output_dir) / CARD_NAME
    from tuner.report.secrets import run_scrubber
    from tuner.train.outputs import claim

    claim(path)  # never over the user's own README.md (output_dir = ".")

    # A prompt or setting may quote a webhook URL or token; the card is published.
    with replacing(path, path.with_name(f".{CARD_NAME}.partial")) as tmp:
        tmp.write_text(run_scrubber(run.config)(model_card(run, outputs, validation, repo_id)), encoding="utf-8")
    return path
