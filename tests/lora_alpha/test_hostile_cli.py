"""Hostile input to the `signaldrift` command and the run lifecycle: one clear line, and nothing a user owns
is lost or half written (cases of the 315-case hostile run; each failed before its fix)."""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.lora_alpha.app_helpers import ROOT, recorded_config, save_tiny, tree_state, write_csv

_MANY = """
import contextlib, io, json, sys, traceback
from lora_alpha.train.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
        except BaseException:  # a crash of one case is that case's failure, not the batch's
            traceback.print_exc()
            code = "crash"
    results.append([code, [err.getvalue(), out.getvalue()] if sys.argv[2] == "1" else err.getvalue()])
print(json.dumps(results))
"""


def run_cli_many(argvs, cwd, capture_stdout=False):
    """Several invocations in one subprocess (one import of torch): ``[(exit code or "crash", stderr)]``
    (``[(code, (stderr, stdout))]`` with ``capture_stdout``)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore",
               PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", _MANY, json.dumps(argvs), "1" if capture_stdout else "0"], cwd=cwd,
                         env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    return [tuple(r) for r in json.loads(out.stdout.strip().splitlines()[-1])]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    save_tiny("bert", root / "bert")
    write_csv(root / "d.csv", n=40)
    return root


def _args(root, *extra, output=None, name="old"):
    return ["train", "--model", str(root / "bert"), "--data", str(root / "d.csv"), "--targets", "query,value",
            "--rank", "2", "--max-steps", "2", "--batch-size", "8", "--gap-every", "2", "--full-grad-every", "2",
            "--val-every", "0", "--eval-size", "8", "--output", str(output or root / "runs"), "--name", name,
            "--no-progress", *extra]


def _old_run(folder):
    """A finished run as a user has it: record, adapter, checkpoint, logs."""
    (folder / "adapter").mkdir(parents=True)
    (folder / "checkpoints").mkdir()
    (folder / "run.json").write_text(json.dumps({"status": "finished", "name": folder.name}))
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(os.urandom(256))
    (folder / "checkpoints" / "last.ckpt").write_bytes(os.urandom(512))
    (folder / "events.out.tfevents.1.host").write_bytes(os.urandom(64))
    return tree_state(folder)


def _one_line(code, err, message, want_code=2):
    assert code == want_code, (code, err[-2000:])
    lines = [line for line in err.splitlines() if line.startswith("signaldrift: error:")]
    assert len(lines) == 1 and message in lines[0], err[-2000:]
    assert "Traceback" not in err, err[-2000:]


def _each(cases, results):
    """Check every case, then fail naming each one that is wrong (not only the first)."""
    wrong = []
    for (label, message), (code, err) in zip(cases, results):
        try:
            _one_line(code, err, message)
        except AssertionError:
            last = err.strip().splitlines()[-1][:300] if err.strip() else ""
            wrong.append(f"{label}: exit {code}: {last}")
    assert not wrong, "\n".join(wrong)


def test_bad_flags_and_inputs_are_one_line_and_the_overwritten_run_is_untouched(workspace, tmp_path):
    """--seed out of numpy's range and --alpha 1e308 were tracebacks; --max-length above the model's positions
    deleted the old run at step 2; weights without the model's parameters trained from random values and replaced
    it; an empty model folder, a data folder or a device, --max-length 1 and an unwritable --output were unclear."""
    from safetensors.torch import save_file
    import shutil

    out = tmp_path / "runs"
    before = _old_run(out / "old")
    empty = tmp_path / "empty"
    empty.mkdir()
    foreign = tmp_path / "foreign"  # a real config and tokenizer; weights that hold none of the model's parameters
    shutil.copytree(workspace / "bert", foreign)
    save_file({"foo.weight": torch.zeros(2, 2)}, str(foreign / "model.safetensors"))
    folder = tmp_path / "a-folder"
    folder.mkdir()
    cases = [
        (["--seed", "-1"], "--seed must be an int from 0 to 4294967295, got -1"),
        (["--seed", "99999999999"], "--seed must be an int from 0 to 4294967295, got 99999999999"),
        (["--alpha", "1e308"], "--alpha 1e+308 is outside the range a run can use, 1e-300 to 1e+300"),
        (["--max-length", "100000"], "--max-length 100000 is more than model"),
        (["--max-length", "1"], "--max-length must be an int >= 2, got 1"),
        (["--model", str(empty)], f"--model {str(empty)!r} is not a model folder: it holds no config.json"),
        (["--model", str(foreign)], "weights lack"),
        (["--data", str(folder)], f"--data {str(folder)!r} is a folder; pass a CSV or JSONL file"),
        (["--data", "/dev/null"], "--data '/dev/null' is not a regular file (a device, pipe or socket)"),
        (["--val-data", str(folder)], "--val-data"),
    ]
    results = run_cli_many([_args(workspace, "--overwrite", *extra, output=out) for extra, _ in cases], cwd=tmp_path)
    _each([(" ".join(extra), message) for extra, message in cases], results)
    assert "512 positions" in results[3][1] and "pass --max-length 512 or less" in results[3][1]
    assert "random" in results[6][1]
    assert tree_state(out / "old") == before
    assert sorted(p.name for p in out.iterdir()) == ["old"]
    if os.path.isdir("/proc/sys"):  # a folder where no file can be created (it said "No such file")
        (code, err), = run_cli_many([_args(workspace, output="/proc/sys")], cwd=tmp_path)
        _one_line(code, err, "--output '/proc/sys' cannot be written")


def test_find_alpha_checks_the_shared_flags_too(workspace, tmp_path):
    base = ["find-alpha", "--model", str(workspace / "bert"), "--data", str(workspace / "d.csv"), "--targets", "query",
            "--rank", "2", "--batch-size", "8", "--output", str(tmp_path / "fa"), "--no-progress"]
    results = run_cli_many([base + ["--seed", "-1"], base + ["--max-length", "4096"], base + ["--data", "/dev/null"]],
                           cwd=tmp_path)
    _each([("--seed -1", "--seed must be"), ("--max-length 4096", "--max-length 4096 is more than model"),
           ("--data /dev/null", "is not a regular file")], results)
    assert not (tmp_path / "fa").exists()


def test_overwrite_of_a_run_still_training_is_refused_unless_its_process_is_dead(workspace, tmp_path):
    """Both processes used to exit 0 with their files mixed in one folder."""
    from lora_alpha.train.runs import _start_ticks, process_info

    out = tmp_path / "runs"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _old_run(out / "busy")
        record = {"status": "running", "name": "busy", **process_info(), "pid": live.pid,
                  "pid_start": _start_ticks(live.pid)}
        (out / "busy" / "run.json").write_text(json.dumps(record))
        before = tree_state(out / "busy")
        (code, err), = run_cli_many([_args(workspace, "--overwrite", output=out, name="busy")], cwd=tmp_path)
        _one_line(code, err, f"run {out / 'busy'} is still training (pid {live.pid})")
        assert tree_state(out / "busy") == before and sorted(p.name for p in out.iterdir()) == ["busy"]
    finally:
        live.kill()
        live.wait()
    from lora_alpha.train.runs import check_not_running

    check_not_running(out / "busy")  # its process is gone (stale): an overwrite may replace it


def test_overwrite_replaces_only_a_run_and_never_an_input_inside_it(workspace, tmp_path):
    """A folder without run.json (a user's thesis.txt in it) and a --data file inside the old run used to be
    deleted by --overwrite (the second after the run had read it)."""
    out = tmp_path / "runs"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "thesis.txt").write_text("four years of work")
    _old_run(out / "old")
    (out / "old" / "mine.csv").write_bytes((workspace / "d.csv").read_bytes() + b"\"one more row\",pos\n")  # not a copy
    (out / "afile").write_text("not a folder")
    before = tree_state(out)
    data_inside = _args(workspace, "--overwrite", output=out, name="old")
    data_inside[data_inside.index("--data") + 1] = str(out / "old" / "mine.csv")
    val_inside = _args(workspace, "--overwrite", "--val-data", str(out / "old" / "mine.csv"), output=out, name="old")
    results = run_cli_many([_args(workspace, "--overwrite", output=out, name="notes"), data_inside, val_inside,
                            _args(workspace, "--overwrite", output=out, name="afile")], cwd=tmp_path)
    _each([("no run.json", f"{out / 'notes'} holds no run.json: it is not a run folder"),
           ("--data inside", f"--data {str(out / 'old' / 'mine.csv')!r} lies inside {out / 'old'}"),
           ("--val-data inside", f"--val-data {str(out / 'old' / 'mine.csv')!r} lies inside {out / 'old'}"),
           ("a file", f"{out / 'afile'} is a file, not a run folder")], results)
    assert tree_state(out) == before
    # an empty folder holds nothing to lose: it may be replaced
    (out / "empty").mkdir()
    (code, err), = run_cli_many([_args(workspace, "--overwrite", output=out, name="empty")], cwd=tmp_path)
    assert code == 0 and (out / "empty" / "run.json").is_file(), err[-2000:]


def test_causal_lm_on_an_encoder_without_an_lm_head_is_refused(workspace, tmp_path):
    """--task causal-lm on a BERT checkpoint used to train a random LM head on a bidirectional encoder."""
    out = tmp_path / "runs"
    (code, err), = run_cli_many([_args(workspace, "--task", "causal-lm", output=out, name="lm")], cwd=tmp_path)
    _one_line(code, err, f"model {str(workspace / 'bert')!r} has no pretrained language-model head")
    assert not (out / "lm").exists()


def test_warmup_that_outlasts_the_run_is_refused(workspace, tmp_path):
    """--warmup-steps 1000 with --max-steps 2 used to train at a thousandth of --lr without a word."""
    out = tmp_path / "runs"
    results = run_cli_many([_args(workspace, "--warmup-steps", "2", output=out, name="w"),
                            _args(workspace, "--warmup-steps", "1", output=out, name="ok")], cwd=tmp_path)
    _one_line(*results[0], "--warmup-steps 2 is not below --max-steps 2")
    assert results[1][0] == 0 and not (out / "w").exists(), results[1][1][-2000:]


def test_resume_refuses_data_that_changed_since_the_run_started(workspace, tmp_path):
    """Editing --data between an interrupt and --resume used to continue silently on the other data."""
    import hashlib

    out = tmp_path / "runs"
    data = tmp_path / "mine.csv"
    data.write_bytes((workspace / "d.csv").read_bytes())
    args = _args(workspace, output=out, name="r")
    args[args.index("--data") + 1] = str(data)
    (code, err), = run_cli_many([args], cwd=tmp_path)
    assert code == 0, err[-2000:]
    record = json.loads((out / "r" / "run.json").read_text())
    assert record["data_sha256"] == {"data": hashlib.sha256(data.read_bytes()).hexdigest()}
    assert (out / "r" / "checkpoints" / "last.ckpt").is_file()
    record["status"] = "interrupted"
    (out / "r" / "run.json").write_text(json.dumps(record))
    resume = ["train", "--name", "r", "--output", str(out), "--resume", "--no-progress"]
    data.write_text(data.read_text().replace("neg", "pos"))
    before = tree_state(out / "r")
    (code, err), = run_cli_many([resume], cwd=tmp_path)
    _one_line(code, err, f"--data {str(data)!r} is not the file the run started with")
    assert tree_state(out / "r") == before


def test_a_name_that_is_a_symlink_out_of_output_is_refused(workspace, tmp_path):
    """The checkpoint used to be written into the link's target, outside --output."""
    out = tmp_path / "runs"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    state = _old_run(elsewhere)
    (out / "link").symlink_to(elsewhere, target_is_directory=True)
    (out / "dangling").symlink_to(tmp_path / "nowhere", target_is_directory=True)
    results = run_cli_many([_args(workspace, "--overwrite", output=out, name="link"),
                            _args(workspace, "--resume", output=out, name="link"),
                            _args(workspace, output=out, name="dangling")], cwd=tmp_path)
    for code, err in results:
        _one_line(code, err, "is a symbolic link")
        assert "a run folder must be a real folder inside --output" in err
    assert tree_state(elsewhere) == state and not (tmp_path / "nowhere").exists()


def _full_disk(monkeypatch, after=0):
    """torch.save (the checkpoint writer) fails like a full disk, after ``after`` good saves."""
    real, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(f)
        if len(calls) <= after:
            return real(obj, f, *a, **k)
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save)


