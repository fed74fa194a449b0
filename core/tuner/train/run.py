"""A whole training run, from a resolved config to an exported adapter.

config -> load model -> prepare (features) -> attach adapter -> caches ->
resume -> loop (checkpoints, validation) -> export. Model-family specifics
happen only inside hooks; the step itself lives in `tuner.train.trainer`.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.errors import CheckpointError, ConfigError, PluginError
from tuner.train.adapters import final_adapter_files
from tuner.train.stop import Interrupted, StopSignals
from tuner.train.trainer import Trainer, TrainingDiverged, micro_seed

if TYPE_CHECKING:
    import torch

    from tuner.config import RunConfig
    from tuner.data.layout import DataLayout
    from tuner.distributed import World
    from tuner.plugins import PluginHost
    from tuner.types.bundle import ModelBundle

__all__ = ["TrainingDiverged", "train", "micro_seed", "make_accelerator"]


def _resume_path(config: RunConfig, notice: Callable[[str], None]) -> Path | None:
    """The checkpoint to resume from: 'latest' skips damaged ones with a ``notice``; a named damaged one stops."""
    from tuner.train.checkpoints import checkpoint_problem, latest_checkpoint

    wanted = config.train.resume_from_checkpoint
    if not wanted:
        return None
    if wanted == "latest":
        skipped: list[Path] = []

        def skip(path: Path, why: str) -> None:
            skipped.append(path)
            notice(f"skipping damaged checkpoint {path}: {why}")

        found = latest_checkpoint(Path(config.train.output_dir), skip)
        if found is None and skipped:
            notice(f"no intact checkpoint in {config.train.output_dir}: starting from step 0")
        return found
    path = Path(config.resolve_path(wanted))
    if not path.is_dir():
        raise CheckpointError(f"train.resume_from_checkpoint: no checkpoint folder at {path}")
    problem = checkpoint_problem(path, checksums=False)  # sizes now; checksums when it is read
    if problem is not None:
        raise CheckpointError(
            f"train.resume_from_checkpoint: {path} cannot be used: {problem}; name another checkpoint or use 'latest'"
        )
    return path


def _claim_output_dir(config: RunConfig, output_dir: Path) -> None:
    """A fresh run never replaces another run's checkpoints unless told to (overwrite_output_dir)."""
    from tuner.outputs import LOG_NAME, check_own_names
    from tuner.progress import notice
    from tuner.train.checkpoints import holds_checkpoints, list_checkpoints, remove_checkpoint

    check_own_names(output_dir)  # the user's README.md in output_dir = ".": refused before any work
    tc = config.train
    if (tc.resume_from_checkpoint and not tc.resume_weights_only) or not holds_checkpoints(output_dir):
        return
    if tc.resume_weights_only:
        raise ConfigError(
            f"train.output_dir {output_dir} holds another run's checkpoints, and resume_weights_only starts a new run:"
            " pick another output_dir"
        )
    if not tc.overwrite_output_dir:
        raise ConfigError(
            f"train.output_dir {output_dir} holds another run's checkpoints: resume it (resume_from_checkpoint ="
            " 'latest'), pick another output_dir, or set overwrite_output_dir = true to delete them and start afresh"
        )
    found = list_checkpoints(output_dir, links=True)
    notice(f"overwrite_output_dir: deleting {len(found)} checkpoint(s) of an earlier run in {output_dir}")
    for _, path in found:
        remove_checkpoint(path)  # a link goes, never what it points at
    (output_dir / LOG_NAME).unlink(missing_ok=True)


def make_accelerator(config: RunConfig):  # type: ignore[no-untyped-def]
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from tuner.distributed import process_group_kwargs

    tc = config.train
    # accelerate keeps its settings process-wide; a run in the same process
    # (tests, notebooks) must not inherit the last run's mixed precision.
    AcceleratorState._reset_state(reset_partial_state=False)
    from tuner.train.precision import enable_fp16_on_cpu

    try:
        accelerator = Accelerator(mixed_precision=tc.mixed_precision, kwargs_handlers=process_group_kwargs(config))
    except ValueError as exc:
        raise ConfigError(f"train.mixed_precision = '{tc.mixed_precision}' cannot run here: {exc}") from None
    enable_fp16_on_cpu(accelerator)
    return accelerator


