"""The run lifecycle: nothing a user owns is lost, signals stop at a step, resume continues exactly."""
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.lora_alpha.app_helpers import ROOT, recorded_config, run_cli_many, save_tiny, tree_state, write_csv, write_jsonl


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("life")
    save_tiny("bert", root / "bert")
    write_csv(root / "d.csv", n=40)
    return root


def _args(root, *extra, output=None):
    return ["train", "--model", str(root / "bert"), "--data", str(root / "d.csv"), "--targets", "query,value",
            "--rank", "2", "--max-steps", "4", "--batch-size", "8", "--gap-every", "2", "--full-grad-every", "2",
            "--output", str(output or root / "runs"), "--no-progress", *extra]


def _old_run(folder):
    """A finished run as a user has it: record, adapter, checkpoint, logs."""
    (folder / "adapter").mkdir(parents=True)
    (folder / "checkpoints").mkdir()
    (folder / "run.json").write_text(json.dumps({"status": "finished", "name": folder.name}))
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(os.urandom(256))
    (folder / "checkpoints" / "last.ckpt").write_bytes(os.urandom(512))
    (folder / "events.out.tfevents.1.host").write_bytes(os.urandom(64))
    return tree_state(folder)


def test_names_that_are_not_one_folder_are_refused_and_nothing_is_deleted(workspace, tmp_path):
    out = tmp_path / "runs"
    kept = _old_run(out / "kept")
    outside = tmp_path / "x"
    outside_state = _old_run(outside)
    bad = ["a/..", "../x", str(tmp_path / "abs"), ".", "..", "a b", "a/b", ""]
    results = run_cli_many([_args(workspace, "--name", n, "--overwrite", output=out) for n in bad], cwd=tmp_path)
    for name, (code, err) in zip(bad, results):
        assert code == 2, (name, err)
        assert f"--name {name!r} is not a run name" in err and err.count("signaldrift: error:") == 1, err
    assert tree_state(out / "kept") == kept and tree_state(outside) == outside_state
    assert sorted(p.name for p in out.iterdir()) == ["kept"]


def test_an_overwrite_that_fails_before_training_leaves_the_old_run_byte_identical(workspace, tmp_path):
    out = tmp_path / "runs"
    before = _old_run(out / "old")
    val = tmp_path / "val.csv"
    val.write_text("text,label\nfine,maybe\n")
    long_prompts = write_jsonl(tmp_path / "lm.jsonl", [{"prompt": "word " * 400, "completion": "end"}] * 4)
    cases = {
        "labels": (["--val-data", str(val)], "val labels ['maybe'] do not occur"),
        "tokenization": (["--task", "causal-lm", "--data", str(long_prompts), "--max-length", "8"],
                         "no record has a trainable token after tokenization"),
        "rank": (["--rank", "64"], "rank 64 is larger than this layer allows"),
        "strategy": (["--strategy", "warp-drive"], "Lightning rejected the trainer settings"),
        "resume flag": (["--resume"], "--resume and --overwrite contradict each other"),
    }
    results = run_cli_many([_args(workspace, "--name", "old", "--overwrite", *extra, output=out)
                            for extra, _ in cases.values()], cwd=tmp_path)
    for (case, (_, message)), (code, err) in zip(cases.items(), results):
        assert code == 2 and message in err, (case, err[-1500:])
        assert "Traceback" not in err
    assert tree_state(out / "old") == before
    assert sorted(p.name for p in out.iterdir()) == ["old"]  # no staging folder left behind


