"""User-facing errors.

Anything a user can cause (a bad file, a typo in a config key, an unknown user) raises
`RecsysError` with one line that names the file, row or key and says what to do. The CLI turns it
into that line on stderr and exit code 2, with a traceback only under ``--debug``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RecsysError(Exception):
    """An error caused by the user's input; its message is shown as one line."""

    exit_code = 2


def closest(name: str, choices: Iterable[str]) -> str:
    """A ' (did you mean X?)' hint for a misspelt name, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""
