"""The plugin host: activates the plugins a run names (found by `tuner.plugin_discovery`) and calls hooks.

The core talks to plugins only through `PluginHost`'s typed methods; nothing
else touches ``pm.hook``. A host is built by a function and passed along: there
is no module-level manager, and importing this module loads no plugin.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pluggy

from tuner import hookspecs, plugin_discovery
from tuner.errors import PluginError, did_you_mean, shown
from tuner.plugin_discovery import BUILTIN_PLUGINS, load_builtin, load_entry_point

if TYPE_CHECKING:
    import torch
    from pydantic import BaseModel

    from tuner.config import RunConfig
    from tuner.family_profile import FamilyProfile
    from tuner.lora.layouts import LoraNaming
    from tuner.train.noising import InputRewriter
    from tuner.types.adapter import AdapterWeights
    from tuner.types.bundle import ModelBundle
    from tuner.types.routes import TokenRouter
    from tuner.types.training import AuxiliaryLoss, ClipFeatures, LossOutput, RunInfo
    from tuner.types.validation import ValidationRequest, ValidationResult

__all__ = ["PluginHost", "PluginInfo"]

_REQUIRED_FAMILY_HOOKS = ("load_model", "encode_batch", "encode_prompts", "compute_loss")
_DATA_BACKEND_METHODS = ("list_files", "open", "signature", "probe", "read_caption", "quarantine")


@dataclass(frozen=True)
class PluginInfo:
    """One plugin as ``tuner plugins`` shows it."""

    name: str
    version: str
    source: str
    hooks: tuple[str, ...]
    sections: tuple[str, ...]
    families: tuple[str, ...]
    active: bool
    data_backends: tuple[str, ...] = ()


class PluginHost:
    """Active plugins plus the registries they filled (config sections, model families)."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.sections: dict[str, type[BaseModel]] = {}
        self.section_owner: dict[str, str] = {}
        self.families: dict[str, str] = {}  # family -> plugin name
        self.family_descriptions: dict[str, str] = {}
        self.family_aliases: dict[str, str] = {}  # other model_family spelling -> family
        # Dataset ``type`` -> its `tuner.data.storage.DataBackend` (not imported: the data floor is above this one).
        self.data_backends: dict[str, Any] = {}
        self.data_backend_owner: dict[str, str] = {}
        self.versions: dict[str, str] = {}
        self.sources: dict[str, str] = {}

    # -- building ----------------------------------------------------------

    @classmethod
    def build(
        cls,
        names: Iterable[str] = (),
        extra: Mapping[str, object] | None = None,
        *,
        all_installed: bool = False,
    ) -> PluginHost:
        """Make a host with the built-ins, the named installed plugins and ``extra``.

        :param names: plugins to activate (``--plugin`` and the config's ``plugins``).
        :param extra: plugin objects given directly, by name (tests, embedding apps);
            they are active and may be named in ``names`` too.
        :param all_installed: activate every installed plugin (for ``tuner plugins``).
        """
        host = cls()
        extra = dict(extra or {})
        for name, target in BUILTIN_PLUGINS:
            host._register(name, load_builtin(target), version="builtin", source=target)
        installed = plugin_discovery.installed_plugins()  # by module: a fuzz run reads the entry points once
        wanted = list(dict.fromkeys(installed if all_installed else names))
        for name in wanted:
            if name in extra or name in host.versions:
                continue
            if name not in installed:
                choices = sorted(set(installed) | set(extra))
                listing = ", ".join(choices) if choices else "none"
                hint = did_you_mean(name, choices) or ": it is not installed (install the package that provides it)"
                raise PluginError(f"unknown plugin '{shown(name)}'{hint}; installed plugins: {listing}")
            ep = installed[name]
            obj, version = load_entry_point(ep)
            host._register(ep.name, obj, version=version, source=ep.value)
        for name, obj in extra.items():
            host._register(name, obj, version="local", source=getattr(obj, "__name__", type(obj).__name__))
        host.pm.check_pending()
        return host

    def _register(self, name: str, obj: object, *, version: str, source: str) -> None:
        self.pm.register(obj, name=name)
        self.versions[name] = version
        self.sources[name] = source
        # Each plugin's registration hooks are called with a callback bound to
        # its own name, so the registries know who contributed what.
        self._call_own(obj, "register_config_sections", register=lambda s, m: self._add_section(name, s, m))
        self._call_own(
            obj,
            "register_model_families",
            register=lambda f, d="", aliases=(): self._add_family(name, f, d, aliases),
        )
        self._call_own(obj, "register_data_backends", register=lambda t, b: self._add_data_backend(name, t, b))

    def _call_own(self, obj: object, hook: str, **kwargs: Any) -> None:
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            if impl.plugin is obj:
                impl.function(**kwargs)

    def _add_section(self, plugin: str, section: str, model: type[BaseModel]) -> None:
        from pydantic import BaseModel

        if section in self.sections and self.section_owner[section] != plugin:
            raise PluginError(
                f"plugins '{self.section_owner[section]}' and '{plugin}' both register config section '{section}'"
            )
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise PluginError(f"plugin '{plugin}' registered section '{section}' with a non-pydantic model")
        if not section.isidentifier():
            raise PluginError(f"plugin '{plugin}': section name '{section}' is not an identifier")
        taken = {f: s for s, m in self.sections.items() for f in m.model_fields}
        for field in model.model_fields:
            if field in taken:
                raise PluginError(
                    f"plugin '{plugin}' section '{section}' reuses option '{field}' of section '{taken[field]}';"
                    " option names must be unique across sections"
                )
        self.sections[section] = model
        self.section_owner[section] = plugin

    def _add_family(self, plugin: str, family: str, description: str, aliases: Iterable[str] = ()) -> None:
        if family in self.families and self.families[family] != plugin:
            raise PluginError(f"plugins '{self.families[family]}' and '{plugin}' both register model family '{family}'")
        self.families[family] = plugin
        self.family_descriptions[family] = description
        for alias in aliases:
            self.family_aliases[alias] = family

    def _add_data_backend(self, plugin: str, name: str, backend: object) -> None:
        if name in self.data_backends and self.data_backend_owner[name] != plugin:
            owner = self.data_backend_owner[name]
            raise PluginError(f"plugins '{owner}' and '{plugin}' both register data backend '{name}'")
        # Duck-typed: the contract's module sits on a floor above this one (tuner.data.storage).
        if not all(callable(getattr(backend, m, None)) for m in _DATA_BACKEND_METHODS):
            raise PluginError(
                f"plugin '{plugin}' registered data backend '{name}' with {type(backend).__name__}, which is no"
                " tuner.data.storage.DataBackend: subclass it"
            )
        self.data_backends[name] = backend
        self.data_backend_owner[name] = plugin

    def family_named(self, name: str) -> str | None:
        """The family ``model_family = name`` means here (its own name or an alias it declared), else None."""
        return name if name in self.families else self.family_aliases.get(name)

    # -- introspection -----------------------------------------------------

    @property
    def active(self) -> list[str]:
        return [name for name, _ in self.pm.list_name_plugin() if name is not None]

    def describe(self) -> list[PluginInfo]:
        """What each active plugin is and contributes."""
        out = []
        for name, plugin in self.pm.list_name_plugin():
            hooks = tuple(
                sorted(
                    caller.name
                    for caller in (self.pm.get_hookcallers(plugin) or [])
                    if not caller.name.startswith("register_")  # what they register has its own column
                )
            )
            out.append(
                PluginInfo(
                    name=name,
                    version=self.versions.get(name, "?"),
                    source=self.sources.get(name, "?"),
                    hooks=hooks,
                    sections=tuple(s for s, owner in self.section_owner.items() if owner == name),
                    families=tuple(f for f, owner in self.families.items() if owner == name),
                    active=True,
                    data_backends=tuple(t for t, owner in self.data_backend_owner.items() if owner == name),
                )
            )
        return out

    def resolve_family(self, requested: str | None) -> str:
        """The model family a run uses: the one named, or the only one active."""
        if requested:
            requested = self.family_named(requested) or requested
            if requested not in self.families:
                known = ", ".join(sorted(self.families)) or "none (activate a family plugin, e.g. --plugin wan)"
                raise PluginError(
                    f"model_family '{shown(requested)}' is not provided by any active plugin"
                    f"{did_you_mean(requested, self.families)}; active families: {known}"
                )
            return requested
        if len(self.families) == 1:
            return next(iter(self.families))
        if not self.families:
            raise PluginError("no model family is active: add one with --plugin (e.g. --plugin wan)")
        raise PluginError(f"several model families are active ({', '.join(sorted(self.families))}): set model_family")

    # -- model-family hooks ------------------------------------------------

    def _family_hook(self, family: str, hook: str) -> Any:
        owner = self.pm.get_plugin(self.families[family])
        others = [p for p in self.pm.get_plugins() if p is not owner]
        return self.pm.subset_hook_caller(hook, remove_plugins=others)

    def _call_family(self, family: str, hook: str, **kwargs: Any) -> Any:
        result = self._family_hook(family, hook)(**kwargs)
        if result is None and hook in _REQUIRED_FAMILY_HOOKS:
            raise PluginError(f"plugin '{self.families[family]}' (family '{family}') does not implement {hook}")
        return result

    def _accepts(self, family: str, hook: str, argument: str) -> bool:
        """Whether the family's implementation of ``hook`` takes ``argument`` (pluggy lets it leave some out)."""
        owner = self.pm.get_plugin(self.families[family])
        impls = [impl for impl in getattr(self.pm.hook, hook).get_hookimpls() if impl.plugin is owner]
        return any(argument in impl.argnames for impl in impls)

    def implements(self, family: str, hook: str) -> bool:
        owner = self.pm.get_plugin(self.families[family])
        return any(impl.plugin is owner for impl in getattr(self.pm.hook, hook).get_hookimpls())

    def load_model(self, config: RunConfig, device: torch.device) -> ModelBundle:
        return self._call_family(config.model_family, "load_model", config=config, device=device)

    def encode_batch(self, bundle: ModelBundle, pixels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return self._call_family(bundle.family, "encode_batch", bundle=bundle, pixels=pixels)

    def encode_prompts(self, bundle: ModelBundle, prompts: list[str]) -> list[dict[str, torch.Tensor]]:
        return self._call_family(bundle.family, "encode_prompts", bundle=bundle, prompts=prompts)

    def collate_prompts(
        self, bundle: ModelBundle, items: list[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor] | None:
        return self._call_family(bundle.family, "collate_prompts", bundle=bundle, items=items)

    def compute_loss(
        self, bundle: ModelBundle, batch: dict[str, torch.Tensor], generator: torch.Generator, config: RunConfig
    ) -> LossOutput:
        return self._call_family(
            bundle.family, "compute_loss", bundle=bundle, batch=batch, generator=generator, config=config
        )

    def validate(self, bundle: ModelBundle, request: ValidationRequest) -> ValidationResult | None:
        return self._call_family(bundle.family, "validate", bundle=bundle, request=request)

    def eval_loss(
        self,
        bundle: ModelBundle,
        batch: dict[str, torch.Tensor],
        sigmas: torch.Tensor,
        generator: torch.Generator,
        config: RunConfig,
    ) -> torch.Tensor:
        return self._call_family(
            bundle.family, "eval_loss", bundle=bundle, batch=batch, sigmas=sigmas, generator=generator, config=config
        )

    def export_adapter(
        self, bundle: ModelBundle, weights: AdapterWeights, path: Path, lora_format: str, metadata: dict[str, str]
    ) -> Path | None:
        return self._call_family(
            bundle.family,
            "export_adapter",
            bundle=bundle,
            weights=weights,
            path=path,
            lora_format=lora_format,
            metadata=metadata,
        )

    def write_tiny_model(
        self, family: str, path: Path, seed: int, variant: str | None = None, real_width_blocks: int | None = None
    ) -> dict[str, Any]:
        if real_width_blocks is not None and not self._accepts(family, "write_tiny_model", "real_width_blocks"):
            raise PluginError(f"model family '{family}' cannot write its model at real width (its write_tiny_model hook"
                              " has no real_width_blocks parameter)")
        result = self._call_family(
            family, "write_tiny_model", path=path, seed=seed, variant=variant, real_width_blocks=real_width_blocks
        )
        if result is None:
            raise PluginError(f"model family '{family}' cannot write a tiny model (no write_tiny_model hook)")
        return result

    def describe_family(self, family: str) -> FamilyProfile:
        result = self._call_family(family, "describe_family")
        if result is None:
            raise PluginError(
                f"model family '{family}' cannot be set up by tuner configure (its plugin has no describe_family"
                " hook): write the config by hand (docs/configure.md)"
            )
        return result

    def lora_namings(self) -> dict[str, LoraNaming]:
        """family -> how its original model names modules, for every active family that says (`lora_naming`)."""
        return {f: n for f in self.families if self.implements(f, "lora_naming") and (n := self._call_family(f, "lora_naming"))}

    # -- feature hooks -----------------------------------------------------

    def prepare_model(
        self, bundle: ModelBundle, config: RunConfig, phase: Literal["base", "adapted"], device: torch.device
    ) -> None:
        self.pm.hook.prepare_model(bundle=bundle, config=config, phase=phase, device=device)

    def route_tokens(self, bundle: ModelBundle, config: RunConfig) -> TokenRouter | None:
        return self.pm.hook.route_tokens(bundle=bundle, config=config)

    def rewrite_noisy_input(self, bundle: ModelBundle, config: RunConfig) -> InputRewriter | None:
        """The active feature's input rewriter, refused in one line for a family that cannot take one."""
        rewriter = self.pm.hook.rewrite_noisy_input(bundle=bundle, config=config)
        if rewriter is not None and not bundle.rewritable_inputs:
            raise PluginError(
                f"model family '{bundle.family}' does not build its training input with"
                " tuner.train.noising.noisy_inputs (ModelBundle.rewritable_inputs), which scheduled sampling"
                " and other input rewrites need: turn the feature off for this family"
            )
        return rewriter

    def clip_features(self, bundle: ModelBundle, config: RunConfig) -> list[ClipFeatures]:
        """Every active feature's per-clip cached tensors, in a stable order (by name)."""
        found = [f for f in self.pm.hook.clip_features(bundle=bundle, config=config) if f is not None]
        names = [f.name for f in found]
        if len(set(names)) != len(names):
            raise PluginError(f"several plugins offer clip features named the same: {', '.join(sorted(names))}")
        return sorted(found, key=lambda f: f.name)

    def auxiliary_losses(
        self, bundle: ModelBundle, batch: dict[str, torch.Tensor], output: LossOutput, step: int, config: RunConfig
    ) -> list[AuxiliaryLoss]:
        terms = self.pm.hook.auxiliary_loss(bundle=bundle, batch=batch, output=output, step=step, config=config)
        return [t for t in terms if t is not None]

    # -- lifecycle ---------------------------------------------------------

    def on_run_start(self, run: RunInfo) -> None:
        self.pm.hook.on_run_start(run=run)

    def on_step_end(self, run: RunInfo, step: int, logs: dict[str, float]) -> None:
        self.pm.hook.on_step_end(run=run, step=step, logs=logs)

    def on_checkpoint_saved(self, run: RunInfo, step: int, path: Path) -> None:
        self.pm.hook.on_checkpoint_saved(run=run, step=step, path=path)

    def on_validation_done(self, run: RunInfo, result: ValidationResult) -> None:
        self.pm.hook.on_validation_done(run=run, result=result)

    def on_validation_preview(self, run: RunInfo, step: int, key: str, sampler_step: int, path: Path) -> None:
        self.pm.hook.on_validation_preview(run=run, step=step, key=key, sampler_step=sampler_step, path=path)

    def on_run_end(self, run: RunInfo, outputs: dict[str, Path], error: BaseException | None) -> None:
        self.pm.hook.on_run_end(run=run, outputs=outputs, error=error)
