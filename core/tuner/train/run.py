"""A whole training run, from a resolved config to an exported adapter.

config -> load model -> prepare (features) -> attach adapter -> caches ->
resume -> loop (checkpoints, validation) -> export. Model-family specifics
happen only inside hooks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.errors import CheckpointError, ConfigError, PluginError, TunerError
from tuner.train.checkpoints import ADAPTER_FILE

if TYPE_CHECKING:
    import torch

    from tuner.cache.build import CachedSample
    from tuner.config import RunConfig
    from tuner.plugins import PluginHost
    from tuner.types import ModelBundle, RunInfo

__all__ = ["TrainingDiverged", "train", "micro_seed"]


class TrainingDiverged(TunerError):
    """The loss became NaN or infinite."""


def micro_seed(seed: int, index: int) -> int:
    """The seed of micro-batch ``index``: noise and timesteps depend on nothing else."""
    return (seed * 1_000_003 + index * 7_919 + 1) % (2**63 - 1)


@dataclass
class _Trainer:
    host: PluginHost
    config: RunConfig
    bundle: ModelBundle
    samples: list[CachedSample]
    params: list[torch.nn.Parameter]
    optimizer: Any
    accelerator: Any
    run: RunInfo

    def export_adapter(self, path: Path) -> Path:
        import os

        from safetensors.torch import save_file

        from tuner.train.adapters import adapter_state_dict

        state = adapter_state_dict(self.accelerator.unwrap_model(self.bundle.denoiser))
        tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
        if self.host.export_adapter(self.bundle, state, tmp) is None:
            save_file(state, str(tmp))  # families without an exporter get peft's names
        os.replace(tmp, path)
        return path

    def save_checkpoint(self, step: int) -> Path:
        import torch

        from tuner.train.checkpoints import rotate_checkpoints, write_checkpoint

        tc = self.config.train
        state = {
            "params": [p.detach().cpu().clone() for p in self.params],
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        path = write_checkpoint(Path(tc.output_dir), step, state, self.export_adapter, {"seed": tc.seed})
        rotate_checkpoints(Path(tc.output_dir), tc.checkpoints_total_limit)
        self.host.on_checkpoint_saved(self.run, step, path)
        return path

    def resume(self, path: Path) -> int:
        import torch

        from tuner.train.checkpoints import read_checkpoint

        state, info = read_checkpoint(path)
        if len(state["params"]) != len(self.params) or any(
            a.shape != b.shape for a, b in zip(state["params"], self.params)
        ):
            raise CheckpointError(f"{path} was written for a different adapter (rank or targets changed)")
        with torch.no_grad():
            for saved, param in zip(state["params"], self.params):
                param.copy_(saved.to(param.device, param.dtype))
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return int(info["step"])

    def validate(self, step: int) -> None:
        from tuner.validate.rounds import run_validation

        result = run_validation(self.host, self.bundle, self.config, step)
        if result is not None:
            self.host.on_validation_done(self.run, result)

    def micro_batch(self, index: int) -> dict[str, torch.Tensor]:
        import torch

        from tuner.data.batches import batch_indices, load_batch

        tc = self.config.train
        indices = batch_indices(index, len(self.samples), tc.train_batch_size, tc.seed)
        latents, prompts = load_batch(self.samples, indices)
        text = self.host.collate_prompts(self.bundle, prompts)
        if text is None:
            text = {k: torch.stack([p[k] for p in prompts]) for k in prompts[0]}
        device = self.accelerator.device
        return {k: v.to(device, non_blocking=True) for k, v in {**latents, **text}.items()}

    def step(self, step: int) -> dict[str, float]:
        """One optimizer step: ``gradient_accumulation_steps`` micro-batches, clip, update."""
        import torch

        tc, acc = self.config.train, self.accelerator
        start = time.perf_counter()
        losses: list[torch.Tensor] = []
        extra: dict[str, float] = {}
        for micro in range(tc.gradient_accumulation_steps):
            index = step * tc.gradient_accumulation_steps + micro
            batch = self.micro_batch(index)
            generator = torch.Generator(acc.device).manual_seed(micro_seed(tc.seed, index))
            with acc.accumulate(self.bundle.denoiser):
                out = self.host.compute_loss(self.bundle, batch, generator, self.config)
                acc.backward(out.loss)  # accelerate divides by the accumulation count
                if acc.sync_gradients and tc.max_grad_norm > 0:
                    extra["grad_norm"] = float(acc.clip_grad_norm_(self.params, tc.max_grad_norm))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            losses.append(out.loss.detach())
            extra.update(out.logs)
        loss = float(torch.stack(losses).float().mean())
        if not torch.isfinite(torch.tensor(loss)):
            raise TrainingDiverged(
                f"loss became {loss} at step {step + 1}; the last checkpoint is intact: lower learning_rate "
                "or max_grad_norm and resume from it"
            )
        return {"loss": loss, "lr": self.optimizer.param_groups[0]["lr"], "step_time": time.perf_counter() - start, **extra}


def _check_shapes(config: RunConfig, bundle: ModelBundle) -> None:
    frames, t = config.data.num_frames, bundle.temporal_compression
    if t > 1 and frames % t != 1:
        lower = (frames - 1) // t * t + 1
        raise ConfigError(
            f"data.num_frames = {frames} does not fit the {bundle.family} VAE, which needs {t}k+1 frames:"
            f" use {lower} or {lower + t}"
        )
    res, m = config.data.resolution, bundle.spatial_multiple
    if res % m:
        raise ConfigError(f"data.resolution = {res} must be a multiple of {m} for {bundle.family}: use {res // m * m}")


def _resume_path(config: RunConfig) -> Path | None:
    from tuner.train.checkpoints import latest_checkpoint

    wanted = config.train.resume_from_checkpoint
    if not wanted:
        return None
    if wanted == "latest":
        return latest_checkpoint(Path(config.train.output_dir))
    path = Path(config.resolve_path(wanted))
    if not path.is_dir():
        raise CheckpointError(f"train.resume_from_checkpoint: no checkpoint folder at {path}")
    return path


def train(config: RunConfig, host: PluginHost) -> dict[str, Path]:
    """Run training as configured; return the files produced (``adapter``, ``checkpoint``, ...)."""
    import torch
    from accelerate import Accelerator

    from tuner.data.prepare import prepare_samples, scan_samples
    from tuner.report.progress import TrainProgress
    from tuner.train.adapters import attach_lora
    from tuner.train.checkpoints import clean_partials
    from tuner.types import RunInfo

    tc = config.train
    samples = scan_samples(config)
    output_dir = Path(tc.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    clean_partials(output_dir)
    resume_from = _resume_path(config)

    # accelerate keeps its settings process-wide; a run in the same process
    # (tests, notebooks) must not inherit the last run's mixed precision.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    try:
        accelerator = Accelerator(
            mixed_precision=tc.mixed_precision, gradient_accumulation_steps=tc.gradient_accumulation_steps
        )
    except ValueError as exc:
        raise ConfigError(f"train.mixed_precision = '{tc.mixed_precision}' cannot run here: {exc}") from None
    torch.manual_seed(tc.seed)

    bundle = host.load_model(config, accelerator.device)
    _check_shapes(config, bundle)
    host.prepare_model(bundle, config, "base")
    targets = tc.lora_target_modules or bundle.lora_target_modules
    params = attach_lora(bundle.denoiser, targets, tc.lora_rank, tc.lora_alpha, tc.lora_dropout)
    host.prepare_model(bundle, config, "adapted")
    router = host.route_tokens(bundle, config)
    if router is not None and not bundle.supports_token_routing:
        raise PluginError(f"token routing is configured but model family '{bundle.family}' does not support it")
    bundle.router = router

    cached = prepare_samples(host, bundle, config, samples, accelerator.device)

    optimizer = torch.optim.AdamW(
        params,
        lr=tc.learning_rate,
        betas=(tc.adam_beta1, tc.adam_beta2),
        weight_decay=tc.adam_weight_decay,
        eps=tc.adam_epsilon,
    )
    bundle.denoiser.train()
    bundle.denoiser, optimizer = accelerator.prepare(bundle.denoiser, optimizer)
    run = RunInfo(output_dir, tc.max_train_steps, 0, bundle.family, config)
    trainer = _Trainer(host, config, bundle, cached, params, optimizer, accelerator, run)
    if resume_from is not None:
        run.start_step = trainer.resume(resume_from)

    outputs: dict[str, Path] = {}
    error: BaseException | None = None
    done = run.start_step
    host.on_run_start(run)
    try:
        with TrainProgress(tc.max_train_steps, run.start_step) as bar:
            if resume_from is not None:
                bar.note(f"resumed from {resume_from} at step {run.start_step}")
            vi = config.validation.validation_step_interval
            for step in range(run.start_step, tc.max_train_steps):
                logs = trainer.step(step)
                done = step + 1
                bar.update(done, logs)
                host.on_step_end(run, done, logs)
                if tc.checkpoint_step_interval and done % tc.checkpoint_step_interval == 0:
                    outputs["checkpoint"] = trainer.save_checkpoint(done)
                if vi and done % vi == 0 and done < tc.max_train_steps:
                    trainer.validate(done)
        if outputs.get("checkpoint") != output_dir / f"checkpoint-{done}":
            outputs["checkpoint"] = trainer.save_checkpoint(done)
        outputs["adapter"] = trainer.export_adapter(output_dir / ADAPTER_FILE)
        trainer.validate(done)
    except KeyboardInterrupt as exc:
        error = exc
        # Between steps the state is consistent: keep the work done so far.
        trainer.optimizer.zero_grad(set_to_none=True)
        if done > run.start_step and not (output_dir / f"checkpoint-{done}").exists():
            outputs["checkpoint"] = trainer.save_checkpoint(done)
        raise
    except BaseException as exc:
        error = exc
        raise
    finally:
        host.on_run_end(run, outputs, error)
    return outputs
