"""A command's output that says it is a terminal, as an interactive shell's is."""

import io


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True