def test_run_dir_swap_abort_restores_and_commit_removes_the_old_run(tmp_path):
    from lora_alpha.train.errors import UsageError
    from lora_alpha.train.runs import RunDir

    before = _old_run(tmp_path / "r")
    target = RunDir.create(tmp_path, "r", overwrite=True)
    (target.build_path / "run.json").write_text("{}")
    assert tree_state(tmp_path / "r") == before  # staged beside it, not in it
    target.swap_in()
    assert json.loads((tmp_path / "r" / "run.json").read_text()) == {}
    target.abort()
    assert tree_state(tmp_path / "r") == before and sorted(p.name for p in tmp_path.iterdir()) == ["r"]

    target = RunDir.create(tmp_path, "r", overwrite=True)
    (target.build_path / "run.json").write_text("{}")
    assert not target.replaced
    target.swap_in()
    assert target.replaced  # the interrupted run's message says the old run goes at the first checkpoint (K03)
    target.commit()
    assert list(tree_state(tmp_path / "r")) == ["run.json"] and (tmp_path / "r" / "run.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]
    with pytest.raises(UsageError, match="exists"):
        RunDir.create(tmp_path, "r", overwrite=False)  # exclusive: never deletes what is there


def test_default_names_are_unique_within_a_second():
    from lora_alpha.train.runs import check_run_name, default_run_name

    names = {default_run_name() for _ in range(200)}
    assert len(names) == 200
    for n in names:
        assert check_run_name(n) == n


def test_atomic_write_keeps_the_old_file_on_failure_and_writes_readable_files(tmp_path):
    from lora_alpha.files import atomic_write, atomic_write_json

    path = tmp_path / "run.json"
    atomic_write_json(path, {"a": 1})
    old_umask = os.umask(0o022)
    try:
        atomic_write_json(path, {"a": 2})
    finally:
        os.umask(old_umask)
    assert json.loads(path.read_text()) == {"a": 2} and path.stat().st_mode & 0o777 == 0o644

    def crash(tmp):
        tmp.write_text('{"a": 3, "half')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, crash)
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_inputs_that_do_not_apply_or_are_not_writable_are_refused_before_the_model_loads(workspace, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    lm = write_jsonl(tmp_path / "lm.jsonl", [{"text": "to be or not to be"}] * 4)
    cases = [
        (["--output", str(a_file)], "is a file; pass a folder"),
        (["--output", str(a_file / "sub")], "which is a file; pass a folder"),
        (["--alpha", "0"], "--alpha must be a finite number > 0 (omit it for the rule's default), got 0.0"),
        (["--epochs", "3"], "--epochs does not apply unless --max-steps -1"),
        (["--task", "causal-lm", "--data", str(lm), "--label-column", "y"], "--label-column does not apply to --task causal-lm"),
        (["--task", "causal-lm", "--data", str(lm), "--head-lr", "1e-3"], "--head-lr does not apply to --task causal-lm"),
        (["--data", "rotten-tomatoes", "--val-data", str(lm)], "--val-data does not apply to the embedded"),
        (["--ra", "4"], "unrecognized arguments: --ra"),  # no abbreviations: every flag is what it says
    ]
    results = run_cli_many([_args(workspace, "--name", f"c{i}", *extra, output=tmp_path / "runs")
                            for i, (extra, _) in enumerate(cases)], cwd=tmp_path)
    for (extra, message), (code, err) in zip(cases, results):
        assert code == 2 and message in err, (extra, err[-1500:])
        assert "Loading weights" not in err  # refused before the model was read
    assert not (tmp_path / "runs").exists()
    fa = run_cli_many([["find-alpha", "--model", str(workspace / "bert"), "--data", str(workspace / "d.csv"),
                        "--output", str(a_file), "--no-progress"]], cwd=tmp_path)
    assert fa[0][0] == 2 and "is a file; pass a folder" in fa[0][1]


def test_model_folder_without_tokenizer_or_with_truncated_weights_gets_one_line(workspace, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(workspace / "bert" / f, bare / f)
    cut = tmp_path / "cut"
    shutil.copytree(workspace / "bert", cut)
    weights = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    results = run_cli_many([_args(workspace, "--name", "a", "--model", str(bare), output=tmp_path / "runs"),
                            _args(workspace, "--name", "b", "--model", str(cut), output=tmp_path / "runs")], cwd=tmp_path)
    assert results[0][0] == 2 and "has only 5 tokens; the model folder needs its tokenizer files" in results[0][1]
    assert results[1][0] == 2 and f"cannot load model {str(cut)!r}" in results[1][1]
    assert all("Traceback" not in err for _, err in results)
    assert not (tmp_path / "runs").exists()


def _popen(args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore",
               PYTHONPATH=str(ROOT))
    # A suite started in the background inherits SIGINT as ignored, and under nohup SIGHUP; give the child the
    # defaults, as in a terminal.
    def as_in_a_terminal():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)

    return subprocess.Popen([sys.executable, "-c", "import sys; from lora_alpha.train.cli import main; sys.exit(main())",
                             *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_in_a_terminal)


def _stop_after_checkpoint(proc, ckpt, sig, past_step=0):
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file():
            try:
                if torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] > past_step:
                    break
            except Exception:  # noqa: BLE001 - never half-written (atomic), but be patient anyway
                pass
        time.sleep(0.2)
    proc.send_signal(sig)
    try:
        return proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"the run did not stop after {sig!r}") from None