def _enable_gradient_checkpointing(bundle: ModelBundle) -> None:
    for expert in bundle.trained_experts():
        enable = getattr(expert.module, "enable_gradient_checkpointing", None)
        if enable is None:
            raise PluginError(
                f"model family '{bundle.family}' does not support gradient_checkpointing: set it to false"
            )
        enable()


def _feature_params(bundle: ModelBundle, device: torch.device) -> list[torch.nn.Parameter]:
    """The parameters of the features' own modules (`RunSlots.trainables`), float32 and trainable on ``device``."""
    params: list[torch.nn.Parameter] = []
    for name in sorted(bundle.run.trainables):  # a stable order: checkpoints store the parameters as a list
        module = bundle.run.trainables[name].float().to(device).train()
        for param in module.parameters():
            param.requires_grad_(True)
            params.append(param)
    return params


def _where_outputs_go(config: RunConfig, layout: DataLayout) -> str:
    """One line naming the output folder and the caches, and where relative paths were read from."""
    caches = {layout.default_text_cache, *(d.vae_cache for d in layout.datasets), *(d.text_cache for d in layout.datasets)}
    return (
        f"outputs go to {config.train.output_dir}; caches to {', '.join(sorted(map(str, caches)))}"
        f" ({config.paths.describe()})"
    )


def _adapter_outputs(name: str, files: dict[str, Path]) -> dict[str, Path]:
    """The run's outputs for exported adapter ``files``: ``adapter``, or ``adapter_<label>`` per expert."""
    return {f"{name}_{label}" if label else name: path for label, path in files.items()}


def train(config: RunConfig, host: PluginHost) -> dict[str, Path]:
    """Run training as configured; return the files produced (``adapter``, ``checkpoint``, ...)."""
    from tuner.data.layout import load_layout
    from tuner.distributed import World
    from tuner.outputs import check_apart, hold_output_dir
    from tuner.paths import check_output_dir
    from tuner.progress import set_log_format

    tc = config.train
    set_log_format(config.section("console").log_format)
    # Every process, before the scan and the model: a bad output_dir costs seconds, not minutes.
    check_apart(config, load_layout(config))  # outputs and caches never inside the data or the model
    check_output_dir("train.output_dir", Path(tc.output_dir))
    accelerator = make_accelerator(config)
    world = World.of(accelerator, tc.gradient_accumulation_steps)
    output_dir = Path(tc.output_dir)
    # One run per output folder, for as long as it lives (the main process holds it for all).
    lock = world.main(hold_output_dir)(output_dir)
    try:
        with StopSignals(world) as stop:  # SIGTERM and Ctrl-C save the step reached (tuner.train.stop)
            return _train(config, host, accelerator, world, stop)
    except Interrupted as exc:
        raise Interrupted(exc.signum, _stopped_line(exc, world, output_dir), whole=exc.whole) from None
    finally:
        if lock is not None:
            lock.release()


def _stopped_line(exc: Interrupted, world: World, output_dir: Path) -> str:
    """What a stop by a signal left behind, in one line."""
    from tuner.train.checkpoints import checkpoint_problem, list_checkpoints

    who = f"process {world.rank} of {world.size} " if world.size > 1 else ""
    line = f"{who}stopped by {exc.name}"
    if exc.signum == signal.SIGTERM and world.size > 1:
        line += " (from the scheduler, or from accelerate's launcher when another process of the run failed)"
    if not world.is_main:
        return line + "; the main process saves the step reached"
    # Sizes only: a scheduler's grace period is seconds, and the checksums are checked when it is resumed.
    intact = [path for _, path in list_checkpoints(output_dir) if checkpoint_problem(path, checksums=False) is None]
    last = intact[-1] if intact else None
    if last is None:
        return line + "; no checkpoint was written yet: the next run starts from step 0"
    return line + f"; {last} holds the last step saved: resume with resume_from_checkpoint = 'latest'"


