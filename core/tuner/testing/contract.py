"""The model-family contract kit: a conformance suite a family author runs on their own plugin.

Subclass `FamilyContract` in your tests, name your plugin, and teach it to
render with your family's own pipeline; pytest collects every check below::

    # tests/test_contract.py
    from tuner.testing.contract import FamilyContract

    class TestMyFamilyContract(FamilyContract):
        plugin = "myfamily"                 # the entry-point name, when installed
        # plugin_object = my_package.plugin # or the plugin itself, registered directly

        def render(self, model_dir, adapter):
            pipe = MyPipeline.from_pretrained(model_dir)
            if adapter is not None:
                pipe.load_lora_weights(str(adapter.parent), weight_name=adapter.name)
            return pipe("a red square", num_inference_steps=3, output_type="np",
                        generator=torch.Generator().manual_seed(0)).frames[0]

The checks run on the tiny model your `write_tiny_model` writes (``variant``
picks one of its shapes) and on synthetic clips, through the same code as
``tuner train``: the model loads frozen and describes itself (blocks, encoders)
so features need not know it; clips and prompts encode deterministically; the
loss draws only from its generator; training lowers the loss; the exported
adapter loads in your pipeline and changes its output; a resumed run ends
bit-for-bit where an uninterrupted one does; validation and the evaluation
loss work when you implement them; a token grid, when you describe one, fits
what a block outputs; a token router's plan is carried out (or,
if your family sets ``supports_token_routing=False``, refused at start-up);
scheduled sampling rolls samples out through the ``predict`` your family lends
`tuner.train.noising.noisy_inputs` (or, with ``rewritable_inputs=False``, is
refused at start-up);
group offloading or a quantized base, with an attention backend, chunked
feed-forward, gradient checkpointing, token routing and the evaluation loss,
run on it. Image families set ``overrides`` (e.g. ``["data.num_frames=1"]``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from tuner.testing.runs import write_run_folder

if TYPE_CHECKING:
    import numpy as np
    import torch

    from tuner.config import RunConfig
    from tuner.plugins import PluginHost
    from tuner.types.bundle import ModelBundle

__all__ = ["FamilyContract", "KeepRouter"]

_KINDS = {"text", "latent", "image"}


class KeepRouter:
    """A `tuner.types.routes.TokenRouter` over one span: keeps ``ratio`` of the tokens, drawn from the generator."""

    def __init__(self, ratio: float, span: tuple[int, int] = (0, 0)) -> None:
        self.ratio, self.span = ratio, span

    def spans(self, num_blocks: int) -> list[tuple[int, int]]:
        return [self.span]

    def plan(self, num_blocks, num_tokens, batch_size, generator, force_keep=None):  # type: ignore[no-untyped-def]
        import torch

        from tuner.types.routes import TokenRoute

        kept = max(1, round(self.ratio * num_tokens))
        rows = [torch.randperm(num_tokens, generator=generator, device=generator.device)[:kept].sort().values
                for _ in range(batch_size)]
        return [TokenRoute(*self.span, torch.stack(rows))]


def _losses(output_dir: Path) -> dict[int, float]:
    from tuner.report.jsonlog import read_log

    return {r["step"]: r["loss"] for r in read_log(output_dir) if r["event"] == "step"}


class FamilyContract:
    """The checks every model family should pass. Subclass as ``Test...``; override the attributes below."""

    #: the plugin's entry-point name (also its name when registered directly)
    plugin: ClassVar[str] = ""
    #: the plugin object (module or instance) to register without installing; None uses the installed entry point
    plugin_object: ClassVar[Any] = None
    #: the family name, when it differs from the plugin name
    family: ClassVar[str | None] = None
    #: the tiny model's variant (`write_tiny_model`), None for the family's default
    variant: ClassVar[str | None] = None
    #: optimizer steps of the training check (a checkpoint is written halfway)
    steps: ClassVar[int] = 40
    #: extra ``--set`` style overrides for every run (image families: ``data.num_frames=1``)
    overrides: ClassVar[list[str]] = []

    def render(self, model_dir: Path, adapter: Path | None) -> np.ndarray:
        """Frames from the family's own pipeline loaded from ``model_dir``, with the LoRA file ``adapter`` if given.

        Use a fixed seed: the check compares a render without the adapter to one with it.
        """
        raise NotImplementedError(f"{type(self).__name__}.render: render with your family's pipeline (see tuner.testing.contract)")

    # -- set-up ------------------------------------------------------------

    def host(self, *features: str) -> PluginHost:
        from tuner.plugins import PluginHost

        if self.plugin_object is not None:
            return PluginHost.build(list(features), extra={self.plugin: self.plugin_object})
        return PluginHost.build([self.plugin, *features])

    @property
    def family_name(self) -> str:
        return self.family or self.plugin

    def config(self, path: Path, host: PluginHost, extra: list[str] = ()) -> RunConfig:  # type: ignore[assignment]
        from tuner.config import merge, parse_overrides, read_config_file, resolve_config

        raw = merge(read_config_file(path), parse_overrides(list(extra)))
        return resolve_config(raw, host, base_dir=path.parent)

    @pytest.fixture(scope="class")
    def contract_run(self, tmp_path_factory: pytest.TempPathFactory) -> Path:
        """The config of a run folder (tiny model, two synthetic clips) shared by the checks."""
        folder = tmp_path_factory.mktemp(f"contract-{self.plugin}")
        host = self.host()
        return write_run_folder(
            folder / "run", folder / "model", plugin=self.plugin, family=self.family_name, steps=self.steps,
            overrides=list(self.overrides), variant=self.variant, host=host,
        )

    @pytest.fixture(scope="class")
    def contract_bundle(self, contract_run: Path) -> Iterator[tuple[PluginHost, RunConfig, ModelBundle]]:
        import torch

        host = self.host()
        config = self.config(contract_run, host)
        yield host, config, host.load_model(config, torch.device("cpu"))

    @pytest.fixture(scope="class")
    def contract_trained(self, contract_run: Path) -> tuple[Path, dict[str, Path]]:
        """One training run of `steps` steps, checkpointed halfway, validated halfway and at the end."""
        from tuner.train.run import train

        host = self.host()
        return contract_run.parent / "output", train(self.config(contract_run, host), host)

    def batch(self, host: PluginHost, bundle: ModelBundle, clips: int = 2) -> dict[str, torch.Tensor]:
        """A training batch of random clips of the shape the bundle accepts, and two captions."""
        import torch

        frames = 2 * bundle.temporal_compression + 1 if bundle.temporal_compression > 1 else 1
        side = 2 * bundle.spatial_multiple
        pixels = torch.rand(clips, frames, 3, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1
        with torch.no_grad():
            latents = host.encode_batch(bundle, pixels)
            prompts = host.encode_prompts(bundle, ["a red square moving left", "a blue circle"][:clips])
        batch = {k: torch.stack([item[k] for item in latents]) for k in latents[0]}
        text = host.collate_prompts(bundle, prompts)
        return {**batch, **(text if text is not None else {k: torch.stack([p[k] for p in prompts]) for k in prompts[0]})}

    def loss(self, host: PluginHost, config: RunConfig, bundle: ModelBundle, batch: dict, seed: int = 0) -> float:
        import torch

        with torch.no_grad():
            out = host.compute_loss(bundle, batch, torch.Generator().manual_seed(seed), config)
        assert out.loss.ndim == 0, f"compute_loss must return a scalar loss, got shape {tuple(out.loss.shape)}"
        return float(out.loss)

    # -- the checks ----------------------------------------------------------

    def test_load_model_returns_a_frozen_bundle_that_describes_itself(self, contract_bundle: Any) -> None:
        import torch

        from tuner.train.adapters import matching_modules

        _, _, bundle = contract_bundle
        assert bundle.family == self.family_name
        trainable = [n for m in bundle.denoisers() for n, p in m.named_parameters() if p.requires_grad]
        assert not trainable, f"load_model must freeze every parameter; trainable: {trainable[:3]}"
        assert matching_modules(bundle.denoiser, bundle.lora_target_modules), "lora_target_modules match no module"
        assert bundle.cache_id, "cache_id must name the encoders, so caches of other encoders are not reused"
        assert bundle.temporal_compression >= 1 and bundle.spatial_multiple >= 1
        assert bundle.block_lists, "block_lists tells memory features (offload, quantize) where the blocks are"
        for path in bundle.block_lists:
            blocks = bundle.denoiser.get_submodule(path)
            assert isinstance(blocks, torch.nn.ModuleList) and len(blocks) > 0, f"block_lists '{path}' is no ModuleList"
        for key, kind in bundle.encoders.items():
            assert key in bundle.components and kind in _KINDS, f"encoders['{key}'] = '{kind}'"

    def test_clips_and_prompts_encode_deterministically(self, contract_bundle: Any) -> None:
        import torch

        host, _, bundle = contract_bundle
        first, second = self.batch(host, bundle), self.batch(host, bundle)
        assert first.keys() == second.keys()
        for key, value in first.items():
            assert value.device.type == "cpu" and torch.equal(value, second[key]), f"'{key}' differs between encodings"
        latents = next(v for v in first.values() if v.is_floating_point())
        assert not torch.equal(latents[0], latents[1]), "two different clips encode alike"

    def test_compute_loss_draws_only_from_its_generator(self, contract_bundle: Any) -> None:
        host, config, bundle = contract_bundle
        batch = self.batch(host, bundle)
        a, b, c = (self.loss(host, config, bundle, batch, seed) for seed in (0, 0, 1))
        assert math.isfinite(a) and a == b, "the same generator seed must give the same loss (exact resume needs it)"
        assert a != c, "the loss does not depend on the generator: draw noise and timesteps from it"

    def test_eval_loss_is_per_sample_and_repeatable(self, contract_bundle: Any) -> None:
        import torch

        host, config, bundle = contract_bundle
        if not host.implements(self.family_name, "eval_loss"):
            pytest.skip("the family does not implement eval_loss (optional)")
        one = {k: v[:1].repeat(3, *([1] * (v.ndim - 1))) for k, v in self.batch(host, bundle).items()}
        sigmas = torch.tensor([0.2, 0.5, 0.8])
        with torch.no_grad():
            a, b = (host.eval_loss(bundle, one, sigmas, torch.Generator().manual_seed(0), config) for _ in range(2))
        assert a.shape == (3,) and torch.isfinite(a).all() and torch.equal(a, b)
        assert len(set(a.tolist())) == 3, "eval_loss ignores the sigmas it is given"

    def test_token_routing_is_carried_out_or_refused(self, contract_bundle: Any) -> None:
        from tuner.errors import PluginError
        from tuner.routing import check_routing

        host, config, bundle = contract_bundle
        if not bundle.supports_token_routing:
            with pytest.raises(PluginError, match="does not support"):
                check_routing(bundle, KeepRouter(0.5))
            return
        batch = self.batch(host, bundle)
        span = (0, max(0, bundle.num_blocks - 2))
        bundle.denoiser.train()  # families route in the training forward only
        try:
            plain = self.loss(host, config, bundle, batch)
            bundle.run.router = KeepRouter(1.0, span)
            kept_all = self.loss(host, config, bundle, batch)
            bundle.run.router = KeepRouter(0.5, span)
            half = self.loss(host, config, bundle, batch)
        finally:
            bundle.run.router = None
            bundle.denoiser.eval()
        assert math.isclose(plain, kept_all, rel_tol=1e-5), "a plan that keeps every token changed the loss"
        assert math.isfinite(half) and half != plain, "the router's plan was not carried out"

    def test_token_grid_matches_what_a_block_outputs(self, contract_bundle: Any) -> None:
        """A family that describes its token grid: the latent tokens of a block (``block_tokens``) fill it exactly."""
        host, config, bundle = contract_bundle
        if bundle.token_grid is None:  # optional: features that read a block per frame (CREPA) then refuse the family
            assert bundle.block_tokens is None, "block_tokens is set without a token_grid to lay its tokens out"
            return
        batch = self.batch(host, bundle)
        seen: list[Any] = []
        block = bundle.denoiser.get_submodule(bundle.block_lists[0])[0]
        handle = block.register_forward_hook(lambda module, args, output: seen.append(bundle.latent_tokens(output)))
        try:
            self.loss(host, config, bundle, batch)
        finally:
            handle.remove()
        frames, height, width = bundle.token_grid(batch)
        expected = (len(next(iter(batch.values()))), frames * height * width, bundle.hidden_size)
        assert seen and tuple(seen[0].shape) == expected, (
            f"block_lists[0]'s first block gave latent tokens {tuple(seen[0].shape) if seen else None}; token_grid"
            f" {frames}x{height}x{width} and hidden_size say {expected}"
        )

    def test_training_lowers_the_loss(self, contract_trained: Any, contract_run: Path) -> None:
        from tuner.train.run import train

        output_dir, outputs = contract_trained
        trained = list(_losses(output_dir).values())
        assert len(trained) == self.steps and outputs["adapter"].is_file()
        # Per-step losses are noisy (new noise levels every step), so compare with the same run at a learning
        # rate too small to learn: the draws are identical step for step (they depend on the seed only).
        host = self.host()
        frozen = ["train.learning_rate=1e-12", "train.output_dir='untrained'", "validation.validation_prompt=''"]
        train(self.config(contract_run, host, frozen), host)
        untrained = list(_losses(contract_run.parent / "untrained").values())
        quarter = max(1, self.steps // 4)
        ratio = sum(trained[-quarter:]) / sum(untrained[-quarter:])
        assert ratio < 0.95, f"training did not lower the loss: {ratio:.3f} of the untrained loss on the same draws"

    def test_validation_renders_every_round(self, contract_trained: Any, contract_bundle: Any) -> None:
        host, _, _ = contract_bundle
        if not host.implements(self.family_name, "validate"):
            pytest.skip("the family does not implement validate (optional)")
        output_dir, _ = contract_trained
        rounds = sorted(p.name for p in (output_dir / "validation").glob("step-*") if any(p.iterdir()))
        assert rounds == [f"step-{self.steps // 2}", f"step-{self.steps}"]

    def test_adapter_round_trips_through_the_family_pipeline(self, contract_trained: Any, contract_run: Path) -> None:
        import numpy as np

        _, outputs = contract_trained
        model_dir = contract_run.parent.parent / "model"
        before, after = self.render(model_dir, None), self.render(model_dir, outputs["adapter"])
        assert before.shape == after.shape and np.isfinite(after).all()
        assert np.abs(np.asarray(after, float) - np.asarray(before, float)).mean() > 1e-4, "the adapter changed nothing"

    def test_resume_is_exact(self, contract_trained: Any, contract_run: Path) -> None:
        import torch
        from safetensors.torch import load_file

        from tuner.train.run import train

        output_dir, outputs = contract_trained
        half = self.steps // 2
        host = self.host()
        checkpoint = output_dir / f"checkpoint-{half}"
        config = self.config(contract_run, host, [
            "train.output_dir='resumed'", f"train.resume_from_checkpoint='{checkpoint}'", "validation.validation_prompt=''",
        ])
        resumed = train(config, host)
        straight = _losses(output_dir)
        again = _losses(contract_run.parent / "resumed")
        assert sorted(again) == list(range(half + 1, self.steps + 1)), "the resumed run continues after the checkpoint"
        assert again == {s: straight[s] for s in again}, "the resumed run's losses differ from the uninterrupted run's"
        a, b = load_file(outputs["adapter"]), load_file(resumed["adapter"])
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resume is not bit-exact"

    def test_scheduled_sampling_rolls_out_through_the_family(self, contract_run: Path, contract_bundle: Any) -> None:
        """tuner's rollout plugin, through `noisy_inputs` and the ``predict`` the family lends it (or refused)."""
        from tuner.errors import PluginError
        from tuner.report.jsonlog import read_log
        from tuner.train.run import train

        _, _, bundle = contract_bundle
        host = self.host("rollout")
        settings = [
            "rollout.scheduled_sampling_max_step_offset=3", "rollout.scheduled_sampling_probability=1.0",
            "rollout.scheduled_sampling_reflexflow=true", "train.max_train_steps=2", "train.output_dir='rollout'",
            "validation.validation_prompt=''",
        ]  # fmt: skip
        if not bundle.rewritable_inputs:
            with pytest.raises(PluginError, match="does not build its training input"):
                train(self.config(contract_run, host, settings), host)
            return
        train(self.config(contract_run, host, settings), host)
        steps = [r for r in read_log(contract_run.parent / "rollout") if r["event"] == "step"]
        assert len(steps) == 2 and all(math.isfinite(s["loss"]) for s in steps)
        assert all(s["rollout_samples"] >= 1 and s["rollout_forwards"] > s["rollout_samples"] for s in steps), (
            "every sample was rolled out by the family's forward (and ReflexFlow's clean prediction)"
        )

    @pytest.mark.parametrize("weights", ["offloaded", "quantized"])
    def test_features_run_on_the_family_without_knowing_it(self, contract_run: Path, contract_bundle: Any, weights: str) -> None:
        """tuner's own features (in its wheel, named like any plugin), together, through the bundle's fields.

        Offloading and a quantized base exclude each other, hence two runs.
        """
        from tuner.train.run import train

        host, _, bundle = contract_bundle
        features = ["attention", "offload"]
        settings = [
            "attention.attention_mechanism='sdpa-math'",
            "offload.enable_chunked_feed_forward=true",
            "offload.feed_forward_chunk_size=16",
            "train.gradient_checkpointing=true",  # recomputes (routed) blocks in the backward pass
            "train.max_train_steps=3",
            f"train.output_dir='features-{weights}'",
            "validation.validation_prompt=''",
        ]
        if weights == "offloaded":
            settings.append("offload.enable_group_offload=true")  # finds the blocks through block_lists
        else:
            pytest.importorskip("optimum.quanto", reason="int8-quanto needs optimum-quanto")
            features.append("quantize")
            settings.append("quantize.base_model_precision='int8-quanto'")
        if bundle.supports_token_routing:
            features.append("tread")
            settings.append("tread.tread_config={routes = [{selection_ratio = 0.5, start_layer_idx = 0, end_layer_idx = 0}]}")
        if host.implements(self.family_name, "eval_loss"):
            settings += ["evaluation.eval_steps_interval=3", "evaluation.eval_split=0.5"]
        host = self.host(*features)
        outputs = train(self.config(contract_run, host, settings), host)
        losses = list(_losses(contract_run.parent / f"features-{weights}").values())
        assert len(losses) == 3 and all(math.isfinite(x) for x in losses) and outputs["adapter"].is_file()
