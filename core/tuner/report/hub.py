"""The model card, and pushing adapters to the Hugging Face Hub.

A built-in lifecycle plugin with the ``[hub]`` section. Every successful run
writes ``output_dir/README.md`` (the model card). With ``push_to_hub`` the repo
is created at run start (so a missing login fails before step 1) and the
adapter, the card and the last validation round are uploaded at the end; with
``push_checkpoints_to_hub`` each checkpoint's adapter is uploaded too, in the
background. ``HF_ENDPOINT`` and the usual Hugging Face login are honoured.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tuner.errors import PluginError
from tuner.hookspecs import hookimpl
from tuner.outputs import CARD_NAME
from tuner.report.modelcard import write_model_card
from tuner.report.secrets import Scrubber, run_scrubber

__all__ = ["HubSection", "Hub", "hub_api"]

log = logging.getLogger(__name__)


class HubSection(BaseModel):
    """Publishing the trained adapter on the Hugging Face Hub."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    push_to_hub: bool = Field(
        False, description="Upload the adapter, the model card and the last validation round at the end of the run."
    )
    hub_model_id: str | None = Field(None, description="The Hub repository, as 'user/name' or 'name'; created if missing.")
    push_checkpoints_to_hub: bool = Field(
        False, description="Also upload each checkpoint's adapter (into checkpoint-N/), in the background."
    )

    @model_validator(mode="after")
    def _consistent(self) -> HubSection:
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id (the repository to push to)")
        if self.push_checkpoints_to_hub and not self.push_to_hub:
            raise ValueError("push_checkpoints_to_hub needs push_to_hub = true")
        return self


def hub_api() -> Any:
    """An ``HfApi`` on ``HF_ENDPOINT`` as it is now (the library reads it only once, at import)."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else ""


class Hub:
    """Writes the model card; pushes to the Hub when asked."""

    def __init__(self) -> None:
        self.scrub = Scrubber()
        self.api: Any = None
        self.repo_id: str | None = None
        self.pending: list[tuple[Future[Any], Path]] = []
        self.last_validation: Any = None

    @hookimpl
    def register_config_sections(self, register: Any) -> None:
        register("hub", HubSection)

    @hookimpl
    def on_run_start(self, run: Any) -> None:
        section: HubSection = run.config.section("hub")
        self.api, self.repo_id, self.pending, self.last_validation = None, None, [], None
        if not section.push_to_hub:
            return
        api = hub_api()
        self.scrub = run_scrubber(run.config) + Scrubber(tokens=[getattr(api, "token", None)])
        try:
            url = api.create_repo(section.hub_model_id, repo_type="model", exist_ok=True)
        except Exception as exc:
            raise PluginError(
                f"push_to_hub: cannot create or reach '{section.hub_model_id}' on {api.endpoint}: "
                f"{type(exc).__name__}: {self.scrub(_first_line(exc))} "
                "(log in with 'hf auth login' or set HF_TOKEN; HF_ENDPOINT picks a mirror)"
            ) from None
        self.api, self.repo_id = api, getattr(url, "repo_id", None) or section.hub_model_id

    @hookimpl
    def on_checkpoint_saved(self, run: Any, step: int, path: Path) -> None:
        if self.api is None or not run.config.section("hub").push_checkpoints_to_hub:
            return
        # Upload a copy of the adapter files: rotation may delete the checkpoint while the upload runs.
        staging = Path(tempfile.mkdtemp(prefix="tuner-hub-"))
        from tuner.train.statefile import STATE_TENSORS

        for file in path.glob("*.safetensors"):
            if file.name != STATE_TENSORS:  # the adapters, not the optimizer state
                shutil.copy2(file, staging / file.name)
        future = self.api.upload_folder(
            repo_id=self.repo_id,
            folder_path=staging,
            path_in_repo=path.name,
            commit_message=f"checkpoint at step {step}",
            run_as_future=True,
        )
        self.pending.append((future, staging))

    @hookimpl
    def on_validation_done(self, run: Any, result: Any) -> None:
        self.last_validation = result

    @hookimpl
    def on_run_end(self, run: Any, outputs: dict[str, Path], error: BaseException | None) -> None:
        try:
            for future, staging in self.pending:
                try:
                    future.result()
                except Exception as exc:
                    log.warning("push_checkpoints_to_hub: a checkpoint upload failed (%s)", type(exc).__name__)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
            if error is not None:
                return
            card = write_model_card(run, outputs, self.last_validation, self.repo_id)
            if self.api is not None:
                self._push(run, outputs, card)
        finally:
            self.api, self.pending = None, []

    def _push(self, run: Any, outputs: dict[str, Path], card: Path) -> None:
        root = Path(run.output_dir)
        files = [card, *(p for k, p in outputs.items() if k != "checkpoint" and Path(p).is_file())]
        if self.last_validation is not None:
            files += list(self.last_validation.media.values())
            if self.last_validation.contact_sheet is not None:
                files.append(self.last_validation.contact_sheet)
        patterns = sorted({Path(os.path.relpath(p, root)).as_posix() for p in files})
        try:
            self.api.upload_folder(
                repo_id=self.repo_id,
                folder_path=root,
                allow_patterns=patterns,
                commit_message=f"adapter after {run.max_train_steps} steps",
            )
        except Exception as exc:  # the files are safe on disk; say so instead of failing a finished run
            log.error(
                "push_to_hub: upload to '%s' failed (%s: %s); the adapter and %s are in %s",
                self.repo_id, type(exc).__name__, self.scrub(_first_line(exc)), CARD_NAME, root,
            )