def test_ctrl_c_then_sigterm_stop_at_a_step_and_the_printed_resume_command_works(workspace):
    from transformers import AutoModelForSequenceClassification

    from lora_alpha import load_adapter

    args = _args(workspace, "--name", "cc", "--checkpoint-every", "2")
    args[args.index("--max-steps") + 1] = "100000"
    run = workspace / "runs" / "cc"
    ckpt = run / "checkpoints" / "last.ckpt"
    out, err = _stop_after_checkpoint(_popen(args, workspace), ckpt, signal.SIGINT)
    assert "Traceback" not in err and "is marked as interrupted" in err, err[-3000:]
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted" and info["signal"] == "SIGINT" and info["steps"] >= 2
    # The stop checkpoint is the step the run stopped at, not an older periodic one.
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == info["steps"]
    load_adapter(AutoModelForSequenceClassification.from_pretrained(workspace / "bert"), run / "adapter")
    for f in (run / "run.json", ckpt, run / "adapter" / "adapter_model.safetensors"):
        assert f.stat().st_mode & 0o044 == 0o044, f  # readable like any other output, not 0600

    printed = err.split("resume with: ")[1].split(")")[0]
    words = shlex.split(printed)
    assert words[:2] == ["signaldrift", "train"] and "--model" not in words  # name and output are enough
    proc = _popen(words[1:], workspace)
    out, err2 = _stop_after_checkpoint(proc, ckpt, signal.SIGTERM, past_step=info["steps"])
    assert proc.returncode == 143, err2[-3000:]
    again = json.loads((run / "run.json").read_text())
    assert again["status"] == "interrupted" and again["signal"] == "SIGTERM" and again["resumed"] == 1
    assert again["steps"] > info["steps"] and again["config"]["max_steps"] == 100000
    # S03 of the fourth review: SIGHUP (the terminal closed) ended the run without a checkpoint or a word
    proc = _popen(words[1:], workspace)
    out, err3 = _stop_after_checkpoint(proc, ckpt, signal.SIGHUP, past_step=again["steps"])
    assert proc.returncode == 129 and "Traceback" not in err3, err3[-3000:]
    third = json.loads((run / "run.json").read_text())
    assert (third["status"], third["signal"], third["resumed"]) == ("interrupted", "SIGHUP", 2)
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == third["steps"] > again["steps"]


def test_resume_refuses_contradicting_flags_truncated_and_foreign_checkpoints(workspace, tmp_path):
    out = tmp_path / "runs"
    run = out / "r"
    run.mkdir(parents=True)
    (run / "checkpoints").mkdir()
    config = {k: v for k, v in zip(_args(workspace)[1::2], _args(workspace)[2::2])}
    record = {"status": "interrupted", "name": "r", "config": recorded_config(_args(workspace, output=out))}
    (run / "run.json").write_text(json.dumps(record))
    (run / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    assert config["--rank"] == "2"
    results = run_cli_many([
        _args(workspace, "--name", "r", "--resume", "--rank", "4", output=out),
        _args(workspace, "--name", "r", "--resume", output=out),
    ], cwd=tmp_path)
    assert results[0][0] == 2 and "--rank 4 contradicts the run's recorded --rank 2" in results[0][1]
    assert results[1][0] == 2 and f"checkpoint {run / 'checkpoints' / 'last.ckpt'} cannot be read" in results[1][1]
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"


from lora_alpha.train.cli import _lifecycle_callback as _REAL_LIFECYCLE  # noqa: E402


class _Recorder:
    """Wraps the command's lifecycle callback: records each step's loss, sends SIGTERM after step ``stop_at``."""

    def __init__(self, stop_at=None):
        self.losses, self.stop_at = {}, stop_at

    def install(self, monkeypatch):
        from lora_alpha.train import cli

        real = _REAL_LIFECYCLE
        rec = self

        def factory(stop, last_ckpt, checkpoint_io=None):
            cb = real(stop, last_ckpt, checkpoint_io)
            inner = cb.on_train_batch_end

            def on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx):
                rec.losses[trainer.global_step] = float(outputs["loss"])
                if trainer.global_step == rec.stop_at:
                    os.kill(os.getpid(), signal.SIGTERM)
                inner(trainer, pl_module, outputs, batch, batch_idx)

            cb.on_train_batch_end = on_train_batch_end
            return cb

        monkeypatch.setattr(cli, "_lifecycle_callback", factory)


