"""The ``signaldrift`` command: ``train`` a LoRA model with the diagnostics attached, ``report`` on a run."""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_alpha.train.errors import UsageError
from lora_alpha.files import atomic_write, atomic_write_json
from lora_alpha.train.runs import (
    RECORD_NAME,
    RunDir,
    check_not_running,
    check_unlinked,
    check_output_dir,
    check_replaceable,
    check_run_name,
    check_same_data,
    data_digests,
    default_run_name,
    live_status,
    settle_overwrite,
    new_record,
    process_info,
    read_record,
    write_record,
)
from lora_alpha.scaling import RULES, LoRAConfigError
from signaldrift.errors import check_int, check_number

try:  # the light entry point that notes a stop signal while this module and its imports load
    import signaldrift_cli as _early
except ImportError:  # pragma: no cover - a copy of the package without its entry module
    _early = None

# The embedded default: LoRA-α (alpha = c*sqrt(r), a small lr, the fresh head at its own lr), chosen
# by benchmarks/results/demo_config_150steps.md and demo_config_250steps.md.
DEMO = dict(rank=8, alpha=None, rule="lora-alpha", lr=1e-4, head_lr=3e-3, max_steps=250, batch_size=32, max_length=64)


def _fail(message: str) -> int:
    print(f"signaldrift: error: {message}", file=sys.stderr)
    return 2


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each flag's help (unless it names its default); descriptions kept as written."""

    def _get_help_string(self, action):
        help = action.help or ""
        if "default" in help or isinstance(action, (argparse._StoreTrueAction, argparse._VersionAction)):
            return help
        return super()._get_help_string(action)


