"""The training state of one run and the step that advances it.

`Trainer.step` reads top to bottom: micro-batches, backward, clip, update,
schedule, EMA. Everything a step draws at random comes from a generator seeded
by ``(seed, micro-batch index)``, so resuming repeats an uninterrupted run.

Precision (see `tuner.train.precision`): the adapter and its optimizer state are
float32; the forward runs under the autocast accelerate installed at ``prepare``;
under fp16 the loss goes through accelerate's gradient scaler, and a step whose
gradients overflowed is skipped by it: counted in ``overflow_steps``, logged as
``skipped`` with the new ``loss_scale``, and saved in checkpoints with the scaler.

Threads: every torch op of the loop runs on this (the training) thread. The
batch prefetch thread only reads files (`tuner.data.batches`).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.errors import CheckpointError, DataError, TunerError

if TYPE_CHECKING:
    import torch

    from tuner.config import RunConfig
    from tuner.data.batches import TrainingData
    from tuner.distributed import World
    from tuner.plugins import PluginHost
    from tuner.train.adapters import AdapterSet
    from tuner.train.ema import EMA
    from tuner.types.bundle import ModelBundle
    from tuner.types.training import RunInfo
    from tuner.types.validation import ValidationResult

__all__ = ["TrainingDiverged", "Trainer", "micro_seed", "EMA_ADAPTER_FILE", "MAX_SKIPPED_STEPS"]

EMA_ADAPTER_FILE = "pytorch_lora_weights_ema.safetensors"
MAX_SKIPPED_STEPS = 10


class TrainingDiverged(TunerError):
    """The loss became NaN or infinite."""


def micro_seed(seed: int, index: int) -> int:
    """The seed of micro-batch ``index``: noise and timesteps depend on nothing else."""
    return (seed * 1_000_003 + index * 7_919 + 1) % (2**63 - 1)


@dataclass
class Trainer:
    host: PluginHost
    config: RunConfig
    bundle: ModelBundle
    data: TrainingData
    adapter: AdapterSet
    optimizer: Any
    schedule: Any
    accelerator: Any
    run: RunInfo
    ema: EMA | None = None
    skipped_in_a_row: int = field(default=0)
    overflow_steps: int = field(default=0)
    # Parameters of the features' own modules (`RunSlots.trainables`): optimized, clipped and
    # checkpointed with the adapter's, after them; never exported or averaged by EMA.
    extras: list[torch.nn.Parameter] = field(default_factory=list)
    # The prepared training forward (`tuner.train.data_parallel`) and this process's place among several;
    # by default the plain forward and a process on its own.
    forward: Any = None
    world: World | None = None
    # What checkpoints record and a resume must match (`tuner.train.identity.run_identity`).
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def ranks(self) -> World:
        if self.world is None:
            from tuner.distributed import World

            self.world = World(gradient_accumulation_steps=self.config.train.gradient_accumulation_steps)
        return self.world

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return self.adapter.params + self.extras

    # -- the step ------------------------------------------------------------

    def micro_batch(self, index: int) -> dict[str, torch.Tensor]:
        import torch

        latents, prompts = self.data.load_micro_batch(index, following=index + self.ranks.size)
        text = self.host.collate_prompts(self.bundle, prompts)
        if text is None:
            text = {k: torch.stack([p[k] for p in prompts]) for k in prompts[0]}
        device = self.accelerator.device
        return {k: v.to(device, non_blocking=True) for k, v in {**latents, **text}.items()}

    def step(self, step: int) -> dict[str, float]:
        """Optimizer step ``step + 1``: accumulate micro-batches, clip, update, schedule, EMA."""
        import torch

        from tuner.train.data_parallel import TrainingForward

        if self.forward is None:  # not prepared by accelerate: the plain forward
            self.forward = TrainingForward(self.host, self.bundle, self.config)
        tc, acc, model = self.config.train, self.accelerator, self.forward
        start = time.perf_counter()
        ga = tc.gradient_accumulation_steps
        losses: list[torch.Tensor] = []
        logs: dict[str, float] = {}
        self.bundle.run.training_step = step  # the clock of a feature's schedule inside compute_loss
        for micro in range(ga):
            index = self.ranks.micro_index(step, micro)  # run-wide: this process's share, its own noise
            batch = self.micro_batch(index)
            generator = torch.Generator(acc.device).manual_seed(micro_seed(tc.seed, index))
            out = model(batch, generator)
            total = out.loss
            # Features add their weighted terms; a term weighted 0 stays out of the graph.
            for term in self.host.auxiliary_losses(self.bundle, batch, out, step, self.config):
                logs.update(term.logs)
                if term.loss is not None and term.weight != 0:
                    total = total + term.weight * term.loss
            if not self.ranks.all_finite(total):  # every process skips the step, or none
                self._check_inputs(step, index, batch)  # a damaged input is not a learning rate to lower
                return self._bad_loss(step, float(total.detach()), start)
            # Gradients add up across micro-batches; DDP syncs only on the last one.
            sync = micro == ga - 1
            with contextlib.nullcontext() if sync else acc.no_sync(model):
                acc.backward(total / ga if ga > 1 else total)  # no division (and its backward) for one
            losses.append(out.loss.detach())  # the family's objective: comparable with and without features
            logs.update(out.logs)
        self._sync_extras()
        logs["grad_norm"] = self._clip()
        # Without a gradient scaler accelerate's optimizer wrapper only forwards step and zero_grad, after
        # probing twice for the lomo package on the import path (0.1-0.3 ms each, a few % of a tiny step) and
        # reading zero_grad's signature: call the optimizer itself then.
        optimizer = self.optimizer if acc.scaler is not None else getattr(self.optimizer, "optimizer", self.optimizer)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.schedule.step()  # a skipped step still counts, as in _bad_loss
        if acc.scaler is not None:
            logs["loss_scale"] = float(acc.scaler.get_scale())
            if self.optimizer.step_was_skipped:  # fp16 gradients overflowed: the scaler dropped the update
                self.overflow_steps += 1
                logs["skipped"] = 1.0
        if self.ema is not None and "skipped" not in logs:
            self.ema.update(step + 1)
        self.skipped_in_a_row = 0
        loss = float(self.ranks.mean(torch.stack(losses).float().mean()))
        return {"loss": loss, "lr": self._lr(), "step_time": time.perf_counter() - start, **logs}

    def _sync_extras(self) -> None:
        """Average the features' gradients across processes (DDP syncs only the wrapped denoisers')."""
        import torch

        acc = self.accelerator
        if acc.num_processes == 1:
            return
        for param in self.extras:
            grad = param.grad if param.grad is not None else torch.zeros_like(param)
            param.grad = acc.reduce(grad, reduction="mean")

    def _clip(self) -> float:
        """Clip as configured; return the gradient norm before clipping."""
        import torch

        tc, acc = self.config.train, self.accelerator
        if tc.max_grad_norm > 0 and tc.grad_clip_method == "norm":
            return float(acc.clip_grad_norm_(self.params, tc.max_grad_norm))
        if acc.scaler is not None:  # fp16: clip the true gradients, not the scaled ones
            acc.unscale_gradients()
        grads = [p.grad.detach().float() for p in self.params if p.grad is not None]
        norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))) if grads else 0.0
        if tc.max_grad_norm > 0:
            # torch's own clip: accelerate's clip_grad_value_ unscales again, which the scaler refuses
            # ("unscale_() has already been called") on the step's second unscale.
            torch.nn.utils.clip_grad_value_(self.params, tc.max_grad_norm)
        return norm

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _check_inputs(self, step: int, index: int, batch: dict[str, torch.Tensor]) -> None:
        """Stop in one line naming the cache entries when the loss is not finite because an input is not."""
        import torch

        rows: set[int] = set()
        keys = []
        for key, value in batch.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
                keys.append(key)
                rows |= {i for i in range(value.shape[0]) if not torch.isfinite(value[i]).all()}
        if not keys:
            return
        epoch = index // self.data.epoch_length
        picked = [self.data.samples[i].at(epoch) for i in self.data.batch_indices(index)]
        # The latent and the caption's entry of each sample with a bad row (which one holds the key is the family's).
        entries = [str(p) for i in sorted(rows) if i < len(picked) for p in (picked[i].latents, picked[i].text)][:4]
        raise DataError(
            f"the loss of step {step + 1} is not finite because its inputs are not ({', '.join(keys)} hold NaN or"
            f" infinite values): a damaged cache entry, not the learning rate; delete {', '.join(entries) or 'the'}"
            " cache entries (they are encoded anew) and resume"
        )

    def _bad_loss(self, step: int, loss: float, start: float) -> dict[str, float]:
        tc = self.config.train
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_in_a_row += 1
        if tc.on_nan_loss == "stop" or self.skipped_in_a_row >= MAX_SKIPPED_STEPS:
            why = "" if tc.on_nan_loss == "stop" else f" ({MAX_SKIPPED_STEPS} steps in a row)"
            raise TrainingDiverged(
                f"loss became {loss} at step {step + 1}{why}; no update was applied and the last checkpoint is"
                " intact: lower learning_rate or max_grad_norm and resume from it, or set on_nan_loss = 'skip'"
            )
        # The step still counts (data, noise and the schedule move on), without an update.
        self.schedule.step()
        return {"loss": loss, "lr": self._lr(), "step_time": time.perf_counter() - start, "skipped": 1.0}

    # -- adapters and checkpoints -------------------------------------------

    def export_adapter(self, path: Path, *, ema: bool = False, step: int | None = None) -> dict[str, Path]:
        """Write the adapter (or its EMA) as `tuner.train.export.write_adapter_files` does: label -> file."""
        from tuner.train.export import write_adapter_files

        context = self.ema.applied() if ema and self.ema is not None else contextlib.nullcontext()
        with context:
            members = self.adapter.weights()
        return write_adapter_files(self.host, self.config, self.bundle, members, path, step=step, params=self.params)

    def _write_adapters(self, folder: Path, step: int) -> None:
        from tuner.train.checkpoints import ADAPTER_FILE

        self.export_adapter(folder / ADAPTER_FILE, step=step)
        if self.ema is not None:
            self.export_adapter(folder / EMA_ADAPTER_FILE, ema=True, step=step)

    def save_checkpoint(self, step: int) -> Path:
        import torch

        from tuner.train.checkpoints import rotate_checkpoints, write_checkpoint

        tc = self.config.train
        state = {
            "params": [p.detach().cpu().clone() for p in self.params],
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "skipped_in_a_row": self.skipped_in_a_row,
            "overflow_steps": self.overflow_steps,
            "scaler": self.accelerator.scaler.state_dict() if self.accelerator.scaler is not None else None,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        info = {
            "seed": tc.seed,
            "num_processes": self.ranks.size,
            "micro_batches": self.ranks.consumed(step),
            "identity": self.identity,
        }
        path = write_checkpoint(Path(tc.output_dir), step, state, lambda folder: self._write_adapters(folder, step), info)
        rotate_checkpoints(Path(tc.output_dir), tc.checkpoints_total_limit, keep=path)
        self.host.on_checkpoint_saved(self.run, step, path)
        return path

    def resume(self, path: Path) -> int:
        import torch

        from tuner.train.checkpoints import read_checkpoint

        state, info = read_checkpoint(path)
        saved_params = state.get("params")
        fits = (
            isinstance(saved_params, list)
            and len(saved_params) == len(self.params)
            and all(isinstance(a, torch.Tensor) and a.shape == b.shape for a, b in zip(saved_params, self.params))
        )
        self._check_identity(path, info, fits)
        if not fits:
            raise CheckpointError(
                f"{path} was written for a different adapter (type, rank or targets changed) or other feature"
                " modules (a feature such as crepa turned on or off)"
            )
        if self.config.train.resume_weights_only:
            with torch.no_grad():
                for saved, param in zip(saved_params, self.params):
                    param.copy_(saved.to(param.device, param.dtype))
            if self.ema is not None:  # the average starts from the weights taken over
                self.ema.load_state_dict([p.detach() for p in self.params])
            return 0
        if self.ema is not None and state.get("ema") is None:
            raise CheckpointError(f"{path} has no EMA weights; resume with use_ema = false or start afresh")
        try:
            with torch.no_grad():
                for saved, param in zip(saved_params, self.params):
                    param.copy_(saved.to(param.device, param.dtype))
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
            self.skipped_in_a_row = int(state.get("skipped_in_a_row", 0))
            self.overflow_steps = int(state.get("overflow_steps", 0))
            if self.accelerator.scaler is not None and state.get("scaler"):
                self.accelerator.scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["torch_rng"])
            if state.get("cuda_rng") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError, OverflowError) as exc:
            # A state that parses but does not fit: another optimizer, or a hand-edited file.
            why = str(exc).partition("\n")[0]
            raise CheckpointError(
                f"{path} does not fit this run ({type(exc).__name__}: {why}); resume with the optimizer and schedule"
                " settings it was written with, or start afresh"
            ) from None
        step = int(info["step"])
        self._continue_data(path, step, info)
        return step

    def _check_identity(self, path: Path, info: dict[str, Any], fits: bool) -> None:
        """Refuse in one line a checkpoint written for another model, adapter or optimizer."""
        from tuner.progress import notice
        from tuner.train.identity import resume_refusal

        if "identity" not in info:
            notice(f"{path.name} records no model or adapter (written by an earlier tuner): its settings are not checked")
            return
        refusal = resume_refusal(info["identity"], self.identity, self.config.train.resume_weights_only, fits)
        if refusal is not None:
            raise CheckpointError(f"{path} {refusal}")

    def _continue_data(self, path: Path, step: int, info: dict[str, Any]) -> None:
        """Number micro-batches on from where the checkpoint's processes stopped, whatever their count."""
        from tuner.progress import notice

        tc, world = self.config.train, self.ranks
        saved = int(info.get("num_processes", 1))
        consumed = int(info.get("micro_batches", step * tc.gradient_accumulation_steps * saved))
        world.resume_at(step, consumed)
        if saved != world.size:
            before = tc.train_batch_size * tc.gradient_accumulation_steps * saved
            notice(
                f"{path.name} was written by {saved} process(es), this run has {world.size}: the global batch changes"
                f" from {before} to {tc.train_batch_size * tc.gradient_accumulation_steps * world.size} samples per"
                " step; the data continues where it stopped, but the run will not match an uninterrupted one"
            )

    def validate(self, step: int) -> ValidationResult | None:
        from tuner.validate.rounds import run_validation

        use_ema = self.ema.applied if self.ema is not None else None

        def preview(key: str, sampler_step: int, path: Path) -> None:
            self.host.on_validation_preview(self.run, step, key, sampler_step, path)

        result = run_validation(self.host, self.bundle, self.config, step, use_ema=use_ema, on_preview=preview)
        if result is not None:
            self.host.on_validation_done(self.run, result)
        return result
