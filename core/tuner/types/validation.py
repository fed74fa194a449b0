"""One validation round: what the core asks of a family's `validate` and what it gets back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SkipLayerGuidance", "ValidationRequest", "ValidationResult"]


@dataclass
class ValidationRequest:
    """One clip of a validation round: one prompt at one size, with one set of weights.

    The core asks for every prompt, size and weight variant (trained / EMA) of
    a round in turn, each in a request of its own.

    :ivar step: the optimizer step the round belongs to (0 = before training).
    :ivar key: names the clip: the prompt's nickname, with a ``-WxH`` suffix
        when the round renders several sizes. Return the clip under this key
        (`ValidationResult.frames`, ``media``, ``preview_frames``).
    :ivar prompt: the prompt to render.
    :ivar negative_prompt: shared negative prompt ('' for none).
    :ivar num_frames: frames per clip (1 for images).
    :ivar width: output width in pixels.
    :ivar height: output height in pixels.
    :ivar num_inference_steps: sampler steps.
    :ivar guidance_scale: classifier-free guidance scale.
    :ivar seed: noise seed; the same seed every round makes rounds comparable.
    :ivar output_dir: the folder the media go into (already created).
    :ivar fps: frame rate of written videos.
    :ivar skip_layer_guidance: skip-layer guidance to apply, or ``None``.
    :ivar conditioning_frames: for an image-conditioned model
        (`ModelBundle.image_conditioned`): the frames to start from,
        ``(n, height, width, 3)`` uint8 at the request's size (resized to cover
        it, centre-cropped): the first frame and, when the source has one, the
        last (a video's last frame, or a library entry's ``last_image``). A
        family that conditions on the first frame only uses ``[0]``. ``None``
        for a model that is not image-conditioned.
    :ivar preview_steps: sampler steps (counted from 1) at which to return a
        cheap preview of the clip in `ValidationResult.preview_frames`: the
        denoised estimate at that step, decoded at low cost. Empty: no previews
        (always empty for a bundle whose ``renders_previews`` is false).
    :ivar on_sampler_step: a family calls it once after each sampler step
        (no argument) so that the round's progress moves while a
        clip renders; ``None``: nobody listens. A family that never calls it
        still works: the progress then moves a whole clip at a time.
    :ivar on_preview: set by the core when previews are asked for: call it
        ``on_preview(key, step, frames)`` as soon as the preview of sampler step
        ``step`` is rendered, with the same frames later returned in
        ``preview_frames``; the core writes the file then and reports it
        (`on_validation_preview`), so a webhook sees it while the sampler runs.
        A family that never calls it still works: its previews are written and
        reported when its ``validate`` returns.
    """

    step: int
    key: str
    prompt: str
    negative_prompt: str
    num_frames: int
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    output_dir: Path
    fps: int = 16
    skip_layer_guidance: SkipLayerGuidance | None = None
    conditioning_frames: Any | None = None
    preview_steps: tuple[int, ...] = ()
    on_sampler_step: Callable[[], None] | None = None
    on_preview: Callable[[str, int, Any], None] | None = None


@dataclass(frozen=True)
class SkipLayerGuidance:
    """Skip-layer guidance for one validation round.

    On the sampler steps inside ``[start, stop)`` (fractions of the steps), run
    one more conditional pass with the blocks ``layers`` skipped and add
    ``scale * (full - skipped)`` to the guided prediction.

    :ivar layers: indices of the blocks to skip (0-based).
    :ivar start: fraction of the steps after which it starts.
    :ivar stop: fraction of the steps after which it stops.
    :ivar scale: strength of the correction.
    """

    layers: tuple[int, ...]
    start: float
    stop: float
    scale: float

    def active(self, index: int, num_steps: int) -> bool:
        """Whether sampler step ``index`` (0-based) of ``num_steps`` gets the extra pass."""
        return self.start * num_steps <= index < self.stop * num_steps


@dataclass
class ValidationResult:
    """What `validate` returns for its request, and what the core reports of a whole round.

    :ivar step: the step of the request.
    :ivar frames: from the family: the request's ``key`` -> the rendered frames,
        ``(frames, height, width, 3)``, float in ``[0, 1]`` or uint8. The core
        writes them (mp4 for clips, PNG for single frames) and adds the contact
        sheet: return frames rather than writing files yourself.
    :ivar media: from a family that writes its file itself: the request's
        ``key`` -> that file (the core renames it). In the result the core
        passes to `on_validation_done`: every file of the round, by media key
        (the clip's key; the EMA weights' clip adds ``-ema`` where a round
        renders both weight variants).
    :ivar contact_sheet: the round's contact sheet PNG (set by the core).
    :ivar preview_frames: from the family, when the request has
        ``preview_steps``: the request's ``key`` -> {sampler step -> preview
        frames}, one entry per requested step, frames as in ``frames`` (a few
        frames, or one, at any size: they are previews). The core writes them
        and puts them on the contact sheet.
    :ivar previews: in the result the core passes to `on_validation_done`: the
        preview files written, media key -> {sampler step -> file}.
    """

    step: int
    media: dict[str, Path] = field(default_factory=dict)
    frames: dict[str, Any] = field(default_factory=dict)
    contact_sheet: Path | None = None
    preview_frames: dict[str, dict[int, Any]] = field(default_factory=dict)
    previews: dict[str, dict[int, Path]] = field(default_factory=dict)