EXAMPLES = """examples:
  signaldrift train --name demo --output runs            # the embedded demo: MiniLM on Rotten Tomatoes
  signaldrift train --name a1k --alpha 1000 --output runs # another alpha; compare both in one TensorBoard
  tensorboard --logdir runs                              # every run under runs/, side by side
  signaldrift report runs/demo                           # the diagnosis as text, and runs/demo/report.png
  signaldrift find-alpha --target-steps 250              # short trials over alpha; suggests one

Every number is defined in docs/metrics.md of the signaldrift repository; the README explains the
TensorBoard dashboard."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("signaldrift")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree that is not installed
        return "unknown"


def _add_model_args(p: argparse.ArgumentParser, *, test_data: bool = True) -> None:
    """The model, data and LoRA flags that `train` and `find-alpha` share (find-alpha reads no test split)."""
    p.add_argument("--model", default=None, help="Hugging Face model folder (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--task", default="sequence-classification", choices=["sequence-classification", "causal-lm"],
                   help="what the model learns: labels of texts, or the next token")
    p.add_argument("--data", default="rotten-tomatoes",
                   help="'rotten-tomatoes' (embedded) or a CSV/JSONL training file")
    p.add_argument("--val-data", default=None, help="CSV/JSONL validation file (default: 10%% of --data)")
    if test_data:
        p.add_argument("--test-data", default=None, help="CSV/JSONL test file (default: the validation split)")
    p.add_argument("--text-column", default="text", help="column of the text in --data files")
    p.add_argument("--label-column", default="label", help="column of the label in --data files")
    p.add_argument("--targets", default="query,key,value,dense", help="comma-separated LoRA target patterns")
    p.add_argument("--rank", type=int, default=DEMO["rank"], help="LoRA rank r")
    p.add_argument("--rule", default=DEMO["rule"], choices=list(RULES),
                   help="scaling rule: scale = alpha/r (standard, lora-alpha) or alpha/sqrt(r) (rslora)")
    p.add_argument("--lr", type=float, default=DEMO["lr"], help="learning rate of the LoRA factors")
    p.add_argument("--head-lr", type=float, default=DEMO["head_lr"], help="learning rate of the classifier head")
    p.add_argument("--batch-size", type=int, default=DEMO["batch_size"], help="examples per optimizer step")
    p.add_argument("--max-length", type=int, default=DEMO["max_length"], help="tokens per example (longer ones are cut)")
    p.add_argument("--train-size", type=int, default=None, help="use only this many training examples (default: all)")
    p.add_argument("--eval-size", type=int, default=None, help="cap the validation and test splits (default: no cap)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data order and initialization")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="signaldrift", description="LoRA fine-tuning that tells you whether alpha is right.",
                                allow_abbrev=False, formatter_class=_HelpFormatter, epilog=EXAMPLES)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{train,find-alpha,report}")
    t = sub.add_parser("train", allow_abbrev=False, formatter_class=_HelpFormatter, epilog=EXAMPLES,
                       help="fine-tune with LoRA, the SignalDriftMonitor and the AlphaRegimeAdvisor attached",
                       description="Fine-tune with LoRA while measuring every step; the verdict on alpha,\n"
                                   "the adapter and a TensorBoard log go to OUTPUT/NAME/.")
    _add_model_args(t)
    t.add_argument("--alpha", type=_alpha_arg, default=DEMO["alpha"],
                   help="LoRA alpha (from 1e-300 to 1e300), or 'auto': run the alpha finder's short trials at this --lr for a run of "
                        "--max-steps and train with its suggestion (default: the rule's own; lora-alpha: c*sqrt(r) "
                        "with c = 270; standard: 2r; rslora: 16)")
    t.add_argument("--loraplus-ratio", type=float, default=None, help="LoRA+: B's learning rate = lr * ratio (default: off)")
    t.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    t.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warmup steps")
    t.add_argument("--schedule", default="constant", choices=["constant", "linear", "cosine"],
                   help="learning-rate decay after warmup")
    t.add_argument("--max-steps", type=int, default=DEMO["max_steps"], help="optimizer steps (-1: use --epochs)")
    t.add_argument("--epochs", type=int, default=1, help="passes over the data, with --max-steps -1")
    t.add_argument("--val-every", type=int, default=50,
                   help="validate every this many steps during training, on --val-batches batches (0: only at the "
                        "end, on the whole validation split)")
    t.add_argument("--val-batches", type=int, default=8,
                   help="validation batches per check during training (the final check reads the whole split)")
    t.add_argument("--precision", default="auto", help="any Lightning precision (auto: bf16-mixed on CUDA, else 32-true)")
    t.add_argument("--devices", default="auto", help="Lightning devices (e.g. 1, 2, auto)")
    t.add_argument("--accelerator", default="auto", help="Lightning accelerator (cpu, gpu, auto)")
    t.add_argument("--strategy", default="auto", help="any Lightning strategy name, e.g. ddp")
    t.add_argument("--every-n-steps", type=int, default=1, help="measure the LoRA layers every this many steps")
    t.add_argument("--full-grad-every", "--probe-every", dest="full_grad_every", type=int, default=50,
                   help="capture the full-weight gradient every this many steps, for spectral_suppression "
                        "(--probe-every is the deprecated old name)")
    t.add_argument("--gap-every", type=int, default=50,
                   help="probe the loss along the step (step_gap, the evidence of the verdict) every this many steps")
    t.add_argument("--alpha-control", action="store_true",
                   help="let the run correct its alpha: at probes (--gap-every) in the first quarter of the run, a "
                        "significant k* moves alpha to k* x alpha (at most 8x a move, 3 moves, 512x in all; "
                        "docs/metrics.md, alpha control)")
    t.add_argument("--output", default="runs", help="runs are written to OUTPUT/NAME/")
    t.add_argument("--name", default=None,
                   help="run name: ASCII letters, digits, '-', '_', '.' (default: run-<date>-<time>-<random>)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run directory of that name")
    t.add_argument("--checkpoint-every", type=int, default=50,
                   help="save OUTPUT/NAME/checkpoints/last.ckpt every this many steps (0: never)")
    t.add_argument("--resume", action="store_true",
                   help="continue the interrupted run OUTPUT/NAME from its last checkpoint, with its recorded "
                        "configuration (other flags may be omitted; given ones must agree)")
    f = sub.add_parser("find-alpha", allow_abbrev=False, formatter_class=_HelpFormatter, epilog=EXAMPLES,
                       help="short trials over a log grid of alpha at one lr; suggest alpha, plot loss vs alpha",
                       description="Short trials over a log grid of alpha at one learning rate, each scored by\n"
                                   "the held-out loss; suggests an alpha for a run of --target-steps.")
    _add_model_args(f, test_data=False)
    f.add_argument("--alphas", default=None, help="comma-separated grid (default: 4, 16, ..., 16384)")
    f.add_argument("--steps", type=int, default=16, help="optimizer steps per trial")
    f.add_argument("--eval-batches", type=int, default=4, help="held-out batches that score each trial")
    f.add_argument("--target-steps", type=int, default=None,
                   help="the length of the run you plan; the trials' best alpha is scaled by steps/target-steps "
                        "(default: --steps, no scaling)")
    f.add_argument("--output", default="runs/find-alpha",
                   help="folder for find_alpha.json, find_alpha.png and a TensorBoard event file of the plot")
    f.add_argument("--overwrite", action="store_true",
                   help="replace an earlier find-alpha's results in --output (its JSON, PNG and event file)")
    r = sub.add_parser("report", allow_abbrev=False, formatter_class=_HelpFormatter, epilog=EXAMPLES,
                       help="print a run's per-layer diagnosis and verdict; write report.png",
                       description="Read a run's TensorBoard events (a `signaldrift train` run, or any run logged\n"
                                   "by the callbacks under Lightning or Hugging Face), print the verdict and a\n"
                                   "per-layer table, and write RUN_DIR/report.png.")
    r.add_argument("run_dir", metavar="RUN_DIR",
                   help="the run's folder, e.g. runs/demo (OUTPUT/NAME of `signaldrift train`)")
    r.add_argument("--window", type=int, default=10,
                   help="each value in the table is the median of this many most recent measurements")
    return p


def _datamodule(args, model_path: str):
    from lora_alpha.train.data import CausalLMDataModule, RottenTomatoesDataModule, TextClassificationDataModule

    if args.data == "rotten-tomatoes":
        if args.task != "sequence-classification":
            raise UsageError("the embedded Rotten Tomatoes data is for --task sequence-classification")
        return RottenTomatoesDataModule(model_path, batch_size=args.batch_size, max_length=args.max_length,
                                        train_size=args.train_size, val_size=args.eval_size, test_size=args.eval_size,
                                        seed=args.seed)
    sizes = dict(batch_size=args.batch_size, max_length=args.max_length, seed=args.seed, val_file=args.val_data,
                 test_file=getattr(args, "test_data", None), train_size=args.train_size, eval_size=args.eval_size)
    if args.task == "causal-lm":
        return CausalLMDataModule(model_path, args.data, **sizes)
    return TextClassificationDataModule(model_path, args.data, text_column=args.text_column,
                                        label_column=args.label_column, **sizes)


# Model types whose positions start after the padding index (RoBERTa's family): fewer usable positions.
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer", "mpnet", "xmod", "roberta-prelayernorm")


def _check_model(args, model_path: str) -> None:
    """The model folder holds a configuration, and --max-length fits the model's positions: refused here,
    before the data is tokenized and before anything on disk changes (a text longer than the positions
    would fail mid-training)."""
    from lora_alpha.train.module import check_model_path

    check_model_path(model_path)
    path, shown = Path(model_path), args.model or model_path
    if path.is_file():
        raise UsageError(f"--model {shown!r} is a file; pass a Hugging Face model folder (config.json, the weights "
                         "and the tokenizer files)")
    if path.is_dir() and not (path / "config.json").is_file():
        raise UsageError(f"--model {shown!r} is not a model folder: it holds no config.json (a Hugging Face model "
                         "folder holds config.json, the weights and the tokenizer files)")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_path)
    except Exception as err:  # noqa: BLE001 - a damaged config.json raises many types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"cannot read the configuration (config.json) of model {shown!r}: {first[:200]}") from None
    limit = _max_positions(config)
    if limit is not None and args.max_length > limit:
        raise UsageError(f"--max-length {args.max_length} is more than model {shown!r} can read: it has {limit} "
                         f"positions (max_position_embeddings in its config.json); pass --max-length {limit} or less")


def _max_positions(config) -> int | None:
    for attr in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            if getattr(config, "model_type", None) in _OFFSET_POSITIONS:
                pad = getattr(config, "pad_token_id", None)
                value -= (pad if isinstance(pad, int) else 1) + 1
            return value
    return None


def _check_positive(args, names: tuple[str, ...], minimum: float = 0, inclusive: bool = False) -> None:
    for name in names:
        v, flag = getattr(args, name), "--" + name.replace("_", "-")
        if isinstance(v, int):
            check_int(flag, v, minimum=int(minimum) + (0 if inclusive else 1), error=UsageError)
        else:
            check_number(flag, v, minimum=minimum, inclusive=inclusive, error=UsageError)


# Flags that apply only to some data sources or tasks: given where they do not apply, they are refused.
_NOT_FOR_EMBEDDED = ("val_data", "test_data", "text_column", "label_column")
_NOT_FOR_CAUSAL_LM = ("text_column", "label_column", "head_lr")


def _refuse_inapplicable(args, given: set[str]) -> None:
    def refuse(names, why):
        for name in names:
            if name in given:
                raise UsageError(f"--{name.replace('_', '-')} does not apply {why}")

    if args.data == "rotten-tomatoes":
        refuse(_NOT_FOR_EMBEDDED, "to the embedded Rotten Tomatoes data (pass --data FILE to use your own)")
    if args.task == "causal-lm":
        refuse(_NOT_FOR_CAUSAL_LM, "to --task causal-lm (records hold 'text', or 'prompt' and 'completion'; no head)")
    if getattr(args, "max_steps", -1) != -1:
        refuse(("epochs",), "unless --max-steps -1 (training stops at --max-steps)")


SEED_MAX = 2**32 - 1  # numpy's seeds, which seed_everything sets with torch's and Python's
ALPHA_RANGE = (1e-300, 1e300)  # the diagnostics compute alpha * 8 and alpha / r: the floats' range, with headroom


def _same_bytes(a: Path, b: Path) -> bool:
    """A copy of the training file (V03 of the fourth review): same size, then the same bytes."""
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def emit(text: str) -> None:
    """Print to standard output. A reader that left (a closed pipe) or an unwritable one (a full disk) does not
    undo the work whose files are written: one line on stderr at most (T01-T03 of the fifth review: tracebacks
    after a finished run)."""
    if sys.stdout is None:  # started with standard output closed
        return
    try:
        print(text, flush=True)
    except BrokenPipeError:
        _stdout_to_devnull()
    except OSError as err:
        _stdout_to_devnull()
        print(f"signaldrift: warning: cannot write to standard output ({err.strerror or err}); the results are in "
              "the files written", file=sys.stderr)


def _stdout_to_devnull() -> None:
    """Later writes (and the interpreter's flush at exit) go nowhere instead of failing again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _check_common(args) -> None:
    """The flags `train` and `find-alpha` share, each named as written on the command line."""
    if isinstance(args.seed, bool) or not isinstance(args.seed, int) or not 0 <= args.seed <= SEED_MAX:
        raise UsageError(f"--seed must be an int from 0 to {SEED_MAX}, got {args.seed!r}")
    check_int("--max-length", args.max_length, minimum=2, error=UsageError)  # a token and the one it predicts
    _check_data_files(args)


def _check_data_files(args) -> None:
    """--data, --val-data, --test-data: a missing file is the data module's to name; a folder or a device is not
    a missing file."""
    for name in ("data", "val_data", "test_data"):
        value = getattr(args, name, None)
        if value is None or (name == "data" and value == "rotten-tomatoes"):
            continue
        path, flag = Path(value), "--" + name.replace("_", "-")
        if path.is_dir():
            raise UsageError(f"{flag} {value!r} is a folder; pass a CSV or JSONL file"
                             + (" (or 'rotten-tomatoes', the embedded data)" if name == "data" else ""))
        if path.exists() and not path.is_file():
            raise UsageError(f"{flag} {value!r} is not a regular file (a device, pipe or socket); pass a CSV or "
                             "JSONL file")
    train = getattr(args, "data", None)
    for name in ("val_data", "test_data"):
        value = getattr(args, name, None)
        if value is not None and train not in (None, "rotten-tomatoes") and Path(value).is_file() \
                and Path(train).is_file() and (Path(value).samefile(train) or _same_bytes(Path(value), Path(train))):
            flag = "--" + name.replace("_", "-")
            what = "is the training file" if Path(value).samefile(train) else "holds the same bytes as the training file"
            raise UsageError(f"{flag} {value!r} {what} --data {train!r}: its numbers would be "
                             f"training numbers, not held-out ones; pass a separate file, or omit {flag} (a split "
                             "of --data is held out)")


def _check_args(args, given: set[str] = frozenset()) -> None:
    _check_positive(args, ("rank", "batch_size", "max_length", "every_n_steps", "full_grad_every", "gap_every", "epochs"))
    _check_common(args)
    if args.max_steps == 0 or args.max_steps < -1:
        raise UsageError(f"--max-steps must be > 0 (or -1 to train --epochs), got {args.max_steps}")
    _check_positive(args, ("lr", "head_lr", "weight_decay", "checkpoint_every", "warmup_steps", "val_every"), inclusive=True)
    _check_positive(args, ("val_batches",))
    if args.max_steps > 0 and args.warmup_steps >= args.max_steps:
        raise UsageError(f"--warmup-steps {args.warmup_steps} is not below --max-steps {args.max_steps}: the learning "
                         "rate would never reach --lr; pass fewer warmup steps")
    if args.alpha == "auto" and args.max_steps == -1:
        raise UsageError("--alpha auto needs --max-steps (the finder scales its trials to the planned run's length)")
    if args.alpha == "auto" and str(getattr(args, "devices", "auto")) not in ("1", "auto"):
        raise UsageError(f"--alpha auto runs the finder on one device, got --devices {args.devices}; run "
                         "`signaldrift find-alpha` first and pass its suggestion with --alpha")
    if args.alpha not in (None, "auto") and (not math.isfinite(args.alpha) or args.alpha <= 0):
        raise UsageError(f"--alpha must be a finite number > 0 (omit it for the rule's default), got {args.alpha}")
    if args.alpha not in (None, "auto") and not ALPHA_RANGE[0] <= args.alpha <= ALPHA_RANGE[1]:
        raise UsageError(f"--alpha {args.alpha:g} is outside the range a run can use, {ALPHA_RANGE[0]:g} to "
                         f"{ALPHA_RANGE[1]:g} (the diagnostics compute alpha * 8 and alpha / r); omit it for the "
                         "rule's default")
    _check_positive(args, tuple(n for n in ("loraplus_ratio", "train_size", "eval_size") if getattr(args, n) is not None))
    if args.alpha_control:
        _check_alpha_control(args)
    _refuse_inapplicable(args, given)


def _check_alpha_control(args) -> None:
    """--alpha-control needs a probe in the first ``until`` of the run, and room for alpha to grow."""
    from signaldrift.control import DEFAULT_CONTROL

    last = math.floor(DEFAULT_CONTROL.until * args.max_steps)
    if args.max_steps > 0 and args.gap_every > last:
        fix = (f"pass --gap-every {last} or less" if last >= 1 else
               f"train at least {math.ceil(1 / DEFAULT_CONTROL.until)} steps, with --gap-every at most a quarter of them")
        where = f"steps 1 to {last}" if last >= 1 else "no whole step"
        raise UsageError(f"--alpha-control moves alpha only at probes in the first {DEFAULT_CONTROL.until:.0%} of the run "
                         f"({where} of --max-steps {args.max_steps}); --gap-every {args.gap_every} puts no probe "
                         f"there: {fix}")
    if isinstance(args.alpha, float) and args.alpha * DEFAULT_CONTROL.max_total > ALPHA_RANGE[1]:
        raise UsageError(f"--alpha-control may raise alpha {DEFAULT_CONTROL.max_total:g}-fold; --alpha {args.alpha:g} "
                         f"would leave the range a run can use (up to {ALPHA_RANGE[1]:g})")


def _module(args, model_path: str, dm, **extra):
    from lora_alpha.train.module import LoRAAlphaModule

    return LoRAAlphaModule(
        model_path, task=args.task, targets=[t.strip() for t in args.targets.split(",") if t.strip()],
        rank=args.rank, alpha=_numeric_alpha(getattr(args, "alpha", None)), rule=args.rule, lr=args.lr, head_lr=args.head_lr,
        num_labels=getattr(dm, "num_labels", 2), **extra)


def _numeric_alpha(alpha):
    """The module's alpha before the finder ran: ``auto`` starts from the rule's own."""
    return None if alpha == "auto" else alpha


def _alpha_arg(text: str) -> float | str:
    """``--alpha``: a number, or ``auto`` (the alpha finder decides before training)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0 or 'auto', got {text!r}") from None


def _parse_alphas(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--alphas must be comma-separated numbers, got {text!r}") from None


def find_alpha_cmd(args, given: set[str] = frozenset()) -> int:
    """`signaldrift find-alpha`: the finder on the embedded default (or --model/--data); JSON + PNG."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _check_positive(args, ("rank", "batch_size", "max_length", "steps", "eval_batches", "lr", "head_lr"))
    _check_common(args)
    _check_positive(args, tuple(n for n in ("train_size", "eval_size") if getattr(args, n) is not None))
    _refuse_inapplicable(args, given)
    if args.target_steps is not None:
        _check_positive(args, ("target_steps",))
    alphas = _parse_alphas(args.alphas)
    out = check_output_dir(args.output)  # before any trial runs
    old_events = _check_finder_output(out, args.overwrite)
    from lightning.pytorch import seed_everything

    from lora_alpha.train.data import demo_model_path
    from lora_alpha.train.finder import AlphaFinderWarning, find_alpha

    warnings.simplefilter("ignore", AlphaFinderWarning)  # the printed table says the same, in place
    # SIGTERM (a scheduler, `docker stop`) stops the trials as Ctrl-C does: the finished ones are kept.
    with StopSignals() as stop:
        try:
            stop.check()
            with stop.interruptible():
                seed_everything(args.seed, verbose=False)
                model_path = args.model or demo_model_path()
                _check_model(args, model_path)
                dm = _datamodule(args, model_path)
                module = _module(args, model_path, dm)
                stop.check()
                res = find_alpha(module, dm, alphas=alphas, steps=args.steps, lr=args.lr, head_lr=args.head_lr,
                                 eval_batches=args.eval_batches, progress_bar=not args.no_progress,
                                 target_steps=args.target_steps)
        except (StopRequested, KeyboardInterrupt):
            signum = stop.signum or signal.SIGINT
            print(f"signaldrift: {signal.Signals(signum).name} before the alpha finder's trials started; nothing "
                  "was written", file=sys.stderr)
            return 128 + int(signum)
        stop.after_fit = True  # a second signal while the results are written ends the command at once
        return _finder_outputs(args, res, out, stop, old_events)


FINDER_FILES = ("find_alpha.json", "find_alpha.png")


def _check_finder_output(out: Path, overwrite: bool) -> list[Path]:
    """find-alpha writes into a folder that holds no earlier results, or (``--overwrite``) one whose results are
    an earlier find-alpha's; returns that run's event file(s), replaced with it. Checked before any trial."""
    there = [out / n for n in FINDER_FILES if (out / n).exists() or (out / n).is_symlink()]
    if not there:
        events = sorted(out.glob("events.out.tfevents.*")) if out.is_dir() else []
        if events:  # F01 of the fourth review: an earlier finder's events alone; TensorBoard showed both runs' points
            raise UsageError(f"--output {str(out)!r} already holds TensorBoard event file(s) ({events[0].name}"
                             f"{', ...' if len(events) > 1 else ''}) but no {FINDER_FILES[0]}; TensorBoard would show "
                             "them with the new results: pass another --output, or move them out")
        return []
    if not overwrite:
        raise UsageError(f"--output {str(out)!r} already holds {', '.join(p.name for p in there)}; pass another "
                         "--output, or --overwrite to replace that earlier find-alpha's results")
    record = out / FINDER_FILES[0]
    try:
        old = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        old = None
    if not (isinstance(old, dict) and isinstance(old.get("alphas"), list) and isinstance(old.get("config"), dict)):
        raise UsageError(f"{record} is not an earlier find-alpha's result (it is missing, or not its JSON); "
                         "--overwrite replaces only find-alpha's own files: pass another --output")
    if any(p.is_symlink() or not p.is_file() for p in there):
        raise UsageError(f"--output {str(out)!r}: {', '.join(p.name for p in there if not p.is_file() or p.is_symlink())} "
                         "is not a plain file; --overwrite replaces only find-alpha's own files: pass another --output")
    events = old.get("events")
    names = events if isinstance(events, list) else []
    return [out / n for n in names if isinstance(n, str) and Path(n).name == n and (out / n).is_file()]


def _finder_outputs(args, res, out: Path, stop: StopSignals, old_events: list[Path] = ()) -> int:
    """find-alpha's JSON, PNG, TensorBoard events and printed table (what finished, when it was stopped). An
    interrupted --overwrite replaces nothing: the earlier complete results stay (Q60 of the sixth review)."""
    replacing = (out / "find_alpha.json").is_file()  # --overwrite of an earlier find-alpha's results (checked)
    if replacing and res.interrupted:
        what = signal.Signals(stop.signum or signal.SIGINT).name
        with stop.held():
            emit("\n".join(_finder_lines(args, res) + [
                f"interrupted ({what}): the earlier find-alpha's results in {out} were kept (an interrupted "
                "--overwrite replaces nothing); the trials that finished are above"]))
        return 128 + int(stop.signum or signal.SIGINT)
    try:
        _write_finder_files(args, res, out, old_events, stop)
    except KeyboardInterrupt:
        signum = stop.signum  # a second signal while the files were made: none of them was put in place
        what = signal.Signals(signum or signal.SIGINT).name
        print(f"signaldrift: {what} while the alpha finder's results were being written: stopped at once; nothing "
              f"in {out} was written or replaced", file=sys.stderr)
        return 128 + int(signum or signal.SIGINT)
    signum = stop.signum
    lines = _finder_lines(args, res)
    if res.interrupted:
        what = signal.Signals(signum or signal.SIGINT).name
        lines.append(f"interrupted ({what}): the suggestion uses the trials that finished")
    lines.append(f"wrote {out / 'find_alpha.json'}, {out / 'find_alpha.png'} and TensorBoard events in {out}"
                 + (", replacing the earlier find-alpha's results" if replacing else "")
                 + f" (tensorboard --logdir {out.parent})")
    with stop.held():  # the files are in place: a signal now is noted, and the table is printed whole
        emit("\n".join(lines))
    signum = stop.signum
    return 128 + int(signum or signal.SIGINT) if res.interrupted or signum else 0


def _finder_lines(args, res) -> list[str]:
    """The trials' table and the suggestion."""
    lines = [f"alpha finder: {res.steps} steps per trial at lr {res.lr:g} ({res.rule} rule, rank {args.rank})",
             f"{'alpha':>10}  {'held-out loss':>13}  {'drift ratio':>11}"]
    for a, l, d in zip(res.alphas, res.losses, res.drift_ratio):
        lines.append(f"{a:>10g}  {l:>13.4f}  {'n/a' if d is None else f'{d:.4f}':>11}")
    if res.suggestion is None:
        lines.append("suggested alpha: none (every finished trial diverged; lower --lr)")
    else:
        if res.target_steps != res.steps:
            lines.append(f"best alpha for {res.steps}-step trials: {res.trial_best:.4g}; scaled to a "
                         f"{res.target_steps}-step run by {res.steps}/{res.target_steps}")
        edge = res.at_edge and not res.interrupted  # an edge of the finished trials is not the grid's
        lines.append(f"suggested alpha: {res.suggestion:.4g}" + ("  (at the edge of the grid: widen --alphas)" if edge else ""))
    return lines


def _write_finder_files(args, res, out: Path, old_events: list[Path], stop: StopSignals) -> None:
    """Event file, PNG and JSON are made in a hidden folder inside ``out`` (a second signal there stops at once
    and leaves ``out`` as it was), then renamed into place with signals held back."""
    from lora_alpha.train.dashboard import write_finder_events

    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".find-alpha-"))
    try:
        write_finder_events(staging, res, res.plot())
        events = sorted(p.name for p in staging.glob("events.out.tfevents.*"))
        atomic_write(staging / "find_alpha.png", res.plot)
        config = {k: v for k, v in vars(args).items() if k != "command"}
        atomic_write_json(staging / "find_alpha.json", {**res.as_dict(), "config": config, "events": events})
        with stop.held():
            for name in (*events, "find_alpha.png", "find_alpha.json"):
                os.replace(staging / name, out / name)
            for path in old_events:  # the earlier finder's plot and losses, which TensorBoard would show beside these
                path.unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _trainer_kwargs(args) -> dict:
    import torch

    precision = args.precision
    if precision == "auto":
        precision = "bf16-mixed" if torch.cuda.is_available() else "32-true"
    devices: int | str = int(args.devices) if str(args.devices).isdigit() else args.devices
    return dict(max_steps=args.max_steps, max_epochs=args.epochs if args.max_steps == -1 else -1,
                precision=precision, devices=devices, accelerator=args.accelerator, strategy=args.strategy,
                enable_checkpointing=args.checkpoint_every > 0, num_sanity_val_steps=0,
                enable_progress_bar=not args.no_progress, log_every_n_steps=10, enable_model_summary=False,
                **_validation_kwargs(args))


