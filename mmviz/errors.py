"""The error every reader of user files raises for a file that is wrong as a whole."""
from __future__ import annotations

import os


class DataFormatError(ValueError):
    """A file is wrong as a whole (not a zip, not JSON, arrays of unequal length, ...)."""

    def __init__(self, path: str | os.PathLike, problem: str, expected: str | None = None):
        self.path = str(path)
        self.problem = problem
        msg = f"{self.path}: {problem}"
        if expected:
            msg += f". Expected {expected}"
        super().__init__(msg)
