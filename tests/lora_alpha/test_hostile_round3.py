"""Hostile input, third round (the fresh review of the 315-case fixes): what --overwrite may delete, a killed
overwrite's leftovers, find-alpha's results, data that was silently read wrong. Each case failed before its fix."""
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.lora_alpha.app_helpers import ROOT, run_cli, run_cli_many, tree_state, write_jsonl
from tests.lora_alpha.test_hostile_cli import _args, _each, _old_run, _one_line, workspace  # noqa: F401 - the fixture


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _stub(folder, pid, checkpoint=False, status="running"):
    """What a killed overwrite leaves at the run's name: the new run's record, its pid gone."""
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"status": status, "name": folder.name, "pid": pid,
                                                 "host": os.uname().nodename}))
    (folder / "events.out.tfevents.2.host").write_bytes(b"new")
    if checkpoint:
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")


def test_overwrite_names_and_output_keep_off_what_is_not_the_run(workspace, tmp_path):
    """O15: the user's file and a run nested in the run folder were deleted with it by --overwrite; O14: a run
    could be made inside another run; O17: a non-run folder was offered --overwrite and --resume; Q06: --name '...'
    made a hidden folder that looks like the tool's own backups; N09: a leading '-'; O03: --output '' wrote into
    the working folder."""
    out = tmp_path / "runs"
    _old_run(out / "keep")
    (out / "keep" / "mydata.csv").write_text("text,label\nmine,1\n")
    _old_run(out / "keep" / "inner")
    (out / "keep" / "adapter" / "NOTES.md").write_text("mine")  # O03, O04 of the third review: inside its folders
    (out / "keep" / "checkpoints" / "mine").mkdir()
    (out / "keep" / "checkpoints" / "mine" / "epoch3.ckpt").write_text("mine")
    (out / "notes").mkdir()
    (out / "notes" / "todo.txt").write_text("mine")
    before = tree_state(out)

    def named(name, output=str(tmp_path / "elsewhere")):
        base = _args(workspace, output=output, name="x")
        i = base.index("--name")
        return base[:i] + [f"--name={name}"] + base[i + 2:]

    empty = named("ok")
    empty[empty.index("--output") + 1] = ""
    cases = [
        (_args(workspace, "--overwrite", output=out, name="keep"), "holds 4 entries that no run writes (adapter/NOTES.md, checkpoints/mine, inner, mydata.csv)"),
        (_args(workspace, output=out / "keep", name="nested"), "lies inside the run folder"),
        (_args(workspace, output=out / "keep" / "inner" / "deeper", name="x"), "lies inside the run folder"),
        (_args(workspace, output=out, name="notes"), "exists and is not a run folder (it holds no run.json); pass another --name"),
        *((named(name), "is not a run name") for name in ("...", ".hidden", "-x", "--overwrite")),
        (empty, "--output is empty"),
    ]
    results = run_cli_many([argv for argv, _ in cases], cwd=tmp_path)
    _each([(" ".join(argv[-6:]), message) for argv, message in cases], results)
    assert tree_state(out) == before  # no hidden swap folder either
    assert sorted(os.listdir(tmp_path)) == ["runs"]