def _validation_kwargs(args) -> dict:
    """Validation during training: every --val-every steps on the first --val-batches batches."""
    every = getattr(args, "val_every", 0) or 0
    if every <= 0:
        return dict(limit_val_batches=0)
    return dict(val_check_interval=every, check_val_every_n_epoch=None,
                limit_val_batches=getattr(args, "val_batches", None) or 1.0)


# Flags that may differ on --resume: they change how a run is shown, not what it computes.
SESSION_FLAGS = ("no_progress", "resume", "overwrite", "name", "output", "command")


# Flags that name files or folders: recorded as absolute paths, so a run resumes from any folder.
PATH_FLAGS = ("model", "data", "val_data", "test_data")


def _absolute(key: str, value):
    if key in PATH_FLAGS and isinstance(value, str) and value != "rotten-tomatoes" and Path(value).exists():
        return str(Path(value).resolve())
    return value


def _config(args) -> dict:
    return {k: _absolute(k, v) for k, v in vars(args).items() if k not in SESSION_FLAGS}


def _resume_args(args, given: set[str], record: dict) -> argparse.Namespace:
    """The interrupted run's recorded configuration; a flag given now must agree with it."""
    recorded = record.get("config")
    if not isinstance(recorded, dict):
        raise UsageError(f"{Path(args.output) / args.name / RECORD_NAME} has no recorded configuration to resume")
    recorded = {"alpha_control": False, **recorded}  # a run recorded before --alpha-control existed
    merged = vars(args).copy()
    actions = _train_actions()
    path = Path(args.output) / args.name / RECORD_NAME
    wanted = {k for k in merged if k not in SESSION_FLAGS}
    missing, unknown = sorted(wanted - set(recorded)), sorted(set(recorded) - wanted - set(SESSION_FLAGS))
    if missing or unknown:  # a default filled in for a missing flag would continue another run than the one started
        what = "; ".join(x for x in (missing and f"no {', '.join('--' + k.replace('_', '-') for k in missing[:5])}",
                                      unknown and f"unknown setting(s) {unknown[:5]}") if x)
        raise UsageError(f"{path} is damaged: its recorded configuration has {what} (was it edited by hand?); "
                         "restore it, or start the run again with --overwrite")
    for key, value in recorded.items():
        if key not in merged or key in SESSION_FLAGS:
            continue
        if key in actions:
            _check_recorded(path, actions[key], value)
        if key in given and _absolute(key, merged[key]) != value:
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"{flag} {merged[key]!r} contradicts the run's recorded {flag} {value!r}; "
                             f"--resume continues the run as it was configured (drop {flag}, or start a new run)")
        merged[key] = value
    return argparse.Namespace(**merged)


