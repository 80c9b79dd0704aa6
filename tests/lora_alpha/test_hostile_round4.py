"""Hostile input, fourth round (the fresh review of 136 cases): resume through links and after hand edits, report
with standard output closed, data read wrong without a word, API misuse. Each case failed before its fix."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import lora_alpha
from lora_alpha.scaling import LoRAConfigError
from lora_alpha.train.data import normalize_label, read_records
from tests.conftest import TinyMLP
from tests.lora_alpha.app_helpers import ROOT, run_cli_many, tree_state, write_csv
from tests.lora_alpha.test_hostile_cli import _args, _each, workspace  # noqa: F401 - the fixture


def test_resume_refuses_links_and_a_hand_edited_configuration(workspace, tmp_path):
    """L01: --resume wrote its adapter through adapter/ linked to the user's folder (outside --output); H02, H09,
    H13, H14: a hand-edited lr, data, seed or train size in run.json was resumed as if nothing had changed."""
    out = tmp_path / "runs"
    code, err = run_cli_many([_args(workspace, "--checkpoint-every", "1", output=out, name="r")], cwd=tmp_path)[0]
    assert code == 0, err[-2000:]
    record = json.loads((out / "r" / "run.json").read_text())
    record["status"] = "interrupted"
    user = tmp_path / "user" / "myadapter"
    shutil.copytree(out / "r" / "adapter", user)
    (user / "NOTES.md").write_text("mine")
    write_csv(tmp_path / "other.csv", n=40)
    edits = {"lr": {"lr": 5e-4}, "seed": {"seed": 7}, "size": {"train_size": 16},
             "data": {"data": str(tmp_path / "other.csv")}}
    for name in ("linked", *edits):
        shutil.copytree(out / "r", out / name)
        (out / name / "run.json").write_text(json.dumps(dict(record, config={**record["config"], **edits.get(name, {})})))
    shutil.rmtree(out / "linked" / "adapter")
    (out / "linked" / "adapter").symlink_to(user, target_is_directory=True)
    before = {n: tree_state(out / n) for n in ("linked", *edits)} | {"user": tree_state(user)}
    resume = ["train", "--output", str(out), "--resume", "--no-progress", "--name"]
    results = run_cli_many([resume + [n] for n in ("linked", *edits)], cwd=tmp_path)
    edited = "'s configuration is not the one the checkpoint"
    _each([("linked", f"holds symbolic link(s) (adapter -> {user})"), ("lr", edited), ("seed", edited),
           ("size", edited), ("data", "")], results)
    assert {n: tree_state(out / n) for n in ("linked", *edits)} | {"user": tree_state(user)} == before


def test_data_read_wrong_without_a_word(workspace, tmp_path):
    """D09: labels 1 and 1e0 made two classes; D06: a header repeated mid-file (two files joined) trained as a row;
    V03: a byte-identical copy of the training file was accepted as --val-data; D02: a JSON string holding U+2028
    was cut in two as if it were a line end; F01: find-alpha into a folder holding an earlier finder's event file
    alone mixed both in TensorBoard."""
    assert [normalize_label(x) for x in ("1e0", "1.0E+1", "0.50", "2e-1", "1_0", "7")] == ["1", "10", "0.5", "0.2",
                                                                                          "1_0", "7"]
    data = workspace / "d.csv"
    text = data.read_text()
    header = text.splitlines()[0]
    (tmp_path / "joined.csv").write_text(text + header + "\n" + "\n".join(text.splitlines()[1:]) + "\n")
    shutil.copy(data, tmp_path / "copy.csv")
    rows = [{"text": "one\u2028two", "label": 0}, {"text": "three", "label": 1}]
    (tmp_path / "sep.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    assert [r["text"] for r in read_records(tmp_path / "sep.jsonl", ["text", "label"])] == ["one\u2028two", "three"]
    finder = tmp_path / "fa"
    finder.mkdir()
    (finder / "events.out.tfevents.1.host").write_bytes(b"earlier")

    def with_data(path, *extra):
        base = _args(workspace, *extra, output=tmp_path / "runs", name="x")
        base[base.index("--data") + 1] = str(path)
        return base

    results = run_cli_many([
        with_data(tmp_path / "joined.csv"),
        with_data(data, "--val-data", str(tmp_path / "copy.csv")),
        ["find-alpha", "--model", str(workspace / "bert"), "--data", str(data), "--targets", "query", "--rank", "2",
         "--steps", "2", "--batch-size", "8", "--alphas", "1,2,4", "--output", str(finder), "--no-progress"],
    ], cwd=tmp_path)
    _each([("joined", f"repeats the header row ['text', 'label']"),
           ("copy", "holds the same bytes as the training file"),
           ("finder", "already holds TensorBoard event file(s) (events.out.tfevents.1.host) but no find_alpha.json")],
          results)
    assert not (tmp_path / "runs" / "x").exists() and sorted(p.name for p in finder.iterdir()) == ["events.out.tfevents.1.host"]


def test_api_misuse_gets_one_clear_error(tmp_path):
    """YA17, YA35: adapters_disabled on a merged model, and a merge inside adapters_disabled, left the update on
    inside the block; YA12: load_adapter given the weights file said '<file>/adapter_config.json does not exist'."""
    model = TinyMLP()
    lora_alpha.inject(model, ["fc1"], rank=2, alpha=4.0)
    with torch.no_grad():
        model.fc1.lora_B.fill_(0.5)
    x = torch.randn(3, 8)
    lora_alpha.merge_adapters(model)
    with pytest.raises(LoRAConfigError, match="cannot switch off 1 merged LoRA layer.*'fc1'.*unmerge_adapters"):
        with lora_alpha.adapters_disabled(model):
            pass
    lora_alpha.unmerge_adapters(model)
    base = TinyMLP()(x)
    with lora_alpha.adapters_disabled(model):
        with pytest.raises(LoRAConfigError, match="switched off \\(inside adapters_disabled\\)"):
            lora_alpha.merge_adapters(model)
        assert torch.allclose(model(x), base, atol=1e-6)  # still the base model inside the block
    assert model.fc1.lora_enabled and not model.fc1.merged
    lora_alpha.save_adapter(model, tmp_path / "ad")
    with pytest.raises(lora_alpha.AdapterMismatchError, match="is a file; load_adapter takes the adapter's folder"):
        lora_alpha.load_adapter(TinyMLP(), tmp_path / "ad" / "adapter_model.safetensors")


# ----------------------------------------------------------------- the fifth review (85 cases on b89ed90)
def test_an_overwrite_stopped_before_its_first_checkpoint_gives_the_old_run_back(workspace, tmp_path, monkeypatch,
                                                                                 capsys):
    """S01: SIGTERM at step 1 of an --overwrite with --checkpoint-every 0: the stop's own checkpoint committed the
    overwrite and the finished old run was deleted."""
    from lora_alpha.train.cli import main
    from tests.lora_alpha.test_hostile_cli import _old_run
    from tests.lora_alpha.test_lifecycle import _Recorder

    out = tmp_path / "runs"
    before = _old_run(out / "old")
    _Recorder(stop_at=1).install(monkeypatch)
    args = _args(workspace, "--overwrite", "--checkpoint-every", "0", output=out, name="old")
    args[args.index("--max-steps") + 1] = "20"
    assert main(args) == 143
    err = capsys.readouterr().err
    assert "SIGTERM at step 1, before the new run's first checkpoint; the new run was discarded" in err, err[-2000:]
    assert tree_state(out / "old") == before and sorted(p.name for p in out.iterdir()) == ["old"]


def test_standard_output_that_cannot_be_written_is_not_a_traceback(workspace, tmp_path):
    """T01, T03: `train > /dev/full` and `train | head -c 0` ended a finished run in a traceback; T02: the same for
    find-alpha; P20 (fourth review): `report RUN >&-` ended in an AttributeError; Y12: AlphaController on a model
    whose LoRA layers are all merged raised a StatisticsError."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore", PYTHONPATH=str(ROOT))
    run = f"{sys.executable} -c 'import sys; from lora_alpha.train.cli import main; sys.exit(main())'"
    train = " ".join(_args(workspace, output=tmp_path / "runs", name="{n}"))
    finder = (f"find-alpha --model {workspace / 'bert'} --data {workspace / 'd.csv'} --targets query --rank 2 --steps 2 "
              f"--batch-size 8 --alphas 1,2,4 --no-progress --output {tmp_path / 'fa'}")
    report = f"{run} report {tmp_path / 'runs' / 'pipe'} >&-"  # P20 of the fourth review: stdout closed
    for cmd, code, warned in ((f"{run} {train.format(n='full')} > /dev/full", 0, True),
                              (f"{run} {train.format(n='pipe')} | head -c 0", 0, False),
                              (report, 0, False), (f"{run} {finder} > /dev/full", 0, True)):
        proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == code and "Traceback" not in proc.stderr, (cmd, proc.stderr[-2000:])
        assert ("cannot write to standard output (No space left on device)" in proc.stderr) == warned, proc.stderr[-500:]
    assert json.loads((tmp_path / "runs" / "full" / "run.json").read_text())["status"] == "finished"
    assert (tmp_path / "runs" / "pipe" / "report.png").stat().st_size > 10_000
    assert (tmp_path / "fa" / "find_alpha.json").is_file()

    from callbacks import AlphaController, NoLoRALayersError
    from tests.callbacks.helpers import make_module, make_trainer

    module = make_module()
    lora_alpha.merge_adapters(module.model)
    with pytest.raises(NoLoRALayersError, match="AlphaController found no LoRA layer it can move: every one is merged"):
        make_trainer(max_steps=2, callbacks=[AlphaController(gap_every=1)]).fit(module)