def test_a_full_disk_at_the_first_checkpoint_keeps_the_overwritten_run(workspace, tmp_path, monkeypatch, capsys):
    """It used to delete the old run (after the first step) and leave the new run.json at `running`, with chained
    tracebacks."""
    from lora_alpha.train.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "runs"
    before = _old_run(out / "old")
    _full_disk(monkeypatch)
    code = main(_args(workspace, "--overwrite", "--checkpoint-every", "1", output=out))
    err = capsys.readouterr().err
    assert code == 1, err[-3000:]
    assert err.count("signaldrift: error:") == 1 and "Traceback" not in err
    assert "No space left on device" in err and f"the existing run {out / 'old'} is as it was" in err, err[-3000:]
    assert tree_state(out / "old") == before
    assert sorted(p.name for p in out.iterdir()) == ["old"]  # no staging, trash or temporary files left


def test_a_full_disk_in_a_new_run_marks_it_failed_with_one_line(workspace, tmp_path, monkeypatch, capsys):
    from lora_alpha.train.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "runs"
    _full_disk(monkeypatch, after=1)  # the first checkpoint is whole, the second fails
    code = main(_args(workspace, "--checkpoint-every", "1", output=out, name="new"))
    err = capsys.readouterr().err
    assert code == 1 and err.count("signaldrift: error:") == 1 and "Traceback" not in err, err[-3000:]
    assert "cannot write checkpoint" in err and "No space left on device" in err and "marked failed at step 2" in err
    info = json.loads((out / "new" / "run.json").read_text())
    assert info["status"] == "failed" and info["steps"] == 2
    ckpt = out / "new" / "checkpoints"
    assert [p.name for p in ckpt.iterdir()] == ["last.ckpt"]  # the whole first checkpoint, no temporary file
    assert torch.load(ckpt / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 1


def test_resume_of_a_hand_edited_record_or_a_damaged_checkpoint_is_one_line(workspace, tmp_path):
    """`"targets": 5` was a traceback; a cut checkpoint said "[Errno 22]", a garbage one showed PyTorch's
    weights-only text."""
    out = tmp_path / "runs"
    config = recorded_config(_args(workspace, output=out))
    runs = {}
    for name, targets, ckpt in (("edited", 5, None), ("cut", "query,value", "cut"), ("garbage", "query,value", "pickle")):
        run = out / name
        (run / "checkpoints").mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({"status": "interrupted", "name": name,
                                                  "config": {**config, "targets": targets}}))
        path = run / "checkpoints" / "last.ckpt"
        torch.save({"state_dict": {"w": torch.zeros(64, 64)}}, path)
        if ckpt == "cut":
            path.write_bytes(path.read_bytes()[:3000])
        elif ckpt == "pickle":
            import pickle

            path.write_bytes(pickle.dumps(subprocess.Popen))  # a pickle, but not of weights
        runs[name] = tree_state(run)
    results = run_cli_many([["train", "--name", n, "--output", str(out), "--resume", "--no-progress"] for n in runs],
                           cwd=tmp_path)
    _each([("targets 5", f"{out / 'edited' / 'run.json'} is damaged: its recorded --targets is 5, not text")]
          + [(name, f"checkpoint {out / name / 'checkpoints' / 'last.ckpt'} cannot be read: it is damaged or not a "
                    "checkpoint of this tool") for name in ("cut", "garbage")], results)
    for code, err in results[1:]:
        assert "Errno" not in err and "eights" not in err, err[-2000:]
    for name, state in runs.items():
        assert tree_state(out / name) == state


