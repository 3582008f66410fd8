"""Metrics file, plots, TensorBoard, and that every module imports."""

import importlib
import json
import pkgutil

import posttrain
from conftest import run_cli
from posttrain.track import Tracker, plot_metrics, read_metrics


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(posttrain.__path__, "posttrain.") if m.name != "posttrain.__main__"]
    assert len(names) >= 15
    for name in names:
        importlib.import_module(name)


def test_resume_truncates_metrics_logged_after_the_checkpoint(tmp_path):
    t = Tracker(tmp_path, total_steps=10, progress=False)
    for step in range(1, 8):
        t.log(step, {"loss": 1.0 / step})
    t.close()
    t = Tracker(tmp_path, total_steps=10, start_step=5, progress=False)
    t.log(6, {"loss": 0.5})
    t.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]
    assert read_metrics(tmp_path)[-1]["loss"] == 0.5


def test_tensorboard_sink_writes_events(tmp_path):
    t = Tracker(tmp_path, total_steps=2, report_to=["tensorboard"], progress=False)
    t.log(1, {"loss": 2.0, "eval/accuracy": 0.5})
    t.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert acc.Scalars("loss")[0].value == 2.0 and acc.Scalars("eval/accuracy")[0].step == 1


def test_plot_command_draws_one_png_per_metric(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "time": s, "loss": 3.0 / s, "eval/accuracy": s / 10}) + "\n" for s in range(1, 6)))
    proc = run_cli("plot", str(tmp_path), check=True)
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == ["eval_accuracy.png", "loss.png"], proc.stdout
    assert all((tmp_path / "plots" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert plot_metrics([{"step": 1, "loss": float("nan")}], tmp_path / "empty") == []


def test_plot_of_a_non_run_exits_2(tmp_path):
    proc = run_cli("plot", str(tmp_path))
    assert proc.returncode == 2 and "metrics.jsonl" in proc.stderr
