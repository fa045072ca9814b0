"""How messagio's commands show progress without garbling a cron mail or a job's log."""

from __future__ import annotations

from typing import Any


class Progress:
    """One line rewritten in place on a terminal. Elsewhere (cron, a container's log), where
    a carriage return would pile every step on one line, a line per step at ``--verbosity
    2`` and nothing at the default: the command's last line says what it did."""

    def __init__(self, command: Any, verbosity: int) -> None:
        self.out = command.stdout
        self.terminal = self.out.isatty()
        self.verbosity = verbosity
        self.shown = False

    def show(self, text: str) -> None:
        if self.terminal:
            self.out.write(f"\r{text}", ending="")
            self.out.flush()
            self.shown = True
        elif self.verbosity >= 2:
            self.out.write(text)

    def end(self) -> None:
        """End the line the terminal shows, before the command's own last lines."""
        if self.shown:
            self.out.write("")
            self.shown = False
