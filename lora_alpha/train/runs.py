"""Run directories: safe names, exclusive creation, overwrite by swap, and the ``run.json`` record.

Guarantees (README, "What happens when things go wrong"):
- a run name is one path component, so a run directory always lies inside ``--output``;
- nothing of an existing run is touched before every input has been checked, and an overwrite
  that fails (or is stopped) before its first complete checkpoint leaves the old run as it was;
- a run that is still training is never overwritten (:func:`check_not_running`);
- ``run.json`` is written atomically and records the process (pid, host), so a run whose process
  died without a word reads ``stale``.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_alpha.train.errors import UsageError
from lora_alpha.files import atomic_write_json

RECORD_NAME = "run.json"
STATUSES = ("running", "finished", "interrupted", "failed")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def check_run_name(name: str) -> str:
    """A run name is one path component: letters, digits, ``-``, ``_``, ``.``, starting with a letter, a digit or
    ``_`` (a leading ``.`` hides the folder and looks like this tool's own ``.NAME.old-*`` backups; a leading ``-``
    reads as a flag in every command that names the folder)."""
    if (not isinstance(name, str) or not _NAME.fullmatch(name) or name[0] in ".-" or len(name) > 200):
        raise UsageError(f"--name {name!r} is not a run name: use ASCII letters, digits, '-', '_' and '.', starting with "
                         "a letter, a digit or '_' (one folder name, at most 200 characters)")
    return name


def default_run_name() -> str:
    """``run-YYYYmmdd-HHMMSS-xxxxxx``: unique even for two runs started in the same second."""
    return time.strftime("run-%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def check_output_dir(output: str | os.PathLike, flag: str = "--output") -> Path:
    """Prove that ``output`` is, or can become, a writable folder; create nothing.

    Called before any model loads, so that a bad ``--output`` costs the user nothing.
    """
    if not str(output):
        raise UsageError(f"{flag} is empty; pass a folder (e.g. {flag} runs)")
    out = Path(output)
    if out.is_symlink() and not out.exists():  # mkdir would fail on it after the work is done
        raise UsageError(f"{flag} {str(out)!r} is a symbolic link to {os.readlink(out)!r}, which does not exist; "
                         "pass an existing folder, or remove the link")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == out else f"lies under {str(existing)!r}, which is a file"
        raise UsageError(f"{flag} {str(out)!r} {what}; pass a folder")
    try:
        probe = existing / f".write-test-{secrets.token_hex(4)}"
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as err:
        where = "" if existing == out else f" (nor its nearest existing folder {str(existing)!r})"
        raise UsageError(f"{flag} {str(out)!r} cannot be written{where}: creating a file there failed "
                         f"({err.strerror or err}); pass a folder you can write to") from None
    run = enclosing_run(existing)
    if run is not None:
        raise UsageError(f"{flag} {str(out)!r} lies inside the run folder {str(run)!r}: pass a folder outside it "
                         "(what lies in a run's folder is that run's)")
    return out


def enclosing_run(folder: Path) -> Path | None:
    """The run folder (one with a ``run.json`` of this tool) that ``folder`` is or lies in, if any."""
    for candidate in (folder.resolve(), *folder.resolve().parents):
        try:
            read_record(candidate)
        except UsageError:
            continue
        return candidate
    return None


@dataclass
class RunDir:
    """A run directory being created: ``path`` is where the run lives once :meth:`commit` ran.

    A new run is created exclusively at ``path``. An overwrite builds the new run in a fresh
    hidden folder beside the old one; :meth:`swap_in` moves the old run aside and the new one in
    (two renames), :meth:`commit` deletes the old run (after the new run's first complete checkpoint,
    or when it finishes), and
    :meth:`abort` restores the old run.
    """

    path: Path
    staged: Path | None = None  # the new run while it is being built beside the old one
    old: Path | None = None  # the old run, moved aside until commit
    created: bool = False  # this process made ``path`` (abort may remove it); False for a resumed run
    replaced: bool = False  # an old run was swapped out (and is deleted at commit)

    @classmethod
    def create(cls, output: Path, name: str, overwrite: bool) -> RunDir:
        output.mkdir(parents=True, exist_ok=True)
        path = output / name
        if overwrite and path.exists():
            staged = Path(_mkdtemp(output, f".{name}.new-"))
            mask = os.umask(0)
            os.umask(mask)
            staged.chmod(0o777 & ~mask)  # mkdtemp makes it private; a run folder is readable like any other
            return cls(path, staged=staged, created=True)
        try:
            path.mkdir()
        except FileExistsError:
            raise UsageError(f"run directory {path} exists; pass another --name, --overwrite, or --resume") from None
        return cls(path, created=True)

    @property
    def build_path(self) -> Path:
        """Where files go before :meth:`swap_in`."""
        return self.staged if self.staged is not None else self.path

    def swap_in(self) -> None:
        if self.staged is None:
            return
        self.old = Path(_mkdtemp(self.path.parent, f".{self.path.name}.old-"))
        os.replace(self.path, self.old / "run")  # the old run, kept whole until commit
        os.replace(self.staged, self.path)
        self.staged, self.replaced = None, True

    def commit(self) -> None:
        if self.old is not None:
            shutil.rmtree(self.old, ignore_errors=True)
            self.old = None

    def abort(self) -> None:
        """Undo: the new run's files go, the old run (if any) is back where it was."""
        if self.staged is not None:
            shutil.rmtree(self.staged, ignore_errors=True)
            self.staged = None
        elif self.old is not None:
            trash = Path(_mkdtemp(self.path.parent, f".{self.path.name}.failed-"))
            os.replace(self.path, trash / "run")
            os.replace(self.old / "run", self.path)
            shutil.rmtree(trash, ignore_errors=True)
            shutil.rmtree(self.old, ignore_errors=True)
            self.old = None
        elif self.created:
            shutil.rmtree(self.path, ignore_errors=True)


