"""The wizard's questions: each with a default and a one-line why, answered by a person, a flag or ``--yes``.

An answer given on the command line (a named flag or ``--answer KEY=VALUE``) wins and
is not asked; with ``--yes`` every other question takes its default; otherwise rich
prompts ask, show the why, and ask again until the answer passes its check.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tuner.errors import ConfigError

__all__ = ["Asker"]


def _convert(text: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(text, bool):
            return text
        lowered = str(text).strip().lower()
        if lowered in ("y", "yes", "true", "1", "on"):
            return True
        if lowered in ("n", "no", "false", "0", "off"):
            return False
        raise ValueError("answer yes or no")
    if kind is int:
        return int(str(text).strip())
    if kind is float:
        return float(str(text).strip())
    return str(text).strip()


class Asker:
    """Asks questions on ``console``; ``answers`` (question key -> text) come from flags, ``assume_yes`` from --yes."""

    def __init__(self, console: Any, answers: Mapping[str, Any] | None = None, assume_yes: bool = False) -> None:
        self.console = console
        self.answers = dict(answers or {})
        self.assume_yes = assume_yes
        self.asked: dict[str, Any] = {}

    def ask(
        self,
        key: str,
        question: str,
        why: str,
        default: Any,
        *,
        kind: type = str,
        choices: Sequence[str] | None = None,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        """The answer to ``question`` (``key`` names it for ``--answer``), converted to ``kind`` and checked.

        :param check: returns a one-line reason an answer is refused, or ``None``.
        """
        if key in self.answers:
            value = self._accept(key, self.answers.pop(key), kind, choices, check, given=True)
            self.console.print(f"[bold]{question}[/bold] {value}  [dim](--answer {key})[/dim]")
        elif self.assume_yes:
            value = self._accept(key, default, kind, choices, check, given=False)
            self.console.print(f"[bold]{question}[/bold] {value}  [dim](default: {why})[/dim]")
        else:
            value = self._prompt(key, question, why, default, kind, choices, check)
        self.asked[key] = value
        return value

    def _accept(
        self, key: str, raw: Any, kind: type, choices: Sequence[str] | None, check: Callable | None, given: bool
    ) -> Any:
        problem = None
        try:
            value = _convert(raw, kind)
        except ValueError as exc:
            problem, value = str(exc) or f"expected a {kind.__name__}", None
        if problem is None and choices is not None and value not in choices:
            problem = f"choose one of {', '.join(choices)}"
        if problem is None and check is not None:
            problem = check(value)
        if problem is not None:
            where = f"--answer {key}={raw}" if given else f"the default of '{key}' ({raw})"
            raise ConfigError(f"{where}: {problem}")
        return value

    def _prompt(
        self,
        key: str,
        question: str,
        why: str,
        default: Any,
        kind: type,
        choices: Sequence[str] | None,
        check: Callable | None,
    ) -> Any:
        from rich.prompt import Prompt

        self.console.print(f"[dim]{why}[/dim]")
        shown = ("yes" if default else "no") if kind is bool else str(default)
        while True:
            text = Prompt.ask(f"[bold]{question}[/bold]", console=self.console, default=shown, choices=choices)
            try:
                return self._accept(key, text, kind, choices, check, given=True)
            except ConfigError as exc:
                self.console.print(f"[red]{str(exc).split(': ', 1)[-1]}[/red]")
