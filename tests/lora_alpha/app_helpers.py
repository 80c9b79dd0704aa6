"""Tiny local model folders and data files for the training-application tests (offline)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
POSITIVE = ["a wonderful, moving film", "brilliant acting and a great story", "a joy from start to finish",
            "funny, warm and smart", "the best film of the year", "beautifully shot and well told"]
NEGATIVE = ["a dull, lifeless mess", "boring and far too long", "the worst script in years",
            "clumsy, loud and empty", "a tedious waste of time", "badly acted and badly written"]


def tokenizer_path() -> str:
    from lora_alpha.train.data import demo_model_path

    return demo_model_path()


def save_tiny(kind: str, folder: Path) -> Path:
    """A tiny BERT classifier, GPT-2 or Llama with the embedded MiniLM tokenizer, saved as a model folder."""
    from transformers import (AutoTokenizer, BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel,
                              LlamaConfig, LlamaForCausalLM)

    tok = AutoTokenizer.from_pretrained(tokenizer_path())
    torch.manual_seed(0)
    v = tok.vocab_size
    if kind == "bert":
        model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                         intermediate_size=64, vocab_size=v, num_labels=2))
    elif kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=v, n_positions=128))
    else:
        model = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                             num_key_value_heads=2, intermediate_size=64, vocab_size=v,
                                             max_position_embeddings=128))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_csv(path: Path, n: int = 24, label_names=("neg", "pos")) -> Path:
    rows = ["text,label"]
    for i in range(n):
        text = (POSITIVE if i % 2 else NEGATIVE)[i % 6]
        rows.append(f'"{text}",{label_names[i % 2]}')
    path.write_text("\n".join(rows) + "\n")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def run_cli(*args: str, cwd: Path, env_extra: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    extra = dict(env_extra or {})
    env["PYTHONPATH"] = os.pathsep.join([*extra.pop("PREPEND_PATH", []), str(ROOT)])
    env.update(extra)
    cmd = [sys.executable, "-c", "import sys; from lora_alpha.train.cli import main; sys.exit(main())", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


_MANY = """
import contextlib, io, json, sys
from lora_alpha.train.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
    results.append([code, [err.getvalue(), out.getvalue()] if sys.argv[2] == "1" else err.getvalue()])
print(json.dumps(results))
"""


def run_cli_many(argvs: list[list[str]], cwd: Path, timeout: int = 240, capture_stdout: bool = False) -> list[tuple]:
    """Several invocations of the command's entry point in one subprocess (one import of torch):
    ``[(exit code, stderr)]`` (``[(exit code, (stderr, stdout))]`` with ``capture_stdout``)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore",
               PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", _MANY, json.dumps(argvs), "1" if capture_stdout else "0"], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return [tuple(r) for r in json.loads(out.stdout.strip().splitlines()[-1])]


def tree_state(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` with its bytes and mtime: equal before and after means untouched."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def recorded_config(argv: list[str], **override) -> dict:
    """The configuration `train` records in run.json for ``argv`` (every setting), with ``override`` applied:
    for hand-made records of interrupted runs."""
    from lora_alpha.train.cli import _config, build_parser

    return {**_config(build_parser().parse_args(argv)), **override}
