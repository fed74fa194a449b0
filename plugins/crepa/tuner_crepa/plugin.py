"""The CREPA plugin, as tuner hooks (the ``tuner.plugins`` entry point ``crepa``).

It reaches a model family only through the contract: the block stack
(``block_lists``, the first one), the width of its hidden states
(``hidden_size``), the token grid (``token_grid``) and the latent tokens of a
block's output (``block_tokens``) from the `tuner.types.bundle.ModelBundle`, per-clip
teacher features through `clip_features`, its projector through
``RunSlots.trainables`` and its loss term through `auxiliary_loss`.

An image family (Flux: a token grid of one frame) gets REPA: each image is
aligned to its own teacher features, there being no neighbours. A family that
does not describe its token grid (``token_grid`` unset) is refused at start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner import hookimpl
from tuner.errors import PluginError

from tuner_crepa.settings import CrepaSection

if TYPE_CHECKING:
    import torch

    from tuner.config import RunConfig
    from tuner.types.bundle import ModelBundle
    from tuner.types.training import AuxiliaryLoss, ClipFeatures, LossOutput, RunInfo

    from tuner_crepa.capture import BlockCapture
    from tuner_crepa.teacher import TeacherInfo

__all__ = ["CrepaPlugin", "PROJECTOR_FILE"]

PROJECTOR_FILE = "crepa_projector.safetensors"


def _section(config: RunConfig) -> CrepaSection:
    return config.section("crepa")


def _to_token_frames(teacher: torch.Tensor, frames: int) -> torch.Tensor:
    """Teacher features per latent frame ``(B, F, P, D)`` -> per token frame (a patch may span latent frames).

    A token frame spanning several latent frames gets the direction of their
    mean (the cached features are unit vectors, and so is the result).
    """
    from tuner_crepa.alignment import unit_patches

    latent_frames = teacher.shape[1]
    if latent_frames == frames:
        return teacher
    if latent_frames % frames:
        raise PluginError(
            f"crepa: {latent_frames} latent frames of teacher features do not fold into the model's {frames} token frames"
        )
    return unit_patches(teacher.unflatten(1, (frames, latent_frames // frames)).float().mean(2))


class CrepaPlugin:
    """One instance per plugin host: it holds the run's capture hooks and projectors."""

    def __init__(self) -> None:
        self.capture: BlockCapture | None = None
        self.projectors: list[torch.nn.Module] = []
        self.info: TeacherInfo | None = None
        self.total_steps = 0
        # neighbour_weights per (frames, patches, device): constants of the clip shape, built once
        self.weights: dict[tuple[int, int, str], torch.Tensor] = {}

    @hookimpl
    def register_config_sections(self, register: Any) -> None:
        register("crepa", CrepaSection)

    @hookimpl
    def prepare_model(self, bundle: ModelBundle, config: RunConfig, phase: str) -> None:
        from tuner_crepa.alignment import make_projector
        from tuner_crepa.capture import BlockCapture, block_stack, resolve_block
        from tuner_crepa.teacher import teacher_info

        section = _section(config)
        if phase != "adapted" or not section.crepa_enabled:
            return
        if bundle.token_grid is None or bundle.hidden_size <= 0:
            raise PluginError(
                f"crepa_enabled: model family '{bundle.family}' does not describe its frames of tokens"
                " (ModelBundle.token_grid, hidden_size), so CREPA cannot align them frame by frame:"
                " set crepa_enabled = false"
            )
        self.info = teacher_info(section)
        experts = bundle.trained_experts()
        modules = [expert.module for expert in experts]
        block = resolve_block(section.crepa_block_index, len(block_stack(bundle, modules[0])))
        bundle.run.block_taps["crepa_block_index"] = block  # token routing over this block is refused at start-up
        seed = config.train.seed
        self.projectors = [make_projector(bundle.hidden_size, self.info.hidden_size, seed + i) for i in range(len(experts))]
        for expert, projector in zip(experts, self.projectors):
            name = "crepa_projector" if len(experts) == 1 else f"crepa_projector_{expert.label or expert.name}"
            bundle.run.trainables[name] = projector
        self.capture = BlockCapture(modules, block, bundle.block_lists[0], bundle.latent_tokens)
        self.capture.install()

    @hookimpl
    def clip_features(self, bundle: ModelBundle, config: RunConfig) -> ClipFeatures | None:
        from tuner_crepa.teacher import DinoFeatures, teacher_info

        section = _section(config)
        if not section.crepa_enabled:
            return None
        return DinoFeatures(section, self.info or teacher_info(section), bundle)

    @hookimpl
    def on_run_start(self, run: RunInfo) -> None:
        self.total_steps = run.max_train_steps  # the weight schedule's length

    @hookimpl
    def auxiliary_loss(
        self, bundle: ModelBundle, batch: dict[str, torch.Tensor], output: LossOutput, step: int, config: RunConfig
    ) -> AuxiliaryLoss | None:
        import torch

        from tuner.types.training import AuxiliaryLoss

        from tuner_crepa.alignment import crepa_weight

        section = _section(config)
        if not section.crepa_enabled or self.capture is None:
            return None
        weight = crepa_weight(section, step, self.total_steps or config.train.max_train_steps)
        # A term weighted 0 only logs: no graph for it.
        with torch.enable_grad() if weight else torch.no_grad():
            score, same = self._scores(bundle, batch, output, section)
        loss = 1.0 - score
        crepa_loss, alignment = torch.stack([loss.detach(), same]).tolist()  # one device sync for both
        logs = {"crepa_loss": crepa_loss, "crepa_alignment": alignment, "crepa_weight": weight}
        return AuxiliaryLoss("crepa", loss, weight, logs)

    def _scores(
        self, bundle: ModelBundle, batch: dict[str, torch.Tensor], output: LossOutput, section: CrepaSection
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's mean cross-frame score (differentiable) and mean same-frame alignment."""
        import torch

        from tuner_crepa.alignment import cross_frame_alignment, neighbour_weights, project, to_teacher_grid
        from tuner_crepa.teacher import FEATURES_KEY

        assert self.capture is not None and bundle.token_grid is not None
        teacher = batch.get(FEATURES_KEY)
        if teacher is None:
            raise PluginError(f"crepa: the batch has no '{FEATURES_KEY}' (the cache was built without CREPA's features)")
        frames, height, width = bundle.token_grid(batch)
        patches = (teacher.shape[2], teacher.shape[3])
        teacher = _to_token_frames(teacher.flatten(2, 3), frames)
        key = (frames, patches[0] * patches[1], str(teacher.device))
        if key not in self.weights:
            weights = neighbour_weights(frames, key[1], section.crepa_adjacent_distance, section.crepa_adjacent_tau)
            self.weights[key] = weights.to(teacher.device)
        weights = self.weights[key]
        experts = bundle.trained_experts()
        scores, same = [], []
        for i, (expert, module) in enumerate(zip(experts, self.capture.modules)):
            hidden = self.capture.take(module)
            if hidden is None:
                continue
            if len(experts) == 1:
                rows = None
            elif output.sigmas is None:
                raise PluginError(
                    f"crepa with several trained experts needs the noise level of each sample: model family"
                    f" '{bundle.family}' does not report LossOutput.sigmas"
                )
            else:
                rows = expert.owns(output.sigmas).nonzero().squeeze(1).to(teacher.device)
            target = teacher if rows is None else teacher.index_select(0, rows)
            if hidden.shape[0] != target.shape[0] or hidden.shape[1] != frames * height * width:
                raise PluginError(
                    f"crepa: block {self.capture.block} gave hidden states {tuple(hidden.shape)}, expected"
                    f" ({target.shape[0]}, {frames * height * width}, ...) for a token grid {frames}x{height}x{width}"
                )
            student = to_teacher_grid(project(self.projectors[i], hidden), (frames, height, width), patches)
            score, aligned = cross_frame_alignment(student, target, weights)
            scores.append(score)
            same.append(aligned)
        if not scores:
            raise PluginError(
                f"crepa: block {self.capture.block} produced no hidden states in the training forward"
                " (the family's forward did not run it)"
            )
        if len(scores) == 1:
            return scores[0].mean(), same[0].mean()
        return torch.cat(scores).mean(), torch.cat(same).mean()

    @hookimpl
    def on_run_end(self, run: RunInfo, outputs: dict[str, Path], error: BaseException | None) -> None:
        from safetensors.torch import save_file

        section = _section(run.config)
        if section.crepa_enabled and section.crepa_export_projector and error is None and self.projectors:
            tensors = {
                f"{i}.{key}": value.detach().float().cpu().contiguous()
                for i, projector in enumerate(self.projectors)
                for key, value in projector.state_dict().items()
            }
            from tuner.durable import replacing
            from tuner.outputs import claim

            claim(Path(run.output_dir) / PROJECTOR_FILE)
            with replacing(Path(run.output_dir) / PROJECTOR_FILE) as tmp:  # a full disk leaves no half file
                save_file(tensors, str(tmp))
        if self.capture is not None:
            self.capture.remove()
            self.capture = None
