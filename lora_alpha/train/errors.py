"""User-facing errors of the training application: each says what is wrong and how to fix it."""
from __future__ import annotations


class UsageError(ValueError):
    """Bad input to the training application (the CLI prints it as one line and exits with 2)."""