def _logged_run(run, steps=4):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run))
    for step in range(1, steps + 1):
        writer.add_scalar("signaldrift/layer.q/drift_ratio", 0.01 * step, step)
    writer.close()
    record = {"status": "finished", "name": run.name, "lora": "LoRA r=2", "test": {"test_acc": 0.75},
              "verdict": {"verdict": "in-regime", "evidence": "2 probes in the band", "suggestion": "keep alpha"},
              "probes": [{"step": 2, "step_gap": 1.3, "verdict": "in-regime"}]}
    (run / "run.json").write_text(json.dumps(record))
    return record


def test_report_on_hand_edited_records_odd_paths_and_a_bad_window(tmp_path):
    """`test_acc: "high"` and `alpha_finder.alphas: 5` were tracebacks; `report RUN/run.json` said the folder did
    not exist; --window 0 and -1 were accepted."""
    run = tmp_path / "r"
    record = _logged_run(run)
    record["test"]["test_acc"] = "high"
    record["alpha_finder"] = {"alphas": 5, "losses": [1.0], "suggestion": 3.0}
    (run / "run.json").write_text(json.dumps(record))
    clean = tmp_path / "clean"
    _logged_run(clean)
    results = run_cli_many([["report", str(run)], ["report", str(clean / "run.json")],
                            ["report", str(clean), "--window", "0"], ["report", str(clean), "--window", "-1"],
                            ["report", str(next(clean.glob("events.out.tfevents.*")))]],
                           cwd=tmp_path, capture_stdout=True)
    (code, (err, text)), (code2, (err2, text2)) = results[:2]
    wrong = []
    if code != 0 or "Traceback" in err or "run.json's alpha_finder is damaged" not in text:
        wrong.append(f"alphas 5: exit {code}: {err[-300:]}")
    if "test_acc is 'high', not a number" not in text:
        wrong.append(f"test_acc 'high' is not named: {text[:300]}")
    if code2 != 0 or "Per-layer diagnosis" not in text2:
        wrong.append(f"RUN/run.json: exit {code2}: {err2[-300:]}")
    try:
        _each([("--window 0", "--window must be a positive int, got 0"),
               ("--window -1", "--window must be a positive int, got -1"),
               ("an event file", "is a file; give the run's folder")], [(c, e) for c, (e, _) in results[2:]])
    except AssertionError as failed:
        wrong.append(str(failed))
    assert not wrong, "\n".join(wrong)


