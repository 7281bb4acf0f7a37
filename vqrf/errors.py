"""The one error type users see: a single line naming the file and the problem."""

from __future__ import annotations

from pathlib import Path


class VqrfError(Exception):
    """Bad input or a refused action. The CLI prints it as one line and exits non-zero.

    Args:
        path: the file or directory at fault (None when no file is involved).
        problem: what is wrong, in plain words.
    """

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