def _train(config: RunConfig, host: PluginHost, accelerator: Any, world: World, stop: StopSignals) -> dict[str, Path]:
    import torch

    from tuner.data.batches import total_steps
    from tuner.data.prepare import prepare_samples, scan_samples
    from tuner.progress import TrainProgress, notice, say
    from tuner.train.adapters import attach_adapters, export_format
    from tuner.train.checkpoints import clean_partials
    from tuner.train.data_parallel import prepare_training
    from tuner.train.ema import EMA
    from tuner.train.identity import run_identity
    from tuner.train.optimizers import build_optimizer, check_optimizer
    from tuner.train.precision import cast_trainable, trainable_dtype
    from tuner.train.schedules import build_schedule, warmup_warning
    from tuner.types.training import RunInfo
    from tuner.validate.evaluation import EvalLoss, split_eval_samples
    from tuner.validate.rounds import check_validation, round_complete
    from tuner.validate.schedule import eval_due, validation_due

    tc = config.train
    output_dir = Path(tc.output_dir)
    # The main process scans first (it writes the file index and quarantines); the others then read it.
    samples = world.main_first(scan_samples, config)
    say(_where_outputs_go(config, samples.layout))

    def make_output_dir() -> None:
        output_dir.mkdir(parents=True, exist_ok=True)
        clean_partials(output_dir)  # also puts back a checkpoint a crash left set aside

    world.main(make_output_dir)()
    # Every process checks, so all stop alike; with overwrite_output_dir the main process deletes first.
    world.main_first(_claim_output_dir, config, output_dir)
    resume_from = _resume_path(config, world.main(notice))  # every process, before any writes a checkpoint
    check_optimizer(tc.optimizer, accelerator.device.type)
    torch.manual_seed(tc.seed)

    bundle = host.load_model(config, accelerator.device)
    check_validation(host, bundle, config)
    host.prepare_model(bundle, config, "base", accelerator.device)
    adapter = attach_adapters(bundle, tc, tc.lora_target_modules or bundle.lora_target_modules)
    coverage = adapter.coverage()
    if coverage is not None:
        (notice if coverage[1] else say)(coverage[0])
    if tc.init_lora is not None:
        from tuner.train.init_lora import init_from_file

        alpha = tc.lora_alpha if tc.lora_alpha is not None else float(tc.lora_rank)
        for line in init_from_file(adapter, tc.init_lora, tc.lora_rank, alpha, host.lora_namings()):
            say(line)
    lora_format = export_format(tc.lora_format, bundle)  # a family naming no layout stops here, not at the export
    cast_trainable(adapter.params, trainable_dtype(config))  # float32 whatever the base's dtype (precision.py)
    if tc.gradient_checkpointing:
        _enable_gradient_checkpointing(bundle)
    host.prepare_model(bundle, config, "adapted", accelerator.device)
    router = host.route_tokens(bundle, config)
    if router is not None:
        from tuner.routing import check_routing

        check_routing(bundle, router)  # fail now, not inside step 1
    bundle.run.router = router
    bundle.run.input_rewriter = host.rewrite_noisy_input(bundle, config)  # refused here for a family without it

    data = prepare_samples(host, bundle, config, samples, accelerator.device, world)
    kept, held_out = split_eval_samples(data.samples, config)  # held-out samples never train
    data = data.only(kept)  # bucketed again without them
    ec = config.section("evaluation")
    evaluate = EvalLoss(host, bundle, config, held_out, accelerator.device) if ec.eval_steps_interval else None
    steps = total_steps(config, data.epoch_length, world.size)
    say(f"adapter files: {lora_format} key layout" + (" (lora_format = auto)" if tc.lora_format == "auto" else ""))
    say(
        f"global batch: {tc.train_batch_size} per micro-batch x {world.size} process(es) x"
        f" {tc.gradient_accumulation_steps} accumulation = {world.global_batch(tc.train_batch_size)} samples per step"
    )
    notices = [warmup_warning(tc, steps)]
    if tc.lora_type == "standard" and tc.lycoris_config is not None:
        notices.append("lycoris_config is not used: lora_type is 'standard' (set lora_type = 'lycoris' to train it)")
    if tc.optimizer == "prodigy" and tc.learning_rate != 1.0:
        notices.append(f"prodigy adapts its own step size and expects learning_rate = 1.0 (got {tc.learning_rate})")

    extras = _feature_params(bundle, accelerator.device)
    optimizer = build_optimizer(tc.optimizer, adapter.params + extras, tc)
    schedule = build_schedule(optimizer, tc, steps)
    ema = EMA(adapter.params, tc.ema_decay, tc.ema_update_interval) if tc.use_ema else None
    keep_all = tc.experts_on_accelerator == "all"
    with world.guarded("setting up data-parallel training"):  # DDP broadcasts the weights
        forward, optimizer = prepare_training(accelerator, host, bundle, config, adapter, optimizer, keep_all)
    run = RunInfo(
        output_dir,
        steps,
        0,
        bundle.family,
        config,
        base_model=bundle.base_model,
        pipeline_tag=bundle.pipeline_tag,
        flavour=bundle.flavour,
        license=bundle.license,
    )
    trainer = Trainer(
        host,
        config,
        bundle,
        data,
        adapter,
        optimizer,
        schedule,
        accelerator,
        run,
        ema,
        extras=extras,
        forward=forward,
        world=world,
        identity=run_identity(config, bundle, adapter.lycoris_options),
    )
    if resume_from is not None:
        run.start_step = trainer.resume(resume_from)

    # Only the main process writes (checkpoints, adapters, media, logs, trackers, webhooks, uploads);
    # the others wait for it at a barrier where a step needs what it wrote.
    writer, reports = world.main(trainer), world.main(host)
    outputs: dict[str, Path] = {}
    error: BaseException | None = None
    done = run.start_step
    reports.on_run_start(run)
    try:
        with TrainProgress(steps, run.start_step) as bar:
            for message in filter(None, notices):
                notice(message)
            if resume_from is not None:
                bar.note(f"resumed from {resume_from} at step {run.start_step}")
            if run.start_step == 0 and validation_due(config.validation, 0, steps):
                writer.validate(0)  # the baseline: the base model before any update
                world.barrier()
            elif 0 < run.start_step < steps and validation_due(config.validation, run.start_step, steps):
                if not round_complete(config, run.start_step):
                    writer.validate(run.start_step)  # a crash cut this round short after its checkpoint
                    world.barrier()
            for step in range(run.start_step, steps):
                # A signal during the step takes effect after it, in every process alike; DDP syncs
                # gradients inside the step: a lost process is one line (world.guarded).
                with stop.step(), world.guarded(f"training step {step + 1}"):
                    logs = trainer.step(step)
                    done = step + 1
                if evaluate is not None and eval_due(ec, done, steps):
                    eval_loss = world.main(evaluate)()  # held-out samples: the same on every process
                    if eval_loss is not None:
                        logs["eval_loss"] = eval_loss
                bar.update(done, logs)
                reports.on_step_end(run, done, logs)
                stop.after_step()  # a signal during the step: stop here, the step counted, saved below
                if tc.checkpoint_step_interval and done % tc.checkpoint_step_interval == 0:
                    outputs["checkpoint"] = output_dir / f"checkpoint-{done}"
                    writer.save_checkpoint(done)
                if done < steps and validation_due(config.validation, done, steps):
                    writer.validate(done)  # the last step's round comes after the export, below
                    world.barrier()
        stop.check()  # a signal that came in the last step's closing lines
        if trainer.overflow_steps:
            world.main(notice)(
                f"mixed_precision fp16: {trainer.overflow_steps} of {done} updates were skipped because"
                " the scaled gradients overflowed (the loss scale adapts; many skips: use bf16 if the device has it)"
            )
        if outputs.get("checkpoint") != output_dir / f"checkpoint-{done}":
            outputs["checkpoint"] = output_dir / f"checkpoint-{done}"
            writer.save_checkpoint(done)
        final, ema_final = final_adapter_files(tc)
        export = world.main(trainer.export_adapter)
        outputs.update(_adapter_outputs("adapter", export(output_dir / final, step=done) or {}))
        if ema is not None:
            ema_files = export(output_dir / ema_final, ema=True, step=done) or {}
            outputs.update(_adapter_outputs("ema_adapter", ema_files))
        final = writer.validate(done)
        if final is not None and final.media:
            outputs["validation"] = final.media.get("main", next(iter(final.media.values())))
    except KeyboardInterrupt as exc:
        error = exc
        # Between steps the state is consistent: keep the work done so far.
        trainer.optimizer.zero_grad(set_to_none=True)
        whole = not isinstance(exc, Interrupted) or exc.whole
        if whole and done > run.start_step and not (output_dir / f"checkpoint-{done}").exists():
            outputs["checkpoint"] = output_dir / f"checkpoint-{done}"
            writer.save_checkpoint(done)
        if isinstance(exc, Interrupted) and exc.agreed:
            world.barrier()  # every process stopped after this step: the others wait for the main one's save
        raise
    except BaseException as exc:
        error = exc
        raise
    finally:
        data.close()  # the batch prefetch thread: a process that runs again must not collect them
        reports.on_run_end(run, outputs, error)
    return outputs
