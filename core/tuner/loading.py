"""Loading a family's denoiser: a diffusers folder or hub id, or one ``.safetensors`` file.

Fine-tunes of a base model usually ship as a single ``.safetensors`` file holding
the transformer alone, with the key names of diffusers or of the original
repository (ComfyUI's too). Families call `load_denoiser` with their diffusers
model class; it builds the model from the base's config and loads the tensors
(diffusers names), or lets diffusers' ``from_single_file`` convert them
(original names). Also the small pieces every family's loader needs:
`subfolder_or_none` and `fingerprint`.

Where the weights come from is said the same way in every family: `source_options`
builds a family's model-source options (the base model, a transformer from
elsewhere, its subfolder, the VAE and text encoder from elsewhere, the hub
revision) from the one table `SOURCE_ROLES`, named with the family's prefix
(``flux_pretrained_model_name_or_path``), and `ModelSources` is what they
resolve to. docs/plugins.md holds the same table for users.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import AliasChoices, BaseModel, Field, create_model

from tuner.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = [
    "SOURCE_ROLES",
    "ModelSources",
    "SourceOptions",
    "source_options",
    "load_denoiser",
    "subfolder_or_none",
    "fingerprint",
]

# role -> (the option's name after the family's prefix, what it holds). Every family names its
# options this way; a family with an older name for a role passes it to `source_options`.
SOURCE_ROLES: dict[str, tuple[str, str]] = {
    "model": ("pretrained_model_name_or_path", "Diffusers-layout folder or hub id holding {holds}{unset}."
              " A relative folder follows the config's path rule, as the other source options do."),
    "transformer": ("pretrained_transformer_model_name_or_path", "Take the transformer from here instead: a"
                    " folder, hub id or one .safetensors file (diffusers or the original model's key names)."),
    "transformer_subfolder": ("pretrained_transformer_subfolder", "Subfolder of the transformer source; 'none'"
                              " when the weights sit at its root."),
    "vae": ("pretrained_vae_model_name_or_path", "Take the VAE (its vae/ subfolder) from here instead."),
    "t5": ("pretrained_t5_model_name_or_path", "Take the {t5} text encoder and tokenizer (text_encoder/,"
           " tokenizer/) from here instead."),
    "revision": ("revision", "Hub revision (branch, tag or commit) of the base repository."),
}  # fmt: skip


@dataclass(frozen=True)
class ModelSources:
    """Where each part loads from, resolved: an override, else the base model.

    :ivar options: role -> the option (``section.name``) that named the part's
        source: its own option when set, else the base model's.
    """

    base: str
    transformer: str
    transformer_subfolder: str | None
    vae: str
    t5: str
    revision: str | None
    options: dict[str, str]


class SourceOptions(BaseModel):
    """A config section's model-source options; `source_options` makes one per family."""

    source_section: ClassVar[str] = ""
    source_names: ClassVar[dict[str, str]] = {}  # role -> option name, for the roles the family has

    def source_value(self, role: str) -> Any:
        """The option's value for ``role``, None for a role the family does not have."""
        name = self.source_names.get(role)
        return None if name is None else getattr(self, name)

    def source_option(self, role: str) -> str:
        """``section.name`` of the option for ``role``."""
        return f"{self.source_section}.{self.source_names[role]}"

    def model_sources(self, resolve: Callable[[str], str], default: str | None = None) -> ModelSources:
        """The sources, each path read by ``resolve`` (`tuner.config.RunConfig.resolve_path`).

        :param default: the base model when its option is unset (the flavour's repository).
        """
        base = resolve(self.source_value("model") or default)
        sources, options = {}, {}
        for role in ("transformer", "vae", "t5"):
            own = self.source_value(role)
            sources[role] = resolve(own or base)
            options[role] = self.source_option(role if own else "model")
        options["model"] = self.source_option("model")
        has_subfolder = "transformer_subfolder" in self.source_names
        subfolder = self.source_value("transformer_subfolder") if has_subfolder else "transformer"
        return ModelSources(
            base=base,
            transformer_subfolder=subfolder_or_none(subfolder),
            revision=self.source_value("revision"),
            options=options,
            **sources,
        )