def _train_actions() -> dict[str, argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    return {a.dest: a for a in sub.choices["train"]._actions if a.option_strings}  # noqa: SLF001


def _check_recorded(path: Path, action: argparse.Action, value) -> None:
    """A recorded flag has the type its flag gives (a hand-edited or damaged run.json is one line, not a crash)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if value is None and action.default is None:
        return
    if isinstance(action, argparse._StoreTrueAction):  # noqa: SLF001
        ok, what = isinstance(value, bool), "true or false"
    elif action.type is int:
        ok, what = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif action.type is float:
        ok, what = number, "a number"
    elif action.type is _alpha_arg:
        ok, what = number or value == "auto", "a number or \"auto\""
    else:
        ok, what = isinstance(value, str), "text"
    if ok and action.choices is not None and value not in action.choices:
        ok, what = False, f"one of {list(action.choices)}"
    if not ok:
        raise UsageError(f"{path} is damaged: its recorded {action.option_strings[0]} is {value!r}, not {what} "
                         "(was it edited by hand?); restore it, or start the run again with --overwrite")


def _check_resume_state(run_dir: Path, record: dict) -> Path:
    check_unlinked(run_dir)  # L01 of the fourth review: an adapter/ linked to the user's folder was overwritten
    status = live_status(record)
    if status == "finished":
        raise UsageError(f"run {run_dir} finished; there is nothing to resume")
    if status == "running":
        raise UsageError(f"run {run_dir} is still running (pid {record.get('pid')} on {record.get('host')}); "
                         "stop it first")
    last = run_dir / "checkpoints" / "last.ckpt"
    if (run_dir / "checkpoints").exists() and not (run_dir / "checkpoints").is_dir():  # R08 of the fifth review
        raise UsageError(f"--resume: {run_dir / 'checkpoints'} is a file where the run keeps its checkpoints folder; "
                         "the run stays as it was: put the folder back")
    if last.exists() and not last.is_file():
        raise UsageError(f"--resume: {last} is not a file (a folder or a device where the checkpoint belongs); "
                         "the run stays as it was: put the checkpoint back, or start it again with --overwrite")
    if not last.is_file():
        raise UsageError(f"--resume: {last} does not exist (the run stopped before its first checkpoint; "
                         "see --checkpoint-every); start it again with --overwrite")
    return last


RUN_ID_KEY = "signaldrift_run_id"
CONFIG_KEY = "signaldrift_config_sha256"  # the configuration the checkpoint was trained with (run.json's "config")


def config_digest(config: Any) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def _check_checkpoint(path: Path, module, run_id: str | None = None, config: Any = None) -> None:
    """The checkpoint loads, is this run's (``run_id``, where run.json records one) and holds its LoRA layers
    with the same shapes (one line otherwise)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated or foreign files raise many types
        raise UsageError(f"checkpoint {path} cannot be read: it is damaged or not a checkpoint of "
                         "this tool (cut short, or another program's file); the run stays as it was (start it again "
                         "with --overwrite)") from None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise UsageError(f"checkpoint {path} is damaged or not a checkpoint of this tool (it holds no model state); "
                         "the run stays as it was (start it again with --overwrite)")
    want = {k for k in module.state_dict() if "lora_" in k}
    have = {k for k, v in state.items() if "lora_" in k and hasattr(v, "shape")}
    if want != have:
        extra, missing = sorted(have - want), sorted(want - have)
        raise UsageError(f"checkpoint {path} does not match this run's LoRA layers: "
                         f"{len(missing)} missing (e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]})")
    for k, v in module.state_dict().items():  # every parameter: the head's size follows the data's classes
        theirs = state.get(k)
        if hasattr(theirs, "shape") and tuple(theirs.shape) != tuple(v.shape):
            why = "another --rank or model?" if "lora_" in k else "other classes in the data, or another model?"
            raise UsageError(f"checkpoint {path} does not match this run: {k} has shape {tuple(theirs.shape)} in "
                             f"the checkpoint, {tuple(v.shape)} in the run ({why}); the run stays as it was")
    if isinstance(run_id, str) and ckpt.get(RUN_ID_KEY) != run_id:
        theirs = ckpt.get(RUN_ID_KEY)
        whose = f"run {theirs!r}" if isinstance(theirs, str) else "a run that recorded no id"
        raise UsageError(f"checkpoint {path} is not this run's: it was written by {whose}, and {RECORD_NAME} says "
                         f"this run is {run_id!r} (was it copied from another run?); the run stays as it was")
    if config is not None and CONFIG_KEY in ckpt and ckpt[CONFIG_KEY] != config_digest(config):
        # H02/H09/H13/H14 of the fourth review: a hand-edited lr, data, seed or size resumed as if nothing changed
        raise UsageError(f"{path.parent.parent / RECORD_NAME}'s configuration is not the one the checkpoint {path} was "
                         "trained with (was it edited by hand?); the run stays as it was: restore it, or start the run "
                         "again with --overwrite")


def train(args, given: set[str] = frozenset()) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with StopSignals() as stop:
        try:
            return _checked_train(args, given, stop)
        except (StopRequested, KeyboardInterrupt):
            signum = stop.signum or signal.SIGINT
            print(f"signaldrift: {signal.Signals(signum).name} before training started; nothing was written or "
                  "replaced", file=sys.stderr)
            return 128 + int(signum)


def _checked_train(args, given: set[str], stop: StopSignals) -> int:
    if args.resume:
        if args.name is None:
            raise UsageError("--resume needs --name: the run to continue")
        if args.overwrite:
            raise UsageError("--resume and --overwrite contradict each other; pass one")
        check_run_name(args.name)
        _check_inside(Path(args.output) / args.name, Path(args.output), args.name)  # before its run.json is read
        _settle(Path(args.output) / args.name)
        record = read_record(Path(args.output) / args.name)
        args = _resume_args(args, given, record)
        check_same_data(record, vars(args))
    _check_args(args, given)
    name = check_run_name(args.name) if args.name is not None else default_run_name()
    output = check_output_dir(args.output)
    run_dir = output / name
    _check_inside(run_dir, output, name)
    last_ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not args.resume:
        _settle(run_dir)
    if args.resume:
        last_ckpt = _check_resume_state(run_dir, record)
    elif run_dir.exists() and not args.overwrite and not (run_dir / RECORD_NAME).is_file() \
            and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UsageError(f"{run_dir} exists and is not a run folder (it holds no {RECORD_NAME}); pass another --name")
    elif run_dir.exists() and not args.overwrite:
        raise UsageError(f"run directory {run_dir} exists; pass another --name, --overwrite, or --resume")
    elif run_dir.exists():
        check_not_running(run_dir)
        check_replaceable(run_dir, {"--model": args.model, "--data": args.data, "--val-data": args.val_data,
                                    "--test-data": getattr(args, "test_data", None)})
    return _train(args, name, output, run_dir, last_ckpt, record if args.resume else None, stop)


def _settle(run_dir: Path) -> None:
    """What a killed --overwrite of this run left is settled first, and the user is told (runs.settle_overwrite)."""
    if run_dir.parent.is_dir():
        note = settle_overwrite(run_dir)
        if note:
            print(f"signaldrift: note: {note}", file=sys.stderr)


def _check_inside(run_dir: Path, output: Path, name: str) -> None:
    """The run folder is a real folder directly inside --output: a symbolic link (to a folder elsewhere, or
    dangling) would put the run's files outside the folder the user named."""
    if run_dir.is_symlink():
        raise UsageError(f"--name {name!r}: {run_dir} is a symbolic link (to {os.readlink(run_dir)}); a run folder "
                         "must be a real folder inside --output; pass another --name")
    if run_dir.exists() and run_dir.resolve().parent != output.resolve():  # pragma: no cover - a name has no '/'
        raise UsageError(f"--name {name!r}: {run_dir} lies outside --output {output}; pass another --name")


@dataclass
class _Run:
    """Everything a training run needs, built and checked before anything is written."""

    dm: Any
    module: Any
    trainer: Any
    monitor: Any
    advisor: Any
    guard: Any
    checkpoint_io: Any
    finder: Any = None  # the alpha finder's result under --alpha auto


def _build(args, name: str, output: Path, run_dir: Path, last_ckpt: Path, resumed: dict | None, stop) -> _Run:
    """Data (tokenized), model, callbacks and trainer; every input checked, nothing on disk touched."""
    from lightning.pytorch import Trainer, seed_everything
    from lightning.pytorch.loggers import TensorBoardLogger

    from callbacks import AlphaController, AlphaRegimeAdvisor, SignalDriftMonitor
    from lora_alpha.train.dashboard import step_progress_bar, validation_charts, validation_summary_callback
    from lora_alpha.train.data import demo_model_path
    seed_everything(args.seed, verbose=False)
    model_path = args.model or demo_model_path()
    _check_model(args, model_path)
    dm = _datamodule(args, model_path)
    dm.setup("fit")  # tokenize now: bad data is refused before anything is written
    stop.check()
    module = _module(args, model_path, dm, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
                     schedule=args.schedule, loraplus_ratio=args.loraplus_ratio, adapter_dir=run_dir / "adapter")
    if resumed is not None:
        _check_checkpoint(last_ckpt, module, resumed.get("run_id"), resumed.get("config"))
    stop.check()
    classification = args.task == "sequence-classification"
    monitor = SignalDriftMonitor(every_n_steps=args.every_n_steps, full_grad_every=args.full_grad_every,
                                 dashboard=validation_charts(classification) if args.val_every else {})
    advisor = (AlphaController if args.alpha_control else AlphaRegimeAdvisor)(gap_every=args.gap_every)
    logger = TensorBoardLogger(save_dir=str(output), name=name, version="", default_hp_metric=False)
    checkpoint_io = _atomic_checkpoint_io()
    guard = _lifecycle_callback(stop, last_ckpt, checkpoint_io)
    callbacks = [monitor, advisor, guard, validation_summary_callback()]
    if not args.no_progress:
        callbacks.append(step_progress_bar())
    if args.checkpoint_every:
        from lightning.pytorch.callbacks import ModelCheckpoint

        # no version counter: a moved or copied run resumed here keeps writing last.ckpt (Q35-Q39), not last-v1.ckpt
        callbacks.append(ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0,
                                         every_n_train_steps=args.checkpoint_every, enable_version_counter=False))
    try:
        trainer = Trainer(callbacks=callbacks, logger=logger, plugins=[checkpoint_io], **_trainer_kwargs(args))
    except Exception as err:  # noqa: BLE001 - construction has no side effects; any rejection is the user's input
        raise UsageError(f"Lightning rejected the trainer settings: {str(err).strip().splitlines()[0]}") from None
    stop.check()
    finder = _auto_alpha(args, module, dm, stop) if args.alpha == "auto" else None  # last: the longest check
    return _Run(dm, module, trainer, monitor, advisor, guard, checkpoint_io, finder)


