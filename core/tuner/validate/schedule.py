"""When validation rounds and evaluation losses happen: pure functions of the step.

The training loop asks after every optimizer step; nothing here has state, so a
resumed run validates at exactly the steps an uninterrupted one would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuner.validate.settings import EvaluationSection, ValidationSection

__all__ = ["validation_due", "eval_due"]


def validation_due(section: ValidationSection, step: int, max_train_steps: int) -> bool:
    """Whether a validation round belongs to ``step``.

    :param step: optimizer steps done; 0 is the baseline before training.
    :return: True at step 0 with ``validation_on_startup``, at every multiple of
        ``validation_step_interval`` and at the last step; never when validation
        is switched off.
    """
    if section.validation_disable:
        return False
    if step <= 0:
        return section.baseline
    if step >= max_train_steps:
        return True
    interval = section.validation_step_interval
    return interval > 0 and step % interval == 0


def eval_due(section: EvaluationSection, step: int, max_train_steps: int) -> bool:
    """Whether the evaluation loss is computed after ``step`` (every interval and at the last step)."""
    interval = section.eval_steps_interval
    if interval <= 0 or step <= 0:
        return False
    return step % interval == 0 or step >= max_train_steps
