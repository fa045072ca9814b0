"""Hostile pickles: what whoever can write to a queue or a table might put there."""


class WritesFile:
    """Unpickling this writes a file at ``path``: proof that code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))