PROBE_FIELDS = ("step", "k_star", "scale_gain_z", "scale_help_z", "scale_ks", "scale_losses", "step_gap", "step_gap_lo",
                "step_gap_hi", "gap_z", "gap_gain", "drift_ratio", "step_size", "step_size_max", "step_size_peak", "verdict")
AUTO_TRIAL_STEPS = 16  # find-alpha's default trial length (benchmarks/results/alpha_finder.md)


def _auto_alpha(args, module, dm, stop):
    """``--alpha auto``: the finder's trials at the run's lr, scaled to --max-steps; the module takes the
    suggestion. Nothing is written here: the run records the trials once it starts."""
    from lora_alpha.train.finder import AlphaFinderWarning, find_alpha

    with warnings.catch_warnings(), stop.interruptible():
        warnings.simplefilter("ignore", AlphaFinderWarning)  # the record and the printed lines say the same
        # the finder's 16-step trials, or as many steps as the training data has batches (at least 2)
        steps = min(AUTO_TRIAL_STEPS, len(dm.train_dataloader()))
        if steps < 2:
            raise UsageError(f"--alpha auto: the training data gives {steps} batch(es) of {args.batch_size}; the alpha "
                             "finder's trials need at least 2")
        res = find_alpha(module, dm, lr=args.lr, head_lr=args.head_lr, steps=steps, target_steps=args.max_steps,
                         progress_bar=not args.no_progress)
    if res.interrupted:
        raise StopRequested(stop.signum or signal.SIGINT)
    stop.check()
    if res.suggestion is None:
        raise UsageError(f"--alpha auto: every finished trial of the alpha finder diverged at lr {args.lr:g}; "
                         "lower --lr or pass --alpha")
    args.alpha = float(res.suggestion)
    module.set_alpha(args.alpha)
    edge = " (at the edge of the finder's grid)" if res.at_edge else ""
    emit(f"--alpha auto: the alpha finder suggests {res.suggestion:.4g}{edge} for a {args.max_steps}-step run "
          f"at lr {args.lr:g}; training with it")
    return res


