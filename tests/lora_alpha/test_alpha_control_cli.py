"""`signaldrift train --alpha-control`: the moves reach run.json, the summary, the saved adapter, the report and
--resume; a run with no probe in the first quarter is refused before anything is written."""
import json

import pytest

from callbacks import control as control_module
from lora_alpha.train.cli import main
from signaldrift.control import AlphaMove
from tests.lora_alpha.test_hostile_cli import workspace  # noqa: F401 - the fixture: a tiny BERT and a CSV


def _args(root, *extra):
    return ["train", "--model", str(root / "bert"), "--data", str(root / "d.csv"), "--targets", "query,value",
            "--rank", "2", "--alpha", "0.5", "--batch-size", "8", "--full-grad-every", "2", "--val-every", "0",
            "--output", str(root / "runs"), "--no-progress", "--alpha-control", *extra]


def test_a_move_is_recorded_saved_and_reported(workspace, monkeypatch, capsys):
    # the rule itself is tested in tests/callbacks/test_control.py; here the first probe is made to move by 4
    calls = []

    def forced(k_star, gain_z, help_z, verdict, step, total_steps, moves, total, peak, rules):
        calls.append(step)
        return AlphaMove(4.0, "forced") if moves == 0 else AlphaMove(None, "once")

    monkeypatch.setattr(control_module, "alpha_move", forced)
    assert main(_args(workspace, "--max-steps", "8", "--gap-every", "2", "--name", "moved")) == 0
    out = capsys.readouterr().out
    run = workspace / "runs" / "moved"
    info = json.loads((run / "run.json").read_text())
    assert calls == [2, 4, 6] and [m["step"] for m in info["alpha_control"]["moves"]] == [2]
    move = info["alpha_control"]["moves"][0]
    assert move["old_alpha"] == 0.5 and move["new_alpha"] == pytest.approx(2.0) and move["factor"] == 4.0
    assert info["alpha_control"]["final_alpha"] == pytest.approx(2.0)
    assert info["config"]["alpha_control"] is True and info["config"]["alpha"] == 0.5  # the start stays the config
    assert "alpha control         1 move(s): step 2: 0.5 -> 2" in out
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["lora_alpha"] == pytest.approx(2.0)  # the adapter carries the final alpha
    assert main(["report", str(run)]) == 0
    rep = capsys.readouterr().out
    assert "Alpha moves (alpha control)\n  step 2: 0.5 -> 2 (x 4)" in rep


def test_no_probe_in_the_first_quarter_is_refused_before_writing(workspace, capsys):
    assert main(_args(workspace, "--max-steps", "40", "--gap-every", "11", "--name", "late")) == 2
    err = capsys.readouterr().err
    assert ("--alpha-control moves alpha only at probes in the first 25% of the run (steps 1 to 10 of --max-steps 40); "
            "--gap-every 11 puts no probe there: pass --gap-every 10 or less") in err
    assert not (workspace / "runs" / "late").exists()
    assert main(_args(workspace, "--max-steps", "3", "--gap-every", "1", "--name", "short")) == 2
    assert "train at least 4 steps" in capsys.readouterr().err
    assert main([*_args(workspace, "--max-steps", "8", "--gap-every", "2", "--name", "big"), "--alpha", "1e299"]) == 2
    assert "may raise alpha 512-fold; --alpha 1e+299" in capsys.readouterr().err
