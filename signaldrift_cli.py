"""The ``signaldrift`` command's entry point: it notes a stop signal from the first moment.

Importing the training application (torch, Lightning, transformers) takes seconds; a SIGTERM or
Ctrl-C in that time used to end the process without a word. This module imports nothing heavy:
it installs handlers that only note the signal, then imports and runs
:func:`lora_alpha.train.cli.main`, which says that the command was stopped before it started
(and wrote nothing). Only the standard library is imported here, on purpose.
"""
from __future__ import annotations

import signal
import sys

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_pending: list[int] = []
_installed: dict[int, object] = {}


def _note(signum: int, frame) -> None:
    _pending.append(signum)


def install() -> bool:
    """Note SIGINT and SIGTERM instead of dying (a signal that is ignored stays ignored); True if this call
    installed the handlers (and forgot any signal noted before)."""
    if _installed:
        return False
    _pending.clear()
    for sig in SIGNALS:
        try:
            current = signal.getsignal(sig)
            if current in (signal.SIG_DFL, signal.default_int_handler):
                _installed[sig] = current
                signal.signal(sig, _note)
        except ValueError:  # not the main thread
            pass
    return bool(_installed)


def uninstall() -> None:
    """The handlers as they were before :func:`install` (where they are still ours)."""
    for sig, previous in list(_installed.items()):
        try:
            if signal.getsignal(sig) is _note:
                signal.signal(sig, previous)
        except ValueError:  # pragma: no cover - not the main thread
            pass
        del _installed[sig]


def pending() -> int | None:
    """The first signal noted since :func:`install`, or None."""
    return _pending[0] if _pending else None


def main(argv: list[str] | None = None) -> int:
    """``signaldrift``: the handlers first, then the command (which reports a signal noted meanwhile)."""
    install()
    from lora_alpha.train.cli import main as run

    return run(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