def test_a_killed_overwrite_is_settled_by_the_next_command(tmp_path):
    """O21-O24: an overwrite SIGKILLed before its first checkpoint left a dead new run at the name and the old run
    hidden in .NAME.old-*, which no command mentioned; a later overwrite orphaned it for good."""
    out = tmp_path / "runs"
    before = _old_run(out / ".keep.old-abc" / "run")
    _stub(out / "keep", _dead_pid())
    _old_run(out / ".kept.old-def" / "run")  # here the new run had its checkpoint: the overwrite was due to commit
    _stub(out / "kept", _dead_pid(), checkpoint=True)
    new = tree_state(out / "kept")
    _stub(tmp_path / "other" / "dead", _dead_pid())  # no backup: report says how to start it again, not to resume
    restored, committed, dead = [err_out for _, err_out in run_cli_many(
        [["report", str(out / "keep")], ["train", "--name", "kept", "--output", str(out), "--resume"],
         ["report", str(tmp_path / "other" / "dead")]], cwd=tmp_path, capture_stdout=True)]
    assert "the run it was replacing is back in" in restored[0] and ".keep.old-abc" in restored[0], restored
    assert "was removed, as the overwrite would have done" in committed[0], committed
    shown = dead[1]
    assert tree_state(out / "keep") == before
    assert tree_state(out / "kept") == new
    assert sorted(p.name for p in out.iterdir()) == ["keep", "kept"]
    assert "stale (its process" in shown and "it had no checkpoint yet: start it again with --overwrite" in shown, shown

    # a swap still in progress (its process alive) and two backups are left alone, with a word for the latter
    shutil.rmtree(out / "kept")
    _stub(out / ".keep.old-ghi" / "run", os.getpid(), status="finished")
    (out / "keep" / "run.json").write_text(json.dumps({"status": "running", "name": "keep", "pid": os.getpid(),
                                                       "host": os.uname().nodename}))
    alive = tree_state(out)
    from lora_alpha.train.runs import settle_overwrite

    assert settle_overwrite(out / "keep") is None and tree_state(out) == alive
    _stub(out / ".keep.old-jkl" / "run", os.getpid(), status="finished")
    (out / "keep" / "run.json").write_text(json.dumps({"status": "failed", "name": "keep"}))
    alive = tree_state(out)
    note = settle_overwrite(out / "keep")
    assert note.startswith("2 runs that killed --overwrite runs") and tree_state(out) == alive


def test_sigkill_during_an_overwrite_then_report_restores_the_old_run(workspace, tmp_path):
    """The real thing: SIGKILL to `train --overwrite` after the swap, before its first checkpoint."""
    out = tmp_path / "runs"
    before = _old_run(out / "keep")
    argv = _args(workspace, "--overwrite", output=out, name="keep")
    argv[argv.index("--max-steps") + 1] = "100000"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore",
               PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from lora_alpha.train.cli import main; "
                             "sys.exit(main())", *argv, "--checkpoint-every", "100000"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    try:
        while time.time() < deadline:  # until the new run holds the name
            try:
                if json.loads((out / "keep" / "run.json").read_text()).get("pid") == proc.pid:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        else:
            pytest.fail("the overwrite never swapped its new run in")
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert any(p.name.startswith(".keep.old-") for p in out.iterdir())
    done = run_cli("report", str(out / "keep"), cwd=tmp_path)
    assert "the run it was replacing is back in" in done.stderr, done.stderr[-2000:]
    assert tree_state(out / "keep") == before
    assert sorted(p.name for p in out.iterdir()) == ["keep"]


def _finder(workspace, out, *extra):
    return ["find-alpha", "--model", str(workspace / "bert"), "--data", str(workspace / "d.csv"), "--targets",
            "query,value", "--rank", "2", "--batch-size", "8", "--alphas", "4,32,256", "--steps", "2",
            "--eval-batches", "1", "--eval-size", "8", "--output", str(out), "--no-progress", *extra]