def test_report_on_empty_event_files_uses_run_json_and_keeps_report_png(tmp_path):
    """It printed an empty table and "no probe ran" with no INCOMPLETE line, and replaced report.png."""
    run = tmp_path / "r"
    _logged_run(run)
    for f in run.glob("events.out.tfevents.*"):
        f.write_bytes(b"")
    (run / "report.png").write_bytes(b"a good report")
    (code, (err, text)), = run_cli_many([["report", str(run)]], cwd=tmp_path, capture_stdout=True)
    assert code == 0 and "Traceback" not in err, err[-2000:]
    assert "INCOMPLETE: 1 event file(s) were cut short or damaged" in text and "empty: 0 bytes" in text
    assert "Verdict: in-regime (from run.json; the event files hold no verdict)" in text
    assert "probe at step 2: step_gap 1.3" in text and "no optimization-gap probe ran" not in text
    assert "report.png not written" in text and (run / "report.png").read_bytes() == b"a good report"
    assert "is empty (0 bytes)" in err


def test_report_to_a_full_stdout_is_one_line(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    run = tmp_path / "r"
    _logged_run(run)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore", PYTHONPATH=str(ROOT))
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-c", "import sys; from lora_alpha.train.cli import main; "
                               "sys.exit(main())", "report", str(run)], stdout=full, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=tmp_path, timeout=240)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "cannot write the report to standard output: No space left on device" in proc.stderr


