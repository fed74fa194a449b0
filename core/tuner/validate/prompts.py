"""The prompts of a validation round and the file names they get."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.media import safe_filename
from tuner.validate.settings import read_prompt_library

if TYPE_CHECKING:
    from tuner.validate.settings import ValidationSection

__all__ = ["MAIN_PROMPT_NICKNAME", "CONTACT_SHEET_NAME", "BUILTIN_PROMPTS", "round_prompts", "file_stems"]

MAIN_PROMPT_NICKNAME = "main"
CONTACT_SHEET_NAME = "contact-sheet"

# ``validation_prompt_library``: varied scenes that have nothing to do with the
# training data. When these start to look like the training clips, the adapter
# is overfitting or the model is collapsing.
BUILTIN_PROMPTS: dict[str, str] = {
    "library_city_night": "a wide shot of a rainy city street at night, neon signs reflected in puddles, cars passing",
    "library_ocean": "waves rolling onto a sandy beach at sunset, slow camera pan along the shoreline",
    "library_portrait": "a close-up video portrait of an elderly man smiling, soft window light, shallow depth of field",
    "library_animal": "a golden retriever running through a meadow of tall grass, tracking shot, bright daylight",
    "library_kitchen": "hands chopping fresh vegetables on a wooden board in a sunlit kitchen, close-up",
    "library_forest": "morning fog drifting between tall pine trees in a forest, camera slowly moving forward",
}


def round_prompts(section: ValidationSection) -> dict[str, str]:
    """Nickname -> prompt for one round: the main prompt, the user's library, then the built-in one."""
    prompts: dict[str, str] = {}
    if section.validation_prompt:
        prompts[MAIN_PROMPT_NICKNAME] = section.validation_prompt
    if section.user_prompt_library is not None:
        prompts.update(read_prompt_library(section.user_prompt_library))
    if section.validation_prompt_library:
        for nickname, prompt in BUILTIN_PROMPTS.items():
            prompts.setdefault(nickname, prompt)
    return prompts


def file_stems(keys: list[str]) -> dict[str, str]:
    """A distinct, file-system-safe stem for each key (``"a/b"`` and ``"a b"`` do not overwrite each other)."""
    taken = {CONTACT_SHEET_NAME}
    out: dict[str, str] = {}
    for key in keys:
        base = stem = safe_filename(key)
        n = 2
        while stem.lower() in taken:  # case-insensitive file systems count too
            stem = f"{base}-{n}"
            n += 1
        taken.add(stem.lower())
        out[key] = stem
    return out