def test_find_alpha_replaces_earlier_results_only_with_overwrite(workspace, tmp_path, monkeypatch, capsys):
    """F21: a second find-alpha into the same folder replaced the first's JSON and PNG without a word and left its
    event file beside the new one; F22: the user's own find_alpha.json was overwritten."""
    out = tmp_path / "fa"
    mine = tmp_path / "mydocs"
    mine.mkdir()
    (mine / "find_alpha.json").write_text('{"my": "notes"}')
    first, again, forced, users = run_cli_many(
        [_finder(workspace, out), _finder(workspace, out), _finder(workspace, out, "--overwrite"),
         _finder(workspace, mine, "--overwrite")], cwd=tmp_path, capture_stdout=True)
    assert first[0] == 0 and "replacing" not in first[1][1], first[1][0][-2000:]
    _one_line(again[0], again[1][0], "already holds find_alpha.json, find_alpha.png; pass another --output, or --overwrite")
    assert forced[0] == 0, forced[1][0][-2000:]
    assert "replacing the earlier find-alpha's results" in forced[1][1], forced[1][1]  # F04: said, not silent
    _one_line(users[0], users[1][0], "is not an earlier find-alpha's result")
    assert (mine / "find_alpha.json").read_text() == '{"my": "notes"}' and os.listdir(mine) == ["find_alpha.json"]
    events = sorted(p.name for p in out.glob("events.out.tfevents.*"))
    assert len(events) == 1 and json.loads((out / "find_alpha.json").read_text())["events"] == events

    # a second Ctrl-C while the results are written (the figure renders for a second) was a traceback and left a
    # partial event file: now one line, and the folder is as it was
    from lora_alpha.train import dashboard
    from lora_alpha.train.cli import main

    def interrupted(*_):
        raise KeyboardInterrupt

    before = tree_state(out)
    monkeypatch.setattr(dashboard, "write_finder_events", interrupted)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(_finder(workspace, out, "--overwrite")) == 130
    err = capsys.readouterr().err
    assert "SIGINT while the alpha finder's results were being written: stopped at once" in err, err[-2000:]
    assert "Traceback" not in err and tree_state(out) == before


def test_data_read_wrong_without_a_word_is_refused(workspace, tmp_path):
    """E05: a JSON key given twice kept the last value; E07: one stray label 1.5 made a third class; E13: text of
    invisible characters only trained on special tokens; D12: a gzip file was called "not UTF-8"; Q11: the
    training file as --val-data or --test-data was reported as held-out."""
    ok = [{"text": f"a fine film {i}", "label": i % 2} for i in range(20)]
    write_jsonl(tmp_path / "dup.jsonl", ok[:5])
    with open(tmp_path / "dup.jsonl", "a") as fh:
        fh.write('{"text": "x", "label": 0, "label": 1}\n')
    write_jsonl(tmp_path / "frac.jsonl", ok + [{"text": "stray", "label": 1.5}])
    write_jsonl(tmp_path / "blank.jsonl", ok + [{"text": "\u00a0\u200b\t", "label": 1}])
    with gzip.open(tmp_path / "packed.csv", "wt") as fh:
        fh.write((workspace / "d.csv").read_text())
    (tmp_path / "spaced.csv").write_text(" text, Label\nfine,1\nbad,0\n")  # D05, D11 of the third review
    data = str(workspace / "d.csv")
    cases = [
        (["--data", str(tmp_path / "spaced.csv")], "column names must match exactly: ' text' is not 'text', ' Label' "
                                                   "is not 'label' (spaces or capitals"),
        (["--data", str(tmp_path / "dup.jsonl")], "dup.jsonl:6 gives the key 'label' twice in one object"),
        (["--data", str(tmp_path / "frac.jsonl")], "mixes whole-number labels ['0', '1'] with ['1.5']"),
        (["--data", str(tmp_path / "blank.jsonl")], "blank.jsonl:21 has no text in column 'text'"),
        (["--data", str(tmp_path / "packed.csv")], "packed.csv is a gzip-compressed file; unpack it first"),
        (["--val-data", data], f"--val-data {data!r} is the training file"),
        (["--test-data", data], f"--test-data {data!r} is the training file"),
    ]
    results = run_cli_many([_args(workspace, *extra, output=tmp_path / "runs") for extra, _ in cases], cwd=tmp_path)
    _each([(" ".join(extra), message) for extra, message in cases], results)
    assert not (tmp_path / "runs").exists()