def _train(args, name: str, output: Path, run_dir: Path, last_ckpt: Path, resumed: dict | None, stop) -> int:
    run = _build(args, name, output, run_dir, last_ckpt, resumed, stop)
    dm, module, trainer, monitor, advisor, guard = run.dm, run.module, run.trainer, run.monitor, run.advisor, run.guard
    stop.check()
    # Every input has been checked: only now is anything on disk created or replaced.
    if resumed is not None:
        times = resumed.get("resumed", 0)
        times = times if isinstance(times, int) and not isinstance(times, bool) and times >= 0 else 0
        record = dict(resumed, status="running", resumed=times + 1, name=name, **process_info())  # a moved folder: its name now
        for stale in ("signal", "last_checkpoint"):  # the interruption's; a moved folder's path would point elsewhere
            record.pop(stale, None)
        target = RunDir(run_dir)
    else:
        _check_inside(run_dir, output, name)
        if run_dir.exists():
            check_not_running(run_dir)  # again: a run may have started there while this one was being built
        target = RunDir.create(output, name, args.overwrite)
        record = new_record(name, _config(args), str(module.lora_summary))
        record["data_sha256"] = data_digests(record["config"])
        if run.finder is not None:
            record["alpha_finder"] = run.finder.as_dict()
    start = time.time()
    try:
        if run.finder is not None and resumed is None:
            from callbacks.measurements import FINDER_RUN
            from lora_alpha.train.dashboard import write_finder_events

            # in the new run, before the swap; a folder of its own (steps = the finder's grid, not training steps)
            write_finder_events(target.build_path / FINDER_RUN, run.finder, run.finder.plot())
        write_record(target.build_path, record)
        target.swap_in()
        # An overwritten old run is kept (aside) until the new run has a complete checkpoint, or has finished.
        run.checkpoint_io.on_saved = target.commit
        run.checkpoint_io.run_id = record.get("run_id") if isinstance(record.get("run_id"), str) else None
        run.checkpoint_io.config = record.get("config")
        if trainer.is_global_zero:
            from lora_alpha.train.dashboard import hparam_metrics, run_hparams, write_hparams

            write_hparams(trainer.logger, run_hparams(module, args),
                          hparam_metrics(args.task == "sequence-classification"))
        trainer.fit(module, datamodule=dm, ckpt_path=str(last_ckpt) if resumed is not None else None)
        stop.after_fit = True
        if stop.signum is None and (trainer.interrupted or guard.interrupted):
            stop.signum = signal.SIGINT
        if stop.signum is None:
            trainer.limit_val_batches = 1.0  # the final check reads the whole validation split
            val = trainer.validate(module, datamodule=dm, verbose=False)[0]
            test = trainer.test(module, datamodule=dm, verbose=False)[0]
            verdict = advisor.verdict
            record.update(status="finished", seconds=round(time.time() - start, 1), val=_floats(val),
                          test=_floats(test), steps=trainer.global_step, precision=str(trainer.precision),
                          verdict=None if verdict is None else {"verdict": verdict.verdict, "evidence": verdict.evidence,
                                                                "suggestion": verdict.suggestion},
                          # each probe's estimate and the verdict reached after it (docs/metrics.md §5, §6)
                          probes=[{k: p.get(k) for k in PROBE_FIELDS} for p in advisor.probes])
            if args.alpha_control:  # docs/metrics.md §8: each move, and the alpha the adapter was saved with
                record["alpha_control"] = {"moves": [dict(m) for m in advisor.moves], "final_alpha": advisor.alpha}
            write_record(run_dir, record)
            target.commit()  # the new run is whole: the old one (if it was still kept) goes now
    except (KeyboardInterrupt, SystemExit) as err:
        if isinstance(err, SystemExit) and not (guard.interrupted or stop.signum is not None):
            raise
        stop.signum = stop.signum or signal.SIGINT
    except StopRequested as err:  # a signal before the first step (see the lifecycle callback)
        stop.signum = err.signum
    except BaseException as err:
        fate = _failed(run_dir, resumed, target, record, guard, trainer, start)
        if isinstance(err, (OSError, RunWriteError)):  # a full disk, a vanished folder: the cause, in one line
            print(f"signaldrift: error: {_write_error(err)}; {fate}", file=sys.stderr)
            return 1
        print(f"signaldrift: the run failed; {fate}", file=sys.stderr)
        raise
    if stop.signum is not None and not guard.stepped:
        return _not_started(run_dir, resumed, target, stop.signum)
    if stop.signum is not None and (target.old is not None or target.staged is not None):
        what = signal.Signals(stop.signum).name
        target.abort()  # stopped before the new run had a checkpoint: the old run is worth more
        print(f"signaldrift: {what} at step {trainer.global_step}, before the new run's first checkpoint; the new run "
              f"was discarded and the existing run {run_dir} is as it was", file=sys.stderr)
        return 128 + int(stop.signum)
    if stop.signum is not None:
        code = _interrupted(args, name, run_dir, last_ckpt, record, trainer, stop.signum, start)
        if target.replaced:  # K03 of the third review: the stop kept the new run; say where the old one went
            print(f"signaldrift: the run that --overwrite replaced in {run_dir} was deleted when the new run wrote its "
                  "first checkpoint", file=sys.stderr)
        return code
    if trainer.is_global_zero:
        emit(_summary(record, monitor, advisor, run_dir, dm))
    return 0


class RunWriteError(Exception):
    """A file of the run could not be written (the message names it and why); the run stops."""


def _write_error(err: BaseException) -> str:
    if isinstance(err, RunWriteError):
        return str(err)
    name = f" {err.filename}" if getattr(err, "filename", None) else ""
    return f"cannot write{name}: {err.strerror or err}" if isinstance(err, OSError) else str(err)


def _try_write(run_dir: Path, record: dict) -> str | None:
    """Write run.json; None, or why it could not be written (the disk may be the reason the run failed)."""
    try:
        write_record(run_dir, record)
        return None
    except OSError as err:
        return err.strerror or str(err)


def _failed(run_dir: Path, resumed: dict | None, target: RunDir, record: dict, guard, trainer, start: float) -> str:
    """After a failure: the old run back (an overwrite without a checkpoint yet), or the run marked ``failed``.
    Returns what became of the run, in words."""
    steps = trainer.global_step
    if resumed is not None and not guard.stepped:
        why = _try_write(run_dir, resumed)
        return f"{run_dir} is as it was" + (f" (but run.json could not be restored: {why})" if why else "")
    if resumed is None and (target.old is not None or target.staged is not None):
        target.abort()
        return f"the new run was discarded and the existing run {run_dir} is as it was"
    if resumed is None and not guard.stepped:
        target.abort()
        return "nothing was kept"
    record.update(status="failed", seconds=round(time.time() - start, 1), steps=steps)
    why = _try_write(run_dir, record)
    return f"{run_dir} is marked failed at step {steps}" if why is None else \
        f"{run_dir} stopped at step {steps} (run.json could not be marked failed: {why})"