def source_options(
    section: str,
    prefix: str,
    *,
    holds: str,
    roles: Iterable[str] = ("model", "transformer", "transformer_subfolder", "revision"),
    default: str | None = None,
    t5: str = "T5",
    names: Mapping[str, str] | None = None,
    aliases: Mapping[str, tuple[str, ...]] | None = None,
) -> type[SourceOptions]:
    """A pydantic model holding the model-source options of ``roles`` (`SOURCE_ROLES`), named ``prefix`` + role.

    A family's section class inherits it, as the first base: pydantic lists a later
    base's fields first, so ``class FluxSection(FluxSources, FluxFlavour)`` lists the
    flavour, then the sources, then the section's own options.

    :param section: the config section (``flux``), for messages naming an option.
    :param holds: what a complete model folder holds (``transformer/, vae/, ...``), said in the docs.
    :param default: the base model when unset; None leaves it unset (the family picks, e.g. by flavour).
    :param t5: the text encoder's name in the ``t5`` role's description (``UMT5``).
    :param names: role -> an option name the family had before this table (kept for its users).
    :param aliases: role -> other spellings the option accepts (those the guide writes).
    """
    names = {role: (names or {}).get(role, prefix + SOURCE_ROLES[role][0]) for role in roles}
    unset = "" if default is not None else "; unset uses the flavour's repository"
    fields: dict[str, Any] = {}
    for role, name in names.items():
        about = SOURCE_ROLES[role][1].format(holds=holds, unset=unset, t5=t5)
        spellings = (aliases or {}).get(role, ())
        if spellings:
            about += " Also spelt " + ", ".join(spellings) + ", as the guide does."
        value: Any = None
        kind: Any = str | None
        if role == "model" and default is not None:
            value, kind = default, str
        elif role == "transformer_subfolder":
            value, kind = "transformer", str
        extra = {"validation_alias": AliasChoices(name, *spellings)} if spellings else {}
        fields[name] = (kind, Field(value, description=about, **extra))
    model = create_model(f"{section.title()}SourceOptions", __base__=SourceOptions, **fields)
    model.source_section, model.source_names = section, names
    return model


def subfolder_or_none(value: str | None) -> str | None:
    """A subfolder option's value, None for the root ('none', empty or unset)."""
    return None if value in (None, "", "none", "None") else value


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able ``parts`` (encoder configs, sources): a cache id."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_denoiser(
    model_class: Any,
    source: str,
    *,
    base: str,
    subfolder: str | None,
    dtype: torch.dtype,
    revision: str | None,
    option: str,
    diffusers_prefixes: tuple[str, ...],
    component: str = "transformer",
) -> Any:
    """A ``model_class`` (a diffusers model) from ``source``: a folder/hub id, or one ``.safetensors`` file.

    :param base: the base model (folder or hub id) whose ``component`` config a single file is built on.
    :param subfolder: where ``source``'s weights sit when it is a folder or hub id (None: its root).
    :param option: the config option that named ``source``, for the message when the file is missing.
    :param diffusers_prefixes: key prefixes only a file in diffusers' names has (its first block, say);
        any other file is taken to hold the original names and converted by ``from_single_file``.
    """
    if not source.endswith(".safetensors"):
        return model_class.from_pretrained(source, subfolder=subfolder, torch_dtype=dtype, revision=revision)
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"{option}: no such file {path}")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        diffusers_names = any(k.startswith(diffusers_prefixes) for k in f.keys())
    if not diffusers_names:
        return model_class.from_single_file(str(path), config=base, subfolder=component, torch_dtype=dtype)
    from safetensors.torch import load_file

    model = model_class.from_config(model_class.load_config(base, subfolder=component, revision=revision))
    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"{path} does not match the base transformer config: "
            f"{len(missing)} missing, {len(unexpected)} unexpected keys (e.g. {(missing or unexpected)[0]})"
        )
    return model.to(dtype)