def test_blank_means_no_visible_character():
    from lora_alpha.train.data import is_blank

    for text in ("", " ", "\u00a0", "\u200b", "\u2028\t\r\n", "\ufeff\u200d"):
        assert is_blank(text), repr(text)
    for text in ("a", " .", "\u00a0x", "😀", "\u0301"):  # a combining mark is not blank either
        assert not is_blank(text), repr(text)


def test_resume_refuses_a_record_with_a_setting_missing_or_unknown(workspace, tmp_path):
    """R17: --resume of a run.json without 'lr' continued at the default learning rate; an unknown key was
    ignored; a renamed folder kept printing its old name. R05 (third review): another run's checkpoint of the same
    shapes, copied in, was resumed from without a word."""
    out = tmp_path / "runs"
    code, err = run_cli_many([_args(workspace, "--checkpoint-every", "1", output=out, name="r")], cwd=tmp_path)[0]
    assert code == 0, err[-2000:]
    record = json.loads((out / "r" / "run.json").read_text())
    record["status"] = "interrupted"
    lost = dict(record, config={k: v for k, v in record["config"].items() if k != "lr"})
    bogus = dict(record, config={**record["config"], "bogus_key": 1})
    import torch

    saved = torch.load(out / "r" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert isinstance(record["run_id"], str) and saved["signaldrift_run_id"] == record["run_id"]
    other = dict(record, run_id="0123456789abcdef")  # R05: another run's checkpoint (same shapes) copied in
    for name, rec in (("nolr", lost), ("bogus", bogus), ("moved", record), ("foreign", other), ("dirckpt", record)):
        shutil.copytree(out / "r", out / name)
        (out / name / "run.json").write_text(json.dumps(rec))
    (out / "dirckpt" / "checkpoints" / "last.ckpt").unlink()  # R09: a folder where the checkpoint belongs
    (out / "dirckpt" / "checkpoints" / "last.ckpt").mkdir()
    states = {n: tree_state(out / n) for n in ("nolr", "bogus", "foreign")}
    resume = ["train", "--output", str(out), "--resume", "--no-progress", "--name"]
    results = run_cli_many([resume + ["nolr"], resume + ["bogus"], resume + ["foreign"], resume + ["dirckpt"],
                            resume + ["moved"]], cwd=tmp_path)
    _each([("nolr", "is damaged: its recorded configuration has no --lr"),
           ("bogus", "has unknown setting(s) ['bogus_key']"),
           ("foreign", f"is not this run's: it was written by run {record['run_id']!r}"),
           ("dirckpt", "last.ckpt is not a file (a folder or a device where the checkpoint belongs)")], results[:4])
    assert {n: tree_state(out / n) for n in states} == states
    assert results[4][0] == 0, results[4][1][-2000:]
    moved = json.loads((out / "moved" / "run.json").read_text())
    assert (moved["status"], moved["name"], moved["resumed"]) == ("finished", "moved", 1)


def test_the_progress_bar_counts_the_run_in_steps(tmp_path):
    """The bar read "Epoch 0/-2" under --max-steps (max_epochs = -1) and "6/4" on a resumed run."""
    import torch
    from lightning.pytorch import LightningModule, Trainer

    from lora_alpha.train.dashboard import step_progress_bar

    class Tiny(LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(2, 1)

        def training_step(self, batch, i):
            return self.w(batch[0]).sum()

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(12, 2)), batch_size=4)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    bar = step_progress_bar()
    trainer = Trainer(max_steps=7, max_epochs=-1, callbacks=[bar], logger=False, enable_checkpointing=False,
                      enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(Tiny())
    assert bar.total_train_batches == 7
    if hasattr(bar, "train_progress_bar_id"):  # rich
        task = next(t for t in bar.progress.tasks if t.id == bar.train_progress_bar_id)
        assert (task.completed, task.total, task.description.strip()) == (7, 7, "Step")
    else:
        assert (bar.train_progress_bar.n, bar.train_progress_bar.total) == (7, 7)
