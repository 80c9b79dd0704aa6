"""SignalDriftEngine.latest: the model-level median of the last five measuring steps by default,
steps without the metric left out (fast, no Trainer)."""
from callbacks.engine import SignalDriftEngine
from callbacks.measurements import layer_tag


def test_latest_is_the_median_of_the_last_five_steps_that_measured_it():
    history = {}
    for step in range(8):
        tags = {layer_tag("fc1", "delta_norm"): float(step), layer_tag("fc2", "delta_norm"): float(step) + 2.0,
                layer_tag("head", "delta_norm"): 100.0}  # median of three layers: step + 2
        if step == 6:  # a step that did not measure it
            tags = {layer_tag("fc1", "drift_ratio"): 0.5}
        history[str(step)] = tags
    e = SignalDriftEngine()
    e.load_state_dict({"history": history})
    assert e.latest("delta_norm") == [4.0, 5.0, 6.0, 7.0, 9.0]
    assert e.latest("delta_norm", window=2) == [7.0, 9.0]
    assert e.latest("drift_ratio") == [0.5]
    assert e.latest("stable_rank") == []