def settle_overwrite(path: Path) -> str | None:
    """Finish what a killed ``--overwrite`` of ``path`` left (SIGKILL, power loss: no code ran to undo it).

    The old run waits in ``.NAME.old-*/run`` until the new run's first complete checkpoint. If the process that
    swapped it aside is gone: a new run with a checkpoint (or finished) keeps ``path`` and the old run goes, as the
    commit would have done; a new run without one is discarded and the old run is put back, as the abort would have
    done. A swap still in progress (its process alive, or on another host) is left alone. Returns one line saying
    what was done, or None when there was nothing to settle.
    """
    path = Path(path)
    _drop_dead_staging(path)
    backups = [b for b in path.parent.glob(f".{glob.escape(path.name)}.old-*") if (b / "run").is_dir()]
    if not backups:
        return None
    if len(backups) > 1:  # not one swap's leftovers: a person should look
        return (f"{len(backups)} runs that killed --overwrite runs of {path} kept aside lie beside it "
                f"({', '.join(sorted(b.name for b in backups))}); nothing was touched: look into them and move or "
                "remove them by hand")
    if path.exists() and not (path / RECORD_NAME).is_file():
        return None  # not what a swap leaves: the user's folder; touch nothing
    record = None
    if path.exists():
        try:
            record = read_record(path)
        except UsageError:
            return None
        if live_status(record) == "running":
            return None  # the overwrite is still going on (or on another host): its process decides
    backup = backups[0]
    if record is not None and (record.get("status") == "finished" or (path / "checkpoints" / "last.ckpt").is_file()):
        shutil.rmtree(backup, ignore_errors=True)
        return (f"an --overwrite of {path} was killed after its new run had a checkpoint; the run it replaced "
                f"(kept aside in {backup.name}) was removed, as the overwrite would have done")
    if record is not None:
        trash = Path(_mkdtemp(path.parent, f".{path.name}.failed-"))
        os.replace(path, trash / "run")
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(backup / "run", path)
    shutil.rmtree(backup, ignore_errors=True)
    return (f"an --overwrite of {path} was killed before its new run's first checkpoint; the new run was discarded "
            f"and the run it was replacing is back in {path} (it had been kept aside in {backup.name})")