def _popen(code, args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore",
               PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _catches(pid, sig):
    """Whether the process has a handler for ``sig`` (SigCgt in /proc/PID/status)."""
    try:
        status = open(f"/proc/{pid}/status").read()
    except OSError:
        return False
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(mask & (1 << (sig - 1)))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux's /proc")
def test_sigterm_while_the_command_starts_says_so_and_writes_nothing(workspace, tmp_path):
    """SIGTERM in the first seconds (while torch and Lightning load) ended `train` with 143 and not a word."""
    entry = "import sys, signaldrift_cli; sys.exit(signaldrift_cli.main())"  # the `signaldrift` script
    proc = _popen(entry, _args(workspace, output=tmp_path / "runs"), tmp_path)
    deadline = time.time() + 60
    while not _catches(proc.pid, signal.SIGTERM) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)  # the handler is there at once; the imports take seconds more
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err[-2000:]
    assert "SIGTERM before" in err and "nothing was written" in err and "Traceback" not in err, err[-2000:]
    assert not (tmp_path / "runs").exists()


def test_sigterm_to_find_alpha_keeps_the_finished_trials_like_ctrl_c(workspace, tmp_path):
    """SIGTERM used to kill find-alpha and throw the finished trials away (SIGINT kept them)."""
    code = ("import os, signal, sys\n"
            "from lora_alpha.train import finder\n"
            "real, done = finder._run_trial, []\n"
            "def trial(*a, **k):\n"
            "    if len(done) == 2:\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"  # a real signal, after two whole trials
            "    done.append(1)\n"
            "    return real(*a, **k)\n"
            "finder._run_trial = trial\n"
            "from lora_alpha.train.cli import main\n"
            "sys.exit(main())\n")
    out_dir = tmp_path / "fa"
    proc = _popen(code, ["find-alpha", "--model", str(workspace / "bert"), "--data", str(workspace / "d.csv"),
                         "--targets", "query", "--rank", "2", "--batch-size", "8", "--steps", "2", "--eval-batches",
                         "1", "--alphas", "1,8,64,512", "--output", str(out_dir), "--no-progress"], tmp_path)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err[-3000:]
    assert "interrupted (SIGTERM): the suggestion uses the trials that finished" in out and "Traceback" not in err
    data = json.loads((out_dir / "find_alpha.json").read_text())
    assert data["interrupted"] is True and sum(1 for l in data["losses"] if l is not None) == 2  # null: not run


