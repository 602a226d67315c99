"""Faults a newcomer meets: hangs, divergence, bad inputs, resume, run directories,
help, logs. Each test names the one-line bug it would catch."""
import argparse
import gzip
import json
import os
import re
import signal

import numpy as np
import pytest
import torch

import darts
from harness import data
from harness import options
from harness import quick
from harness import run_dir
from harness import search
import train
from conftest import make_fake_mnist, tiny_args, write_idx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENOTYPE = {"normal": [["sep_conv_3x3_fa", 0], ["skip_connect_usf", 1], ["max_pool_3x3", 0],
                       ["dil_conv_3x3_frsf", 2]], "normal_concat": [2, 3],
            "reduce": [["sep_conv_3x3_brsf", 0], ["skip_connect_frsf", 1], ["avg_pool_3x3", 2],
                       ["dil_conv_5x5_usf", 0]], "reduce_concat": [2, 3]}


@pytest.fixture
def deadline():
    """A hang becomes a failure after 120 s instead of a stuck suite."""
    def alarm(*_):
        raise TimeoutError("hung for 120 s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def fails(argv, match):
    """train.main(argv) stops with SystemExit whose one-line message matches `match`."""
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    msg = str(e.value.code)
    assert re.search(match, msg), msg
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def genotype_file(tmp_path):
    path = tmp_path / "g.json"
    path.write_text(json.dumps(GENOTYPE))
    return str(path)


# ------------------------------------------------------------------ 1. splits that hang

def test_impossible_search_splits_are_refused_up_front(tmp_path, deadline):
    """Catches: --train_portion 1.0 accepted (the alpha loop spins forever on an empty part),
    --train_portion 0 silently becoming 0.5, a split check that ignores --subset."""
    for p in ("1.0", "0", "-0.5", "1.5"):
        fails(tiny_args(tmp_path, "--search", "darts", "--train_portion", p, "--epochs", "1"),
              "--train_portion.*strictly between 0 and 1")
    fails(tiny_args(tmp_path, "--search", "darts", "--train_portion", "0.01", "--epochs", "1"),
          r"leaves 0 weight and 64 alpha images")
    assert not (tmp_path / "runs").exists()
    # the library refuses too, and the alpha iterator never spins on nothing
    args = argparse.Namespace(dataset="fashion-mnist", data=str(tmp_path / "fake"), seed=0,
                              subset=10, train_portion=1.0, schedule="alternate")
    make_fake_mnist(args.data)
    with pytest.raises(ValueError, match="no alpha"):
        search.split_search_data(args)
    empty = data.Batches(torch.zeros(0, 1, 4, 4, dtype=torch.uint8), torch.zeros(0).long(), 4,
                         "cpu")
    with pytest.raises(ValueError, match="empty"):
        next(search.alpha_batches(empty, 0))


def test_explicit_train_portion_is_used_not_replaced(tmp_path):
    """Catches `args.train_portion or default` (a falsy value replaced by 0.5)."""
    args = argparse.Namespace(dataset="fashion-mnist", data=str(tmp_path / "data"), seed=0,
                              subset=40, train_portion=0.25, schedule="cs10")
    make_fake_mnist(args.data)
    (xw, _), (xa, _) = search.split_search_data(args)
    assert (len(xw), len(xa)) == (10, 30)
    args.train_portion = 0.0
    with pytest.raises(ValueError, match="leaves no weight images"):
        search.split_search_data(args)


# ------------------------------------------------------------------ 3. divergence

@pytest.mark.slow
def test_diverged_search_stops_and_is_not_retrained(tmp_path):
    """Catches: a NaN search writing a genotype and going on to the --quick retraining."""
    msg = fails(tiny_args(tmp_path, "--search", "darts", "--quick", "--learning_rate", "1e6",
                          "--epochs", "2", "--procs", "1", "--run_name", "div"),
                "the run diverged")
    run = tmp_path / "runs" / "div"
    assert not (run / "retrain").exists()
    named = re.search(r"the last good checkpoint is (\S+)", msg)
    assert (named and os.path.exists(named.group(1))) or "no checkpoint was written" in msg
    log = (run / "log.txt").read_text()
    assert log.count("the run diverged") == 1                # the error in log.txt, once


def test_non_finite_weight_or_valid_loss_stops_naming_the_last_good_checkpoint(tmp_path):
    """Catches: only the training loss checked (weights / BN statistics / alpha / the
    validation loss never), and a message naming a checkpoint that does not exist."""
    run = run_dir.Run(str(tmp_path / "r"))
    args = argparse.Namespace(learning_rate=0.1, arch_learning_rate=3e-4, search="darts")
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    net.register_parameter("alphas_normal", torch.nn.Parameter(torch.zeros(3)))
    run_dir.check_model_finite(net, run, "epoch 1", args, 1.5)          # all finite: no stop
    with pytest.raises(SystemExit, match="no checkpoint was written"):
        run_dir.check_model_finite(net, run, "epoch 1", args, float("nan"))
    run.save({"kind": "search"}, "checkpoint.pt")
    run.write_json([{"epoch": 0}, {"epoch": 1}], "history.json")
    for tensor in (net[0].weight, net[1].running_var, net.alphas_normal):
        with torch.no_grad():
            tensor.view(-1)[0] = float("inf")
        with pytest.raises(SystemExit) as e:
            run_dir.check_model_finite(net, run, "epoch 3", args, 1.5)
        msg = str(e.value.code)
        assert "1 non-finite" in msg and f"{run.file('checkpoint.pt')} (after epoch 2)" in msg
        assert os.path.exists(run.file("checkpoint.pt"))
        with torch.no_grad():
            tensor.view(-1)[0] = 1.0


# ------------------------------------------------------------------ 4. one line, no traceback

def test_bad_values_are_one_line_errors_before_any_run_directory(tmp_path):
    """Catches: a flag with an impossible value reaching the code (ZeroDivisionError, empty
    networks, an untrained model.pt) or leaving an empty run directory behind."""
    g = genotype_file(tmp_path)
    for flags, match in ((["--epochs", "0"], "--epochs.*>= 1"), (["--epochs", "-1"], ">= 1"),
                         (["--batch_size", "0"], "--batch_size"), (["--batch_size", "-8"], ">= 1"),
                         (["--init_channels", "0"], "--init_channels"),
                         (["--init_channels", "-4"], ">= 1"), (["--nodes", "0"], "--nodes"),
                         (["--report_freq", "0"], "--report_freq"),
                         (["--subset", "0"], "--subset"), (["--subset", "-3"], "--subset"),
                         (["--subset", "999999999"], "exceeds the .* training images"),
                         (["--layers", "2"], "at least 3 cells"),
                         (["--layers", "1"], "at least 3 cells")):
        fails(tiny_args(tmp_path, "--search", "darts", *flags), match)
        fails(tiny_args(tmp_path, "--train", "--genotype", g, *flags), match)
    fails(tiny_args(tmp_path, "--train", "--genotype", str(tmp_path / "nope.json")),
          "--genotype .*nope.json: no such file")
    fails(tiny_args(tmp_path, "--train", "--genotype", str(tmp_path)), "is a directory")
    fails(tiny_args(tmp_path, "--train"), "needs --genotype")
    fails(["--attack", "fgsm", "--checkpoint", "x.pt", "--attack_eps", "-0.1"], "--attack_eps")
    fails(["--attack", "fgsm,cw"], "unknown attack.*cw")
    fails(["--nonsense"], "unrecognized arguments: --nonsense")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["random", "truncated"])