def _drop_dead_staging(path: Path) -> None:
    """A new run built beside ``path`` (``.NAME.new-*``) whose process is gone never reached the swap: it goes."""
    for staged in path.parent.glob(f".{glob.escape(path.name)}.new-*"):
        try:
            record = read_record(staged)
        except UsageError:
            continue  # no record yet: cannot tell whose it is
        if live_status(record) != "running":
            shutil.rmtree(staged, ignore_errors=True)


def _mkdtemp(parent: Path, prefix: str) -> str:
    import tempfile

    return tempfile.mkdtemp(dir=parent, prefix=prefix)


# ----------------------------------------------------------------------------- run.json
def new_record(name: str, config: dict[str, Any], lora: str) -> dict[str, Any]:
    # run_id: the run's checkpoints carry it, so a resume cannot continue from another run's checkpoint
    return {"status": "running", "name": name, "run_id": secrets.token_hex(8), "config": config, "lora": lora,
            **process_info()}


def process_info() -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "pid_start": _start_ticks(pid), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_record(run_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_json(run_dir / RECORD_NAME, record)


def read_record(run_dir: Path) -> dict[str, Any]:
    """``run.json`` as a dict; a missing, unreadable or corrupt file is one UsageError naming it."""
    path = Path(run_dir) / RECORD_NAME
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist; is {run_dir} a run directory?") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read {path}: {err}") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is corrupt (not JSON: {err}); "
                         "the run's logs and adapter are still there") from None
    if not isinstance(record, dict) or record.get("status") not in STATUSES:
        raise UsageError(f"{path} is corrupt: expected a JSON object with a status in {list(STATUSES)}")
    return record


def check_not_running(run_dir: Path) -> None:
    """Refuse to replace a run whose ``run.json`` says ``running`` while its process is alive (or on another
    host, where this one cannot tell); a dead process (``stale``) or an unreadable record does not block."""
    path = Path(run_dir) / RECORD_NAME
    if not path.is_file():
        return
    try:
        record = read_record(run_dir)
    except UsageError:
        return
    if live_status(record) != "running":
        return
    pid, host = record.get("pid"), record.get("host")
    where = "" if host == socket.gethostname() else f" on host {host}, which this machine cannot check"
    raise UsageError(f"run {run_dir} is still training (pid {pid}{where}); --overwrite would mix two runs in one "
                     "folder: stop that process first, or pass another --name")


# What a run writes in its folder (folder -> its entries); anything else is the user's, and --overwrite keeps off.
RUN_LAYOUT: dict[str, frozenset[str]] = {
    ".": frozenset({RECORD_NAME, "hparams.yaml", "checkpoints", "adapter", "report.png", "find_alpha"}),
    "adapter": frozenset({"adapter_config.json", "adapter_model.safetensors", "signaldrift_adapter.json"}),
    "checkpoints": frozenset({"last.ckpt"}),
    "find_alpha": frozenset(),
}
_RUN_FILE = re.compile(r"events\.out\.tfevents\..+|\..+\.[0-9a-f]{8}\.tmp.*")  # event files; a cut atomic write
_RUN_FOLDERS = frozenset(k for k in RUN_LAYOUT if k != ".")


def foreign_entries(run_dir: Path) -> list[str]:
    """Paths in ``run_dir`` (relative to it) that no run writes: the user's files, a run nested in it, a folder of
    the user's inside ``checkpoints/`` or ``adapter/``."""
    out = []
    for folder, allowed in RUN_LAYOUT.items():
        where = run_dir / folder
        if folder != "." and (where.is_symlink() or not where.is_dir()):
            if where.is_symlink() or where.exists():
                out.append(folder)  # a file or link where the run keeps a folder: not the run's
            continue
        for entry in where.iterdir():
            name = entry.name
            if _RUN_FILE.fullmatch(name) and entry.is_file():
                continue
            if name in allowed and (folder != "." or name not in _RUN_FOLDERS) and entry.is_file() \
                    and not entry.is_symlink():
                continue
            if folder == "." and name in _RUN_FOLDERS:
                continue  # looked into on its own
            out.append(name if folder == "." else f"{folder}/{name}")
    return sorted(out)