def _not_started(run_dir: Path, resumed: dict | None, target: RunDir, signum: int) -> int:
    """A stop before the first training step: the run is left as if this command had not run."""
    what = signal.Signals(signum).name
    if resumed is not None:
        write_record(run_dir, resumed)
        print(f"signaldrift: {what} before the first training step; {run_dir} is as it was", file=sys.stderr)
    else:
        had_old = target.old is not None or target.staged is not None
        target.abort()
        print(f"signaldrift: {what} before the first training step; " +
              (f"the existing run {run_dir} is unchanged" if had_old else "nothing was written"), file=sys.stderr)
    return 128 + int(signum)


def _interrupted(args, name, run_dir, last_ckpt, record, trainer, signum: int, start: float) -> int:
    code = 128 + int(signum)
    what = signal.Signals(signum).name
    record.update(status="interrupted", signal=what, seconds=round(time.time() - start, 1), steps=trainer.global_step,
                  last_checkpoint=str(last_ckpt) if last_ckpt.is_file() else None)
    write_record(run_dir, record)
    again = f"signaldrift train --name {shlex.quote(name)} --output {shlex.quote(str(run_dir.parent.resolve()))} --resume"
    if last_ckpt.is_file():
        how = f"resume with: {again}"
    else:
        how = "no checkpoint was written yet, so it cannot be resumed; start it again with --overwrite"
    print(f"signaldrift: {what} at step {trainer.global_step}; {run_dir} is marked as interrupted ({how})",
          file=sys.stderr)
    return code


class StopRequested(Exception):
    """A stop signal arrived before training started: nothing is written, nothing is replaced."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM: a graceful stop, whatever the run is doing.

    While the run is being built (data, model, trainer) a first signal is noted and the build stops
    at its next check (:meth:`check`), before anything is written. During training it asks for a
    stop at the end of the current step: a checkpoint and the adapter are written, ``run.json``
    says ``interrupted``. After training (the final evaluation) and on a second signal it stops at
    once (KeyboardInterrupt). The previous handlers are restored on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # SIGHUP: the terminal closed (S03 of the fourth review)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.after_fit = False
        self.immediate = False
        self.holding = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        self.signum = _early_signal()  # noted while the command was starting: acted on at the first check
        for sig in self.SIGNALS:
            try:
                if sig == signal.SIGHUP and signal.getsignal(sig) is signal.SIG_IGN:  # `nohup`: ignored stays ignored
                    continue
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals to whoever owns them
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        if self.holding:
            return
        if not first or self.after_fit or self.immediate:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def held(self):
        """Within the block a signal is only noted (a few renames that must happen together)."""
        self.holding = True
        try:
            yield self
        finally:
            self.holding = False

    @contextlib.contextmanager
    def interruptible(self):
        """Within the block the first signal raises KeyboardInterrupt at once (long work that handles it
        itself and writes nothing, e.g. the alpha finder under ``--alpha auto``)."""
        self.immediate = True
        try:
            yield self
        finally:
            self.immediate = False

    def check(self) -> None:
        """Raise :class:`StopRequested` if a signal arrived (called between the build's phases)."""
        if self.signum is not None:
            raise StopRequested(self.signum)


def _lifecycle_callback(stop: StopSignals, last_ckpt: Path, checkpoint_io=None):
    """Stops at a step's end on a signal (checkpoint first), saves the adapter on any interrupt. The stop's own
    checkpoint does not commit an --overwrite (S01 of the fifth review: the old run went with it): an overwrite
    stopped before its first periodic checkpoint gives the old run back."""
    from lightning.pytorch import Callback

    class RunLifecycle(Callback):
        interrupted = False
        stepped = False
        saved = False

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if stop.signum is not None and not self.stepped:
                raise StopRequested(stop.signum)  # asked before the first step: nothing to keep

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.stepped = True
            if stop.signum is not None and not self.saved:
                self._save(trainer)
                trainer.should_stop = True

        def _save(self, trainer) -> None:
            last_ckpt.parent.mkdir(parents=True, exist_ok=True)
            if checkpoint_io is not None:
                checkpoint_io.stopping = True
            trainer.save_checkpoint(last_ckpt)
            self.saved = True

        def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
            from lightning.pytorch.utilities.exceptions import SIGTERMException

            if isinstance(exception, SIGTERMException) and self.stepped and not self.saved:
                self._save(trainer)  # Lightning raises it between steps: the state is whole
            if isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
                self.interrupted = True
                if self.stepped and trainer.is_global_zero and hasattr(pl_module, "export_adapter"):
                    pl_module.export_adapter()

    return RunLifecycle()


def _atomic_checkpoint_io():
    """Lightning's checkpoint writer, through a temporary file and a rename, readable like any output."""
    import torch
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        on_saved = None  # called after each whole checkpoint (the overwrite's old run may go then)
        stopping = False  # the stop's own checkpoint: it does not call on_saved
        run_id = None  # run.json's run_id, written into each checkpoint (a resume checks it)
        config = None  # run.json's configuration; its digest goes into each checkpoint (a resume checks it)

        def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
            if self.run_id is not None:
                checkpoint[RUN_ID_KEY] = self.run_id
            if self.config is not None:
                checkpoint[CONFIG_KEY] = config_digest(self.config)
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))
            except Exception as err:  # noqa: BLE001 - torch reports a full disk as a RuntimeError
                raise RunWriteError(f"cannot write checkpoint {path}: {_why(err, Path(path).parent)}") from err
            if self.on_saved is not None and not self.stopping:
                self.on_saved()

    return AtomicCheckpointIO()


def _why(err: BaseException, folder: Path) -> str:
    """The reason a write failed: the OSError in the chain (ENOSPC...), else the first line, with the free space."""
    seen = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    import shutil

    try:
        free = f"; {shutil.disk_usage(folder).free // 2**20} MiB free there"
    except OSError:
        free = ""
    return first[:200] + free


def _floats(d: dict) -> dict:
    return {k: float(v) for k, v in d.items()}


def _last_probe(p: dict) -> str:
    if p.get("k_star") is not None:
        z = "n/a" if p.get("scale_gain_z") is None else f"{p['scale_gain_z']:.3g}"
        return f"{p['k_star']:.3g} (last probe, z {z}: the loss is lowest with the update stretched this much)"
    spread = ""
    if p.get("step_gap_lo") is not None and p.get("step_gap_hi") is not None:
        spread = f", quartiles over the probe set [{p['step_gap_lo']:.3g}, {p['step_gap_hi']:.3g}]"
    gain = "" if p.get("gap_gain") is None else f", gap_gain {p['gap_gain']:.3g}"
    return f"{p['step_gap']:.3g} (last probe{spread}{gain})"


def _finder_line(res: dict) -> str:
    """--alpha auto: the finder's suggestion and its trials, in one line."""
    trials = ", ".join(f"{a:g}: {l:.3g}" for a, l in zip(res.get("alphas", []), res.get("losses", [])))
    return (f"--alpha auto chose {res.get('suggestion', float('nan')):.4g} from {res.get('steps')}-step trials at lr "
            f"{res.get('lr')} for a {res.get('target_steps')}-step run (held-out loss by alpha: {trials})")