def test_unreadable_checkpoint_for_resume_and_attack(tmp_path, damage):
    """Catches: torch.load's UnpicklingError / zip error escaping as a traceback."""
    train.main(tiny_args(tmp_path, "--train", "--genotype", genotype_file(tmp_path), "--epochs",
                         "1", "--init_channels", "4", "--run_name", "net"))
    run = tmp_path / "runs" / "net"
    good = (run / "checkpoint.pt").read_bytes()
    bad = np.random.default_rng(0).bytes(4000) if damage == "random" else good[:len(good) // 2]
    (run / "checkpoint.pt").write_bytes(bad)
    fails(["--resume", str(run)], "cannot be read as a checkpoint: it is truncated or damaged")
    fails(["--attack", "fgsm", "--checkpoint", str(run / "checkpoint.pt"), "--save",
           str(tmp_path / "runs")], "cannot be read as a checkpoint")


@pytest.mark.slow
def test_checkpoint_kind_is_checked_on_resume_and_attack(tmp_path):
    """Catches: resume() loading a search checkpoint into a retraining (and the reverse) and
    --attack accepting a supernet."""
    base = tiny_args(tmp_path, "--epochs", "1")
    train.main(base + ["--search", "darts", "--run_name", "s"])
    train.main(base + ["--train", "--genotype", genotype_file(tmp_path), "--run_name", "t",
                       "--init_channels", "4"])
    runs = tmp_path / "runs"
    s_ck, t_ck = (runs / "s" / "checkpoint.pt").read_bytes(), (runs / "t" / "checkpoint.pt").read_bytes()
    (runs / "t" / "checkpoint.pt").write_bytes(s_ck)
    (runs / "s" / "checkpoint.pt").write_bytes(t_ck)
    fails(["--resume", str(runs / "t"), "--epochs", "2"], "holds an architecture search .*not a genotype retraining")
    fails(["--resume", str(runs / "s"), "--epochs", "2"], "holds a genotype retraining .*not an architecture search")
    fails(["--attack", "fgsm", "--checkpoint", str(runs / "t" / "checkpoint.pt"), "--save",
           str(runs)], "attack the checkpoint.pt of a --train run")


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_idx_file_is_named(tmp_path, gz):
    """Catches: EOFError / numpy reshape errors from a cut IDX file, with no file name."""
    root = tmp_path / "data"
    raw = make_fake_mnist(str(root))
    path = os.path.join(raw, "train-images-idx3-ubyte.gz")
    with gzip.open(path) as f:
        blob = f.read()
    os.remove(path)
    if gz:                                                     # the compressed stream cut short
        whole = gzip.compress(blob)
        open(path, "wb").write(whole[:len(whole) // 2])
        target = path
    else:                                                      # a raw file missing its tail
        target = os.path.join(raw, "train-images-idx3-ubyte")
        open(target, "wb").write(blob[:-100])
    with pytest.raises(SystemExit, match=re.escape(target) + " is not a complete IDX file"):
        data.load_dataset("fashion-mnist", str(root) + "/")


def test_partial_data_directory_is_not_completed_from_elsewhere(tmp_path):
    """Catches: --data holding 2 of the 4 files silently completed from Debian's copy."""
    raw = make_fake_mnist(str(tmp_path / "d"))
    for f in os.listdir(raw):
        if f.startswith("t10k"):
            os.remove(os.path.join(raw, f))
    with pytest.raises(SystemExit, match="holds only some of the fashion-mnist files: "
                                         "t10k-images-idx3-ubyte, t10k-labels"):
        data.load_dataset("fashion-mnist", str(tmp_path / "d"))


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch):
    """Catches: KeyboardInterrupt printing a traceback and no resume command."""
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(quick, "search", interrupted)
    with pytest.raises(SystemExit) as e:
        train.main(tiny_args(tmp_path, "--search", "darts", "--run_name", "c"))
    assert e.value.code == 130
    run = tmp_path / "runs" / "c"
    assert f"continue with: python train.py --resume {run}" in (run / "log.txt").read_text()


# ------------------------------------------------------------------ 5. resume flags

@pytest.mark.slow
def test_resume_takes_more_epochs_and_refuses_other_flags(tmp_path):
    """Catches: --resume ignoring --epochs (finishing at once), a changed --learning_rate
    silently ignored, the cosine schedule not recomputed for the new total, args.json
    rewritten by a refused resume."""
    base = tiny_args(tmp_path, "--search", "darts", "--epochs", "2", "--run_name", "r",
                     "--learning_rate", "0.08")
    train.main(base)
    run = tmp_path / "runs" / "r"
    fails(["--resume", str(run), "--learning_rate", "0.5", "--batch_size", "8"],
          r"--learning_rate \(the run has 0.08\), --batch_size \(the run has 16\) cannot change")
    fails(["--resume", str(run), "--epochs", "1"], "--epochs 1 is fewer than the 2 epochs")
    assert json.load(open(run / "args.json"))["epochs"] == 2
    train.main(["--resume", str(run)])                         # finished: nothing to do
    assert "nothing to do" in (run / "log.txt").read_text()
    train.main(["--resume", str(run), "--epochs", "4", "--report_freq", "1"])
    hist = json.load(open(run / "history.json"))
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3]
    lrs = [float(m) for m in re.findall(r"epoch 3/4 step 1/\d+ lr (\S+)", (run / "log.txt").read_text())]
    lo = json.load(open(run / "args.json"))["learning_rate_min"]     # the preset's 0.001
    assert lrs == [pytest.approx(lo + 0.5 * (0.08 - lo) * (1 + np.cos(np.pi * 2 / 4)), abs=1e-4)]
    assert json.load(open(run / "args.json"))["epochs"] == 4


@pytest.mark.slow
def test_resume_of_a_run_killed_in_its_first_epoch_says_it_restarts(tmp_path):
    """Catches: a silent restart from scratch."""
    run = tmp_path / "runs" / "k"
    train.main(tiny_args(tmp_path, "--search", "darts", "--epochs", "1", "--run_name", "k"))
    os.remove(run / "checkpoint.pt")                           # as if killed in epoch 1
    train.main(["--resume", str(run)])
    assert "has no checkpoint (it stopped before its first epoch ended): starting it again" \
        in (run / "log.txt").read_text()
    assert (run / "checkpoint.pt").exists()


# ------------------------------------------------------------------ 6. run directories

@pytest.mark.slow
def test_run_name_reuse_and_a_second_writer_are_refused(tmp_path):
    """Catches: a finished run overwritten by a new one of the same name; two processes
    writing one run (a resume while the original still runs)."""
    args = tiny_args(tmp_path, "--search", "darts", "--epochs", "1", "--run_name", "once")
    train.main(args)
    before = (tmp_path / "runs" / "once" / "checkpoint.pt").read_bytes()
    fails(args, "already exists; choose another --run_name, or continue that run with --resume")
    assert (tmp_path / "runs" / "once" / "checkpoint.pt").read_bytes() == before
    holder = run_dir.Run(str(tmp_path / "runs" / "once"), lock=True)   # "the original still runs"
    fails(["--resume", str(tmp_path / "runs" / "once"), "--epochs", "2"],
          f"is in use by another train.py process \\(pid {os.getpid()}\\)")
    holder.close()                                               # the original ends
    train.main(["--resume", str(tmp_path / "runs" / "once"), "--epochs", "2"])


# ------------------------------------------------------------------ 7. silent nonsense

@pytest.mark.slow
def test_attack_sweep_is_a_flag_and_logs_progress(tmp_path):
    """Catches: the PGD epsilon sweep always running (minutes, silent)."""
    train.main(tiny_args(tmp_path, "--train", "--genotype", genotype_file(tmp_path), "--epochs",
                         "1", "--init_channels", "4", "--run_name", "net"))
    ckpt = str(tmp_path / "runs" / "net" / "checkpoint.pt")
    common = ["--checkpoint", ckpt, "--attack_batches", "1", "--batch_size", "4",
              "--attack_steps", "1", "--save", str(tmp_path / "runs")]
    train.main(["--attack", "fgsm", "--run_name", "a1"] + common)
    assert not (tmp_path / "runs" / "a1" / "robustness_eps.png").exists()
    train.main(["--attack", "fgsm", "--attack_sweep", "--attack_grad", "exact",
                "--run_name", "a2"] + common)
    log = (tmp_path / "runs" / "a2" / "log.txt").read_text()
    assert len(re.findall(r"PGD sweep \d+/8: exact gradient", log)) == 8
    assert (tmp_path / "runs" / "a2" / "robustness_eps.png").exists()


@pytest.mark.slow
def test_last_batch_of_one_image_is_dropped_in_training(tmp_path):
    """Catches: a batch of 1 reaching BatchNorm on a 1x1 map (the auxiliary head) and
    crashing a retraining whose images leave one over (17 = 16 + 1)."""
    b = data.Batches(torch.zeros(17, 1, 4, 4, dtype=torch.uint8), torch.arange(17), 16, "cpu")
    assert len(b) == 1 and [len(y) for _, y in b] == [16]
    e = data.Batches(torch.zeros(17, 1, 4, 4, dtype=torch.uint8), torch.arange(17), 16, "cpu",
                     train=False)
    assert [len(y) for _, y in e] == [16, 1]                    # evaluation keeps every image
    train.main(tiny_args(tmp_path, "--train", "--genotype", genotype_file(tmp_path), "--epochs",
                         "1", "--init_channels", "4", "--subset", "17", "--auxiliary"))


# ------------------------------------------------------------------ 8. help, spelling, README

def test_help_shows_real_defaults_and_every_flag_has_help_and_both_spellings():
    """Catches: '(default: None)' beside flags with a real default, a flag without help, a
    hyphen or underscore spelling that is not accepted."""
    p = options.build_parser()
    text = p.format_help()
    assert "(default: None)" not in text
    def entry(flag):                                            # its entry in the options list
        return re.search(r"\n  " + re.escape(flag) + r"[ ,\n].*?(?=\n  -|\n\n|\Z)", text,
                         re.S).group(0)
    for flag in ("--report_freq", "--warm_start_epochs", "--batch_size", "--epochs",
                 "--prox", "--attack_eps", "--nodes", "--auxiliary"):
        assert "default:" in entry(flag), flag
    assert "collapse:" in entry("--experiment")
    assert "1,600 images" in text and "40,000" in text          # what --quick runs
    for action in p._actions:
        assert action.help, action.option_strings
        for o in action.option_strings:
            if o.startswith("--") and "_" in o:
                assert "--" + o[2:].replace("_", "-") in action.option_strings, o
    a = p.parse_args(["--force-rule", "fa", "--attack-eps", "0.1", "--batch-size", "3"])
    b = p.parse_args(["--force_rule", "fa", "--attack_eps", "0.1", "--batch_size", "3"])
    assert vars(a) == vars(b)


def test_readme_has_no_unknown_flags_and_a_whole_features_table():
    """Catches: the README citing flags that do not exist (--max-batches), and a features
    table row with a wrong number of cells."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    p = options.build_parser()
    known = {o.removeprefix("--no-").removeprefix("--") for a in p._actions
             for o in a.option_strings}
    for flag in set(re.findall(r"train\.py[^\n`]*", readme)):
        for name in re.findall(r"(?<![\w-])--([a-z][a-z0-9_-]*)", flag):
            assert name in known, f"README uses unknown flag --{name}"
    table = readme.split("## Features")[1].split("\n## ")[0]
    rows = [r for r in table.splitlines() if r.startswith("|")]
    assert rows and all(len(re.split(r"(?<!\\)\|", r)) == 5 for r in rows)   # 3 cells each
    assert "Known problem" not in readme


@pytest.mark.slow
def test_device_warning_goes_to_log_once(tmp_path, capsys):
    """Catches: the --gpu warning printed at every pick_device call and missing from log.txt."""
    run_dir.WARNINGS.clear()
    train.main(tiny_args(tmp_path, "--search", "darts", "--epochs", "1", "--gpu", "99",
                         "--run_name", "g"))
    err = capsys.readouterr().err
    assert err.count("--gpu 99 requested") == 1
    assert (tmp_path / "runs" / "g" / "log.txt").read_text().count("--gpu 99 requested") == 1


# ------------------------------------------------------------------ 9. progress

def test_retrain_estimate_is_the_median_step_times_the_run(monkeypatch):
    """estimate_seconds: a warm-up step, then 8 timed steps of 1, 5, 2, 8, 3, 7, 4, 6 s: the
    median 4.5 s per step times (10 training batches of 640 images + 5 test batches of 300 at
    a third of a step) times 3 epochs. Catches the fastest step (a lucky address) used for
    the pace, the warm-up step counted, or the evaluation term dropped."""
    from harness import retrain
    ticks = iter([0, 9] + [x for d in (1, 5, 2, 8, 3, 7, 4, 6) for x in (0, d)])
    monkeypatch.setattr(retrain.time, "time", lambda: float(next(ticks)))
    args = quick.quick_retrain_args(options.apply_defaults(
        train.build_parser().parse_args(["--search", "darts", "--quick"]), "search"))
    args.init_channels, args.layers, args.epochs = 4, 2, 3
    got = retrain.estimate_seconds(args, darts.Genotype(**GENOTYPE), torch.device("cpu"),
                                   640, 300)
    assert got == pytest.approx(4.5 * (10 + 5 / 3) * 3)


def test_eta_is_for_the_whole_run(monkeypatch):
    """Catches: an ETA for the current epoch only (or without what follows the phase)."""
    clock = [100.0]
    monkeypatch.setattr(run_dir.time, "time", lambda: clock[0])
    history = [{"seconds": 40.0}, {"seconds": 60.0}]            # 2 epochs done, 50 s each
    m = run_dir.Meter(10, epoch=2, epochs=5, history=history, after=30.0)
    for _ in range(4):
        m.update(1.0, torch.zeros(1, 2), torch.zeros(1).long())
    clock[0] += 8.0                                            # 4 steps in 8 s
    assert m.eta() == pytest.approx(6 * 2 + 2 * 50 + 30)       # this epoch, 2 more, retrain
    assert "run ETA 0:02:22" in m.line()
    first = run_dir.Meter(10, epoch=0, epochs=3)               # no finished epoch yet
    first.update(1.0, torch.zeros(1, 2), torch.zeros(1).long())
    clock[0] += 1.0
    assert first.eta() == pytest.approx(9 + 2 * 10)


@pytest.mark.slow
def test_search_logs_every_epoch_with_the_run_eta(tmp_path):
    """Catches: epochs without a progress line (report_freq > steps per epoch)."""
    train.main(tiny_args(tmp_path, "--search", "darts", "--epochs", "2", "--report_freq", "50",
                         "--run_name", "e"))
    log = (tmp_path / "runs" / "e" / "log.txt").read_text()
    for epoch in (1, 2):
        assert re.search(rf"epoch {epoch}/2 step 2/2 .*run ETA \d+:\d\d:\d\d", log)
        assert re.search(rf"epoch {epoch}/2 done: .*run ETA", log)