def linked_entries(run_dir: Path) -> list[str]:
    """Symbolic links among the run folder's entries and in its ``adapter/``, ``checkpoints/`` and ``find_alpha/``
    (relative to it): a run writing there would write through them, outside the run folder."""
    out = []
    for folder in RUN_LAYOUT:
        where = run_dir / folder
        if where.is_symlink():
            out.append(folder)
        elif where.is_dir():
            out += [e.name if folder == "." else f"{folder}/{e.name}" for e in where.iterdir()
                    if e.is_symlink() and not (folder == "." and e.name in _RUN_FOLDERS)]
    return sorted(set(out))


def check_unlinked(run_dir: Path) -> None:
    """``--resume`` writes into the run folder: refused when a link there would carry the writes elsewhere."""
    links = linked_entries(Path(run_dir))
    if links:
        shown = ", ".join(f"{x} -> {os.readlink(Path(run_dir) / x)}" for x in links[:3]) + (", ..." if len(links) > 3 else "")
        raise UsageError(f"--resume: {run_dir} holds symbolic link(s) ({shown}); the resumed run would write through "
                         "them, outside the run folder, so it was refused (nothing was touched): put the run's own "
                         "folders and files back in place of the links")


def check_replaceable(run_dir: Path, inputs: dict[str, str | None]) -> None:
    """``--overwrite`` replaces a run and nothing else: a folder without ``run.json`` (or a file) is the user's, a
    run folder holding anything a run does not write is refused whole, and a file the new run reads (``inputs``:
    flag -> path) must not lie inside the folder it replaces."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is a file, not a run folder; --overwrite replaces only a run folder: "
                         "pass another --name")
    if not (run_dir / RECORD_NAME).is_file() and any(run_dir.iterdir()):
        raise UsageError(f"{run_dir} holds no {RECORD_NAME}: it is not a run folder, so --overwrite will not "
                         "replace it (nothing was touched); pass another --name, or move the folder away")
    inside = run_dir.resolve()
    for flag, value in inputs.items():
        if value is None or not Path(value).exists():
            continue
        where = Path(value).resolve()
        if where == inside or inside in where.parents:
            raise UsageError(f"{flag} {value!r} lies inside {run_dir}, the run folder --overwrite would replace "
                             "(it would be deleted with it); move it out first, or pass another --name")
    foreign = foreign_entries(run_dir)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise UsageError(f"{run_dir} holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} that no run "
                         f"writes ({shown}); --overwrite would delete them with the run, so it was refused (nothing "
                         "was touched): move them out, or pass another --name")


DATA_FLAGS = ("data", "val_data", "test_data")


def data_digests(config: dict[str, Any]) -> dict[str, str]:
    """sha256 of each data file the run reads (the embedded default is not a path), so a resume can check them."""
    out = {}
    for key in DATA_FLAGS:
        value = config.get(key)
        if isinstance(value, str) and Path(value).is_file():
            digest = hashlib.sha256()
            with open(value, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            out[key] = digest.hexdigest()
    return out


def check_same_data(record: dict[str, Any], config: dict[str, Any]) -> None:
    """A resume reads the files the run started with: one that changed (or went) is refused by its flag."""
    recorded = record.get("data_sha256")
    if not isinstance(recorded, dict):
        return  # a record from before the digests
    now = data_digests(config)
    for key, digest in recorded.items():
        if key in DATA_FLAGS and now.get(key) != digest:
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"{flag} {config.get(key)!r} is not the file the run started with (its sha256 changed, "
                             "or it is gone); --resume would continue on other data: restore the file, or start "
                             "a new run")


def live_status(record: dict[str, Any]) -> str:
    """The recorded status, except that ``running`` whose process is gone on this host reads ``stale``."""
    status = record.get("status")
    if status != "running":
        return str(status)
    pid, host = record.get("pid"), record.get("host")
    if host != socket.gethostname() or not isinstance(pid, int):
        return "running"  # another machine's process (or an older record): cannot tell from here
    if not _alive(pid):
        return "stale"
    recorded, now = record.get("pid_start"), _start_ticks(pid)
    return "stale" if recorded is not None and now is not None and recorded != now else "running"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start_ticks(pid: int) -> int | None:
    """The process's start time (Linux), so that a reused pid is not taken for the run's process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None