def _summary(record, monitor, advisor, run_dir: Path, dm) -> str:
    def recent(metric: str) -> str:
        vals = monitor.latest(metric, window=10)
        return "n/a" if not vals else f"{statistics.median(vals):.4g}"

    test = record["test"]
    held = test.get("test_acc")
    n_test = len(dm.splits.get("test", [])) if hasattr(dm, "splits") else 0
    v = advisor.verdict
    rows = [
        ("run", f"{record['name']}: {record['steps']} steps in {record['seconds']:.0f} s ({record['precision']})"),
        ("LoRA", record["lora"]),
        *((("alpha finder", _finder_line(record["alpha_finder"])),) if record.get("alpha_finder") else ()),
        *((("alpha control", _control_line(record["alpha_control"])),) if record.get("alpha_control") else ()),
        ("held-out accuracy" if held is not None else "held-out loss",
         f"{held:.4f} on {n_test} test examples" if held is not None else f"{test.get('test_loss', float('nan')):.4f}"),
        ("drift_ratio", recent("drift_ratio") + "  (median over layers, then over the last 10 measurements)"),
        ("step_size", recent("step_size")),
        ("grad_alignment", recent("grad_alignment")),
        ("spectral_suppression", recent("spectral_suppression")),
        ("k*", "n/a" if not advisor.probes else _last_probe(advisor.probes[-1])),
        ("verdict", "none (no probe ran)" if v is None else v.verdict),
        ("evidence", "" if v is None else v.evidence),
        ("suggestion", "" if v is None else v.suggestion),
        ("adapter", str(run_dir / "adapter")),
        ("logs", str(run_dir)),
        ("next", f"tensorboard --logdir {run_dir.parent}    |    signaldrift report {run_dir}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(["", "Signal-Drift summary", "=" * 20] + [f"{k:<{width}}  {v}" for k, v in rows])


def _control_line(control: dict) -> str:
    moves = control["moves"]
    if not moves:
        return "no move (no significant k* early in the run)"
    steps = "; ".join(f"step {m['step']}: {m['old_alpha']:.4g} -> {m['new_alpha']:.4g} (k* {m['k_star']:.3g}, "
                      f"z {m['gain_z']:.2f})" for m in moves)
    return f"{len(moves)} move(s): {steps}; the adapter is saved at alpha {control['final_alpha']:.4g}"


def report(args) -> int:
    from callbacks.report import format_report, read_run, write_report_png

    check_int("--window", args.window, error=UsageError)
    run_dir = Path(args.run_dir)
    if run_dir.is_file():
        if run_dir.name != RECORD_NAME:
            raise UsageError(f"{run_dir} is a file; give the run's folder (e.g. {run_dir.parent})")
        run_dir = run_dir.parent  # `report RUN/run.json`: the run is the file's folder
    _settle(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"run directory {run_dir} does not exist")
    info = read_record(run_dir) if (run_dir / RECORD_NAME).exists() else None  # corrupt: one line, exit 2
    runs = sorted(p.parent.name for p in run_dir.glob(f"*/{RECORD_NAME}"))
    if info is None and runs:
        shown = ", ".join(str(run_dir / r) for r in runs[:3]) + (", ..." if len(runs) > 3 else "")
        held = "1 run in a folder of its own" if len(runs) == 1 else f"{len(runs)} runs"
        raise UsageError(f"{run_dir} is not a run folder (no {RECORD_NAME}); it holds {held}: pass a run folder, "
                         f"e.g. {shown}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            record = read_run(run_dir)
        except FileNotFoundError as err:
            raise UsageError(str(err)) from None
        except OSError as err:
            raise UsageError(f"cannot read the event files of {run_dir}: {err}") from None
    for w in caught:
        print(f"signaldrift: warning: {w.message}", file=sys.stderr)
    lines: list[str] = []  # printed after report.png is written: a reader that leaves early (`| head`) costs no file
    say = lines.append
    recorded_verdict = None
    if info is not None:
        status = live_status(info)
        resume = ("resume it with --resume" if (run_dir / "checkpoints" / "last.ckpt").is_file() else
                  "it had no checkpoint yet: start it again with --overwrite")
        note = {"stale": f" (its process, pid {info.get('pid')} on {info.get('host')}, is gone: it died without "
                         f"a word; {resume})",
                "running": " (still training)"}.get(status, "")
        say(f"Run {info.get('name')}: {status}{note}; {info.get('lora', '')}")
        finder = info.get("alpha_finder")
        if finder is not None:
            say(f"Alpha finder: {_finder_line(finder)}" if _finder_ok(finder) else
                  "Alpha finder: run.json's alpha_finder is damaged (alphas, losses and suggestion must be numbers); "
                  "not shown")
        test = info.get("test")
        acc = test.get("test_acc") if isinstance(test, dict) else None
        if _is_number(acc):
            say(f"Held-out accuracy: {acc:.4f}")
        elif acc is not None:
            say(f"Held-out accuracy: run.json's test_acc is {acc!r}, not a number; not shown")
        recorded_verdict = _recorded_verdict(info) if not record.verdicts else None
    incomplete = getattr(record, "incomplete", None)
    if incomplete:
        files = ", ".join(f"{Path(f).name} (" + ("empty: 0 bytes" if _empty_file(f) else f"{n} records read") + ")"
                          for f, n in incomplete.items())
        say(f"INCOMPLETE: {len(incomplete)} event file(s) were cut short or damaged: {files}; "
              + ("the numbers below are from the records before the damage" if record.scalars else
                 "they hold no measurements" + ("; the verdict below is run.json's" if recorded_verdict else "")))
    say(format_report(record, args.window, recorded_verdict=recorded_verdict))
    png = run_dir / "report.png"
    if not record.scalars:
        kept = " (the existing report.png is kept)" if png.exists() else ""
        say(f"\nreport.png not written: the event files hold no measurements{kept}")
    else:
        try:
            atomic_write(png, lambda tmp: write_report_png(record, tmp))
        except OSError as err:
            print("\n".join(lines))
            raise UsageError(f"cannot write {png}: {err.strerror or err}; the report above is complete") from None
        say(f"\nWrote {png}")
    print("\n".join(lines))
    return 0


def _empty_file(path: str) -> bool:
    try:
        return Path(path).stat().st_size == 0
    except OSError:
        return False


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _finder_ok(res) -> bool:
    """run.json's alpha_finder as --alpha auto writes it (a hand-edited one may hold anything)."""
    return (isinstance(res, dict) and all(isinstance(res.get(k), list) and all(_is_number(v) for v in res[k])
                                          for k in ("alphas", "losses"))
            and _is_number(res.get("suggestion")))


def _recorded_verdict(info: dict) -> str | None:
    """run.json's verdict and probes, as text, for a report whose event files hold no verdict."""
    verdict = info.get("verdict")
    if not isinstance(verdict, dict) or not isinstance(verdict.get("verdict"), str):
        return None
    lines = [f"{verdict['verdict']} (from run.json; the event files hold no verdict)"]
    lines += [str(verdict[k]) for k in ("evidence", "suggestion") if isinstance(verdict.get(k), str) and verdict[k]]
    probes = info.get("probes")
    if isinstance(probes, list):
        for p in probes:
            if isinstance(p, dict) and _is_number(p.get("step")) and _is_number(p.get("k_star")):
                lines.append(f"probe at step {p['step']:g}: k* {p['k_star']:.3g}, verdict {p.get('verdict')}")
            elif isinstance(p, dict) and _is_number(p.get("step")) and _is_number(p.get("step_gap")):
                lines.append(f"probe at step {p['step']:g}: step_gap {p['step_gap']:.3g}, verdict {p.get('verdict')}")
    return "\n".join(lines)


def given_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations of the options written on the command line (abbreviations are off)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    command = next((x for x in argv if x in sub.choices), None)
    if command is None:
        return set()
    words = {x.split("=", 1)[0] for x in argv if x.startswith("-")}
    return {a.dest for a in sub.choices[command]._actions if words & set(a.option_strings)}  # noqa: SLF001


def main(argv: list[str] | None = None) -> int:
    installed = _early is not None and _early.install()  # `signaldrift` (signaldrift_cli) did it at its start
    try:
        return _main(argv)
    finally:
        if installed:
            _early.uninstall()


def _early_signal() -> int | None:
    return None if _early is None else _early.pending()


def _main(argv: list[str] | None) -> int:
    from lora_alpha.train.finder import AlphaFinderError

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    given = given_flags(parser, argv)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # a Lightning-internal deprecation, not the user's
    # Our data modules resume mid-epoch from the checkpoint's data position (LoRAAlphaModule), which
    # Lightning cannot see: its warning that the dataloader is not resumable would be wrong here.
    warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
    # A moved run's checkpoint names its old folder; the run keeps no best-k files, so nothing is lost by it.
    warnings.filterwarnings("ignore", message=".*The dirpath has changed from.*")
    signum = _early_signal()
    if signum is not None:  # while the command was starting (imports): nothing has been done
        print(f"signaldrift: {signal.Signals(signum).name} before `{args.command}` started; nothing was written "
              "or replaced", file=sys.stderr)
        return 128 + int(signum)
    try:
        if args.command == "report":
            if _early is not None:
                _early.uninstall()  # a report writes only report.png, atomically: a signal ends it at once
            try:
                code = report(args)
                if sys.stdout is not None:  # None: started with standard output closed (`>&-`); print wrote nothing
                    sys.stdout.flush()  # here, where a closed pipe is caught, not in the interpreter's exit
                return code
            except BrokenPipeError:  # `signaldrift report RUN | head`: the reader left, nothing is wrong
                _stdout_to_devnull()  # the exit's flush fails quietly
                return 0
            except OSError as err:  # stdout is a full disk (`> /dev/full`) or a broken device
                _stdout_to_devnull()
                print(f"signaldrift: error: cannot write the report to standard output: {err.strerror or err}",
                      file=sys.stderr)
                return 1
        return {"train": train, "find-alpha": find_alpha_cmd}[args.command](args, given)
    except (UsageError, LoRAConfigError, AlphaFinderError) as err:
        return _fail(str(err))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