def test_resume_refuses_a_checkpoint_whose_head_has_another_shape(tmp_path):
    """A checkpoint with a 3-class head resumed into a 2-class run used to end in load_state_dict's traceback."""
    from lora_alpha.train.cli import _check_checkpoint
    from lora_alpha.train.errors import UsageError

    class Tiny(torch.nn.Module):
        def __init__(self, classes):
            super().__init__()
            self.lora_A = torch.nn.Parameter(torch.zeros(2, 4))
            self.classifier = torch.nn.Linear(4, classes)

    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": Tiny(3).state_dict()}, path)
    _check_checkpoint(path, Tiny(3))  # the same shapes pass
    with pytest.raises(UsageError, match=r"classifier.weight has shape \(3, 4\) in the checkpoint, \(2, 4\) in the run"):
        _check_checkpoint(path, Tiny(2))


def test_an_output_that_is_a_dangling_link_is_refused_before_any_work(tmp_path):
    """train and find-alpha used to end in mkdir's FileExistsError traceback (find-alpha after all its trials)."""
    from lora_alpha.train.runs import check_output_dir
    from lora_alpha.train.errors import UsageError

    (tmp_path / "dangl").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UsageError, match=r"--output '.*dangl' is a symbolic link to '.*nowhere', which does not exist"):
        check_output_dir(tmp_path / "dangl")
    (tmp_path / "there").mkdir()
    (tmp_path / "ok").symlink_to(tmp_path / "there")
    assert check_output_dir(tmp_path / "ok") == tmp_path / "ok"
