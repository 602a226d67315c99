"""train.py's runs of the thesis systems (thesis_runs.py): --neurogenesis, --dyno, --equinas,
end to end on small generated Fashion-MNIST files."""
import json

import pytest
import torch

from harness import data
import train
from conftest import make_fake_mnist


@pytest.fixture
def fake(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST", str(tmp_path / "nowhere"))
    root = str(tmp_path / "d")
    make_fake_mnist(root, n_train=96, n_test=48)
    return ["--data", root, "--save", str(tmp_path / "runs")]


def test_neurogenesis_run_stops_and_resumes_to_the_uninterrupted_result(tmp_path, fake):
    """Catches: --stop_after ignored, a resumed growing run restarting (widths, accuracy and the
    grown weights differ from an uninterrupted run), no checkpoint between epochs."""
    base = ["--neurogenesis", "NORTH-Random", "--epochs", "3", "--batch_size", "32",
            "--widths", "4,4", "--max_width", "32"] + fake
    train.main(base + ["--run_name", "full"])
    train.main(base + ["--run_name", "cut", "--stop_after", "1"])
    cut = tmp_path / "runs" / "cut"
    assert torch.load(cut / "checkpoint.pt", weights_only=False)["state"]["epoch"] == 1
    assert not (cut / "result.json").exists()
    train.main(["--resume", str(cut)])
    full = json.loads((tmp_path / "runs" / "full" / "result.json").read_text())
    resumed = json.loads((cut / "result.json").read_text())
    assert resumed["widths"] == full["widths"] and resumed["test_accuracy"] == full["test_accuracy"]
    assert [e["widths"] for e in resumed["epochs"]] == [e["widths"] for e in full["epochs"]]
    assert (cut / "widths.png").exists()


@pytest.mark.slow
def test_growth_schedule_presets_grow_to_the_maximum_width(tmp_path, fake):
    """Catches: --growth_schedule reaching Neurogenesis without final widths (it raised), or a
    preset that stops short of --max_width (Sec. 6.3.3; Linear adds one neuron per step: 24
    steps, 18 of them growing, for 12 neurons)."""
    for schedule in ("Linear", "Batched"):
        train.main(["--neurogenesis", "NORTH-Select", "--growth_schedule", schedule, "--epochs",
                    "2", "--batch_size", "8", "--widths", "4,4", "--max_width", "16",
                    "--run_name", schedule] + fake)
        res = json.loads((tmp_path / "runs" / schedule / "result.json").read_text())
        assert res["widths"] == [16, 16]


def test_neurogenesis_bad_widths_are_one_line_errors(tmp_path, fake):
    """Catches: a width above the maximum reaching the library (or an unknown strategy)."""
    with pytest.raises(SystemExit, match="every width must be between 1 and --max_width 32"):
        train.main(["--neurogenesis", "NORTH-Select", "--widths", "64", "--max_width", "32"] + fake)
    with pytest.raises(SystemExit, match="invalid choice: 'NORTH-Best'"):
        train.main(["--neurogenesis", "NORTH-Best"] + fake)
    assert not (tmp_path / "runs").exists()


def test_unknown_size_knobs_are_refused_before_any_run_directory(tmp_path, fake):
    """Catches: --sizes checked only inside the experiment (after the run directory exists) or
    against the other chapter's knobs."""
    with pytest.raises(SystemExit, match="unknown knob.*epochs_d for north-pareto"):
        train.main(["--experiment", "north-pareto", "--sizes", "epochs_d=3"] + fake)
    with pytest.raises(SystemExit, match="size knobs of the thesis experiments"):
        train.main(["--experiment", "random-rules", "--sizes", "epochs=3"] + fake)
    assert not (tmp_path / "runs").exists()


def test_dyno_run_compares_dyno_and_static_from_the_same_pretrained_net(tmp_path, fake):
    """Catches: the static run not starting from the pretrained weights DYNO starts from (its
    widths before differ), the far shift not applied, the output layer resized."""
    train.main(["--dyno", "far", "--iterations", "20", "--run_name", "d"] + fake)
    rows = json.loads((tmp_path / "runs" / "d" / "result.json").read_text())
    assert [r["method"] for r in rows] == ["dyno", "static"]
    assert rows[0]["widths_before"] == rows[1]["widths_before"] == rows[1]["widths"]
    assert all(0 <= r["test_acc"] <= 100 for r in rows)


def test_equinas_differentiable_quick_run_reports_a_group_per_layer(tmp_path, fake):
    """Catches: mixed layers reported as None, z not normalized over the six groups."""
    train.main(["--equinas", "differentiable", "--quick", "--run_name", "e"] + fake)
    out = json.loads((tmp_path / "runs" / "e" / "result.json").read_text())
    assert len(out["groups"]) == 8 and set(out["groups"]) <= {"C1", "D1", "C2", "D2", "C4", "D4"}
    assert all(abs(sum(z) - 1) < 1e-5 and len(z) == 6 for z in out["z"])
    assert (tmp_path / "runs" / "e" / "checkpoint.pt").exists()