def test_an_interrupted_find_alpha_overwrite_keeps_the_earlier_results(workspace, tmp_path, monkeypatch, capsys):
    """Q60 of the sixth review: find-alpha --overwrite stopped after one trial replaced a complete earlier result by
    a one-trial one (and called its suggestion 'at the edge of the grid')."""
    import dataclasses

    from lora_alpha.train import finder
    from lora_alpha.train.cli import main
    from tests.lora_alpha.test_hostile_round3 import _finder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "fa"
    assert main(_finder(workspace, out)) == 0
    before = tree_state(out)
    real = finder.find_alpha

    def stopped_after_one(*a, **k):  # what a Ctrl-C after the first trial gives: the rest never ran
        res = real(*a, **k)
        nan = float("nan")
        return dataclasses.replace(res, interrupted=True, losses=[res.losses[0], nan, nan])

    monkeypatch.setattr(finder, "find_alpha", stopped_after_one)
    capsys.readouterr()
    assert main(_finder(workspace, out, "--overwrite")) == 130
    printed = capsys.readouterr().out
    assert "the earlier find-alpha's results in" in printed and "were kept" in printed
    assert tree_state(out) == before


# ----------------------------------------------------------------- the sixth review (70 cases on 4805f04)
def test_a_moved_run_resumes_into_its_own_last_checkpoint(workspace, tmp_path, monkeypatch, capsys):
    """Q35-Q39: a renamed or copied interrupted run, resumed, wrote checkpoints/last-v1.ckpt beside a stale last.ckpt
    (which a later --overwrite then called a foreign file), and run.json kept the old folder's checkpoint path."""
    from lora_alpha.train.cli import main
    from tests.lora_alpha.test_lifecycle import _Recorder

    out = tmp_path / "runs"
    _Recorder(stop_at=2).install(monkeypatch)
    args = _args(workspace, "--checkpoint-every", "1", output=out, name="int")
    args[args.index("--max-steps") + 1] = "4"
    assert main(args) == 143
    assert json.loads((out / "int" / "run.json").read_text())["last_checkpoint"] == str(out / "int" / "checkpoints"
                                                                                        / "last.ckpt")
    (out / "int").rename(out / "moved")
    monkeypatch.undo()
    assert main(["train", "--output", str(out), "--name", "moved", "--resume", "--no-progress"]) == 0
    record = json.loads((out / "moved" / "run.json").read_text())
    assert record["status"] == "finished" and record["steps"] == 4 and "last_checkpoint" not in record
    assert sorted(p.name for p in (out / "moved" / "checkpoints").iterdir()) == ["last.ckpt"]
    import torch as _torch

    assert _torch.load(out / "moved" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    capsys.readouterr()
    assert main(_args(workspace, "--overwrite", output=out, name="moved")) == 0, capsys.readouterr().err[-2000:]