def test_a_resumed_run_equals_the_uninterrupted_one(workspace, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from lora_alpha.train.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_csv(tmp_path / "d.csv", n=30)  # 27 training rows: 4 batches per epoch, so 7 steps cross an epoch
    base = ["--data", str(tmp_path / "d.csv"), "--max-steps", "7", "--checkpoint-every", "0", "--lr", "1e-2"]
    full = _Recorder()
    full.install(monkeypatch)
    assert main(_args(workspace, "--name", "full", *base, output=tmp_path)) == 0
    part = _Recorder(stop_at=3)
    part.install(monkeypatch)
    assert main(_args(workspace, "--name", "part", *base, output=tmp_path)) == 143
    resumed = _Recorder()
    resumed.install(monkeypatch)
    assert main(["train", "--name", "part", "--output", str(tmp_path), "--resume", "--no-progress"]) == 0
    assert sorted(part.losses) == [1, 2, 3] and sorted(resumed.losses) == [4, 5, 6, 7]
    for step, loss in {**part.losses, **resumed.losses}.items():
        assert abs(loss - full.losses[step]) <= 1e-6, (step, loss, full.losses[step])
    a = load_file(str(tmp_path / "full" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "part" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    info = json.loads((tmp_path / "part" / "run.json").read_text())
    assert info["status"] == "finished" and info["resumed"] == 1 and info["steps"] == 7


def test_report_says_stale_for_a_dead_process_and_refuses_a_corrupt_record(workspace, tmp_path):
    from lora_alpha.train.runs import live_status, process_info

    dead = subprocess.Popen(["true"])
    dead.wait()
    me = process_info()
    assert live_status({"status": "running", **me}) == "running"
    assert live_status({"status": "running", **me, "pid": dead.pid}) == "stale"
    assert live_status({"status": "running", **me, "pid_start": me["pid_start"] + 1}) == "stale"  # pid reused
    assert live_status({"status": "running", **me, "host": "elsewhere"}) == "running"  # cannot tell from here
    corrupt = tmp_path / "c"
    corrupt.mkdir()
    (corrupt / "run.json").write_text('{"status": "runn')
    listed = tmp_path / "l"
    listed.mkdir()
    (listed / "run.json").write_text("[1, 2]")
    results = run_cli_many([["report", str(corrupt)], ["report", str(listed)]], cwd=tmp_path)
    assert results[0][0] == 2 and f"{corrupt / 'run.json'} is corrupt (not JSON" in results[0][1]
    assert results[1][0] == 2 and f"{listed / 'run.json'} is corrupt: expected a JSON object" in results[1][1]
    assert all(err.count("signaldrift: error:") == 1 and "Traceback" not in err for _, err in results)


def test_report_shows_a_dead_run_as_stale_and_a_damaged_event_file_as_incomplete(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    dead = subprocess.Popen(["true"])
    dead.wait()
    from lora_alpha.train.runs import process_info

    runs = {}
    for name in ("stale", "cut"):
        run = tmp_path / name
        writer = SummaryWriter(str(run))
        for step in range(1, 21):
            writer.add_scalar("signaldrift/layer.q/drift_ratio", 0.01 * step, step)
        writer.close()
        (run / "run.json").write_text(json.dumps({"status": "running", "name": name, **process_info(),
                                                   "pid": dead.pid}))
        runs[name] = run
    events = next(runs["cut"].glob("events.out.tfevents.*"))
    data = events.read_bytes()
    events.write_bytes(data[: len(data) - 30])
    (stale, stale_err), (cut, cut_err) = run_cli_many([["report", str(runs["stale"])], ["report", str(runs["cut"])]],
                                                      cwd=tmp_path, capture_stdout=True)
    assert stale == 0 and "Run stale: stale (its process" in stale_err[1] and "INCOMPLETE" not in stale_err[1]
    assert cut == 0 and "INCOMPLETE: 1 event file(s) were cut short or damaged" in cut_err[1]
    assert f"signaldrift: warning: event file {events}" in cut_err[0]


def test_resume_from_a_checkpoint_of_another_rank_names_the_file_and_the_mismatch(workspace, tmp_path, monkeypatch):
    from lora_alpha.train.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(_args(workspace, "--name", "r", "--max-steps", "2", "--checkpoint-every", "1", output=tmp_path)) == 0
    record_path = tmp_path / "r" / "run.json"
    record = json.loads(record_path.read_text())
    record.update(status="interrupted")
    record["config"]["rank"] = 4  # the record now says rank 4; the checkpoint holds rank-2 factors
    record_path.write_text(json.dumps(record))
    before = record_path.read_bytes()
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["train", "--name", "r", "--output", str(tmp_path), "--resume", "--no-progress"])
    ckpt = tmp_path / "r" / "checkpoints" / "last.ckpt"
    assert code == 2, err.getvalue()
    assert f"checkpoint {ckpt} does not match this run:" in err.getvalue() and "(2, " in err.getvalue()
    assert record_path.read_bytes() == before  # still `interrupted`, untouched


def _old_finished_run(workspace, out, monkeypatch):
    from lora_alpha.train.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(_args(workspace, "--name", "old", "--max-steps", "1", "--checkpoint-every", "1", output=out)) == 0
    return tree_state(out / "old")


@pytest.mark.parametrize("when", ["while the model loads", "after the swap, before the first step"])
def test_a_signal_before_the_first_step_leaves_the_old_run_as_it_was(workspace, tmp_path, monkeypatch, capsys, when):
    """Review findings: Ctrl-C during loading was lost, and a signal after the swap but before step 1
    still deleted the overwritten run."""
    from lora_alpha.train import cli, runs

    out = tmp_path / "runs"
    before = _old_finished_run(workspace, out, monkeypatch)
    capsys.readouterr()
    if when == "while the model loads":
        real = cli._module

        def loading(*a, **k):
            os.kill(os.getpid(), signal.SIGINT)  # arrives during the build: noted, acted on at the next check
            return real(*a, **k)

        monkeypatch.setattr(cli, "_module", loading)
    else:
        real_swap = runs.RunDir.swap_in

        def swap_then_term(self):
            real_swap(self)
            os.kill(os.getpid(), signal.SIGTERM)

        monkeypatch.setattr(runs.RunDir, "swap_in", swap_then_term)
    code = cli.main(_args(workspace, "--name", "old", "--overwrite", "--max-steps", "50", output=out))
    err = capsys.readouterr().err
    assert code == (130 if when == "while the model loads" else 143), err[-2000:]
    assert "Traceback" not in err and err.count("signaldrift: ") == 1, err[-2000:]
    assert "before" in err and ("nothing was written or replaced" in err or "is unchanged" in err), err[-2000:]
    assert tree_state(out / "old") == before
    assert sorted(p.name for p in out.iterdir()) == ["old"]  # no staging or trash folders left


def test_an_overwritten_run_folder_is_readable_and_resume_works_from_another_folder(workspace, tmp_path,
                                                                                      monkeypatch, capsys):
    import shutil

    from lora_alpha.train.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shutil.copytree(workspace / "bert", tmp_path / "bert")
    write_csv(tmp_path / "d.csv", n=40)
    monkeypatch.chdir(tmp_path)
    rel = ["train", "--model", "bert", "--data", "d.csv", "--targets", "query,value", "--rank", "2",
           "--batch-size", "8", "--max-steps", "5", "--checkpoint-every", "1", "--output", "runs", "--no-progress"]
    assert main(rel + ["--name", "r"]) == 0
    old_umask = os.umask(0o022)
    from lora_alpha.train import cli

    _Recorder(stop_at=3).install(monkeypatch)  # the overwrite stops after step 3, past its first checkpoint
    try:
        assert main(rel + ["--name", "r", "--overwrite"]) == 143
    finally:
        os.umask(old_umask)
        monkeypatch.setattr(cli, "_lifecycle_callback", _REAL_LIFECYCLE)
    assert (tmp_path / "runs" / "r").stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0700
    record = json.loads((tmp_path / "runs" / "r" / "run.json").read_text())
    assert record["config"]["model"] == str(tmp_path / "bert") and record["config"]["data"] == str(tmp_path / "d.csv")
    assert (record["status"], record["steps"]) == ("interrupted", 3)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    # A relative path given again that names the same file agrees with the record.
    assert main(["train", "--name", "r", "--output", str(tmp_path / "runs"), "--resume", "--no-progress",
                 "--data", "../d.csv"]) == 0, capsys.readouterr().err[-2000:]
    assert json.loads((tmp_path / "runs" / "r" / "run.json").read_text())["steps"] == 5


def test_report_on_a_folder_of_runs_asks_for_one_run(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps({"status": "finished", "name": name}))
    (code, err), = run_cli_many([["report", str(tmp_path)]], cwd=tmp_path)
    assert code == 2 and f"{tmp_path} is not a run folder (no run.json); it holds 2 runs: pass a run folder, e.g. {tmp_path / 'a'}" in err
    assert not (tmp_path / "report.png").exists()


def test_json_files_are_strict_json_with_null_for_non_finite_numbers(tmp_path):
    """find_alpha.json held bare Infinity (a diverged trial), which strict JSON readers (jq, JSON.parse) refuse."""
    from lora_alpha.files import atomic_write_json

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    path = atomic_write_json(tmp_path / "x.json", {"losses": [0.5, float("inf")], "z": float("nan"),
                                                   "nested": {"d": (float("-inf"), 2)}, "n": 3, "s": "inf"})
    data = json.loads(path.read_text(), parse_constant=refuse)
    assert data == {"losses": [0.5, None], "z": None, "nested": {"d": [None, 2]}, "n": 3, "s": "inf"}
