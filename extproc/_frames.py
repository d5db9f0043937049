"""The user's own frames of an exception their code raised: what a one-line error shows under
it (``ExtkitError.where``), without the frames of this package and of Python's import
machinery that lead there."""

from __future__ import annotations

import importlib
import os
import traceback

_OURS = (os.path.dirname(os.path.abspath(__file__)) + os.sep,
         os.path.dirname(os.path.abspath(importlib.__file__)) + os.sep)


def _theirs(filename: str) -> bool:
    return not (filename.startswith("<frozen importlib.")
                or os.path.abspath(filename).startswith(_OURS))


def user_frames(exc: BaseException) -> str:
    """``exc``'s traceback lines from the user's frames (Python's format, the exception's own
    line left out: the message carries it); a SyntaxError's location and caret too."""
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__)
              if _theirs(frame.filename)]
    lines = traceback.format_list(frames)
    if isinstance(exc, SyntaxError):
        lines += traceback.format_exception_only(type(exc), exc)[:-1]
    return "".join(lines).rstrip("\n")


def describe(exc: BaseException) -> str:
    """``Type: message``, as the last line of a traceback reads."""
    return traceback.format_exception_only(type(exc), exc)[-1].strip()
