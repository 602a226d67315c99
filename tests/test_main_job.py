"""benchmarks/main_job.py's reading of run directories, on a generated one: the first ETA from
the log's timestamps, the alpha ratios from the search's last epoch, the summary's counts."""
import csv
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import main_job  # noqa: E402

K = 22                                             # candidates of the default search space


def _run_dir(root, seed, strong):
    """A finished main-job run: 3 search epochs, 5 retraining epochs; in the last search epoch
    edge e of the normal cell puts weight strong[e] on candidate e, the rest spread evenly."""
    run = root / f"seed-{seed}"
    (run / "retrain").mkdir(parents=True)
    def weights(edges):
        return [[strong[e] if i == e else (1 - strong[e]) / (K - 1) for i in range(K)]
                for e in range(edges)]
    hist = [dict(epoch=i, seconds=40.0, genotype={"normal": [], "epoch": i},
                 weights_normal=weights(5), weights_reduce=[[1 / K] * K] * 5) for i in range(3)]
    (run / "history.json").write_text(json.dumps(hist))
    (run / "args.json").write_text(json.dumps(dict(rules="fa,usf,brsf,frsf",
                                                   skip_rules="usf,brsf,frsf")))
    (run / "retrain" / "args.json").write_text(json.dumps(dict(epochs=5)))
    (run / "retrain" / "history.json").write_text(json.dumps(
        [dict(epoch=i, seconds=100.0, test_acc=80.0 + i + seed / 10) for i in range(5)]))
    (run / "log.txt").write_text(
        "23:59:50 --quick: the search is followed by a retraining\n"
        "23:59:58 search darts: 22 candidates\n"
        "00:00:07 epoch 1/3 step 10/25 loss 2.2 run ETA 0:10:00\n"
        "00:00:20 epoch 1/3 step 20/25 loss 2.1 run ETA 0:09:00\n")
    return run


def test_first_eta_reads_the_first_eta_across_midnight(tmp_path):
    """17 s after the first line (across midnight), the run said 10 minutes: the prediction is
    617 s. Catches the second ETA read, the clock's wrap, or the time of the ETA line dropped."""
    run = _run_dir(tmp_path, 1, [0.5] * 5)
    assert main_job.first_eta(str(run / "log.txt")) == (17, 600)


def test_read_seed_rows_and_alpha_by_hand(tmp_path):
    """Test accuracy of the retraining's last epoch, times summed over epochs, the ETA's error
    against the wall clock, and per edge the strongest weight times K. Catches the best epoch
    read for the last, alpha read from the first epoch, or the ratio taken against 1/K wrong."""
    strong = [0.2, 0.1, 0.05, 2 / K, 0.5]
    _run_dir(tmp_path, 3, strong)
    row, alpha = main_job.read_seed(3, str(tmp_path), wall=1234.0)
    assert row["test_acc"] == pytest.approx(84.3)
    assert (row["search_seconds"], row["retrain_seconds"], row["wall_seconds"]) == (120, 500, 1234)
    assert row["predicted_seconds"] == 617
    assert row["eta_error"] == pytest.approx(round(617 / 1234 - 1, 3))
    normal = [a for a in alpha if a["cell"] == "normal"]
    assert [a["top_over_uniform"] for a in normal] == [round(s * K, 3) for s in strong]
    assert [a["top_weight"] for a in normal] == [round(s, 4) for s in strong]
    reduce = [a for a in alpha if a["cell"] == "reduce"]
    assert len(reduce) == 5 and all(a["top_over_uniform"] == pytest.approx(1.0) for a in reduce)
    # the wall time is kept beside the run, so a later read reports it without running again
    assert main_job.read_seed(3, str(tmp_path), wall=None)[0]["wall_seconds"] == 1234


def test_summary_counts_edges_at_twice_uniform(tmp_path):
    """strong weights 0.2, 0.1, 0.05, 2/K, 0.5 are 4.4, 2.2, 1.1, 2.0, 11× uniform: 4 of 5 normal
    edges at >= 2× (2/K counts) per seed, none of the uniform reduction edges; mean ± sample std of
    two seeds by hand. Catches > for >=, or every edge counted."""
    rows, alpha = [], []
    for seed in (1, 2):
        _run_dir(tmp_path, seed, [0.2, 0.1, 0.05, 2 / K, 0.5])
        r, a = main_job.read_seed(seed, str(tmp_path), wall=600.0 + seed)
        rows.append(r)
        alpha += a
    text = main_job.summary(rows, alpha, "cmd")
    assert "≥ 2× uniform on 8 of 20 edges" in text
    assert "84.15 ± 0.07" in text                  # 84.1, 84.2: sd = 0.1 / sqrt 2
    main_job.write_csv(alpha, str(tmp_path / "a.csv"))
    with open(tmp_path / "a.csv") as f:
        assert len(list(csv.DictReader(f))) == 20


def test_against_pairs_by_seed_by_hand(tmp_path):
    """Two seeds against another study's CSV listed in the other order: ratios 300/600 = 0.5 and
    450/500 = 0.9 (mean 0.70 ± 0.28), accuracy differences +1.0 and −0.5 (mean 0.25, sample std
    1.06, t = 0.333). Catches rows paired by position instead of by seed, or the ratio inverted."""
    other = tmp_path / "other.csv"
    main_job.write_csv([dict(seed=2, test_acc=88.0, wall_seconds=500),
                        dict(seed=1, test_acc=86.0, wall_seconds=600)], str(other))
    rows = [dict(seed=1, test_acc=87.0, wall_seconds=300), dict(seed=2, test_acc=87.5,
                                                                wall_seconds=450)]
    text = main_job.against(rows, str(other))
    assert "| 1 | 300 | 600 | 0.50 | 87.00 | 86.00 | +1.00 |" in text
    assert "| 2 | 450 | 500 | 0.90 | 87.50 | 88.00 | -0.50 |" in text
    assert "Time ratio 0.70 ± 0.28" in text and "0.25 ± 1.06 points paired, 1/2 ahead" in text
    assert "t = 0.33" in text
