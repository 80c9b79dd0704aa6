"""Writing files so that a crash never leaves half a file where a good one was."""
from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any


def create_temp(directory: Path, name: str) -> Path:
    """An empty file beside ``name``, created exclusively with the umask's usual mode (not 0600).

    The name keeps the suffix, for writers that pick the format from it (matplotlib's savefig).
    """
    stem, suffix = os.path.splitext(name)
    for _ in range(100):
        tmp = directory / f".{stem}.{secrets.token_hex(4)}.tmp{suffix}"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {directory}")  # pragma: no cover


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``.

    A reader sees the old file or the whole new one, never a part; the temporary file is removed
    if ``write`` fails.
    """
    path = Path(path)
    tmp = create_temp(path.parent, path.name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Strict JSON: NaN and infinities (which JSON lacks; Python would write bare ``NaN``/``Infinity``) as null."""
    return atomic_write_text(path, json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")


def _finite(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def atomic_write_many(directory: str | os.PathLike, files: dict[str, Callable[[Path], Any]]) -> Path:
    """Write every file of ``files`` (name -> writer) to a temporary file first, then rename each.

    All writers run before the first rename, so a failing writer leaves every old file as it was.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp: dict[str, Path] = {}
    try:
        for name in files:
            tmp[name] = create_temp(directory, name)
        for name, write in files.items():
            write(tmp[name])
        for name, path in tmp.items():
            os.replace(path, directory / name)
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)
    return directory
