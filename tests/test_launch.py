"""--procs N (harness/launch.py): N ranks of one command with torchrun's environment, a failing
rank stops the others; and the channels_last gradient hooks of harness/data.py's place()."""
import json
import os
import sys
import textwrap
import time

import pytest
import torch
import torch.nn as nn

import darts
import train
from conftest import tiny_args
from harness import launch
from harness.data import grads_channels_last


def _gone(pid, seconds=5.0):
    """True once no process `pid` exists (within `seconds`)."""
    for _ in range(int(seconds / 0.1)):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_run_ranks_gives_torchrun_env_and_stops_the_others_when_one_fails(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, sys, time
        env = {{k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE",
                                               "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS")}}
        env["argv"] = sys.argv[1:]
        env["pid"] = os.getpid()
        with open(os.path.join({str(tmp_path)!r}, "rank" + env["RANK"] + ".json"), "w") as f:
            json.dump(env, f)
        if env["RANK"] == "1":
            sys.exit(3)                           # rank 1 fails at once
        time.sleep(120)                           # rank 0 would wait in a collective forever
        """))
    env = os.environ.pop("OMP_NUM_THREADS", None)
    try:
        t0 = time.time()
        code = launch.run_ranks(str(script), ["--x", "1"], 2)
    finally:
        if env is not None:
            os.environ["OMP_NUM_THREADS"] = env
    assert code == 3 and time.time() - t0 < 60          # not the 120 s of rank 0's sleep
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (r0["RANK"], r1["RANK"], r0["LOCAL_RANK"], r1["LOCAL_RANK"]) == ("0", "1", "0", "1")
    assert r0["WORLD_SIZE"] == r1["WORLD_SIZE"] == "2" and r0["MASTER_ADDR"] == "127.0.0.1"
    assert r0["MASTER_PORT"] == r1["MASTER_PORT"] and r0["OMP_NUM_THREADS"] == "1"
    assert r0["argv"] == r1["argv"] == ["--x", "1"]
    assert _gone(r0["pid"])                              # rank 0 was stopped, not left behind


def test_procs_is_refused_where_it_cannot_split_the_work(tmp_path, capsys):
    for extra in (["--attack", "fgsm", "--checkpoint", "x.pt"], ["--train", "--gpu", "0"]):
        with pytest.raises(SystemExit) as e:
            train.main(tiny_args(tmp_path, "--procs", "2", *extra))
        assert "--procs 2 splits a --search or --train over CPU cores" in str(e.value.code)


def test_quick_runs_on_two_processes_only_where_it_can(monkeypatch):
    """--procs left unset: 2 for a --quick --search / --train on a CPU with >= 2 usable cores
    (and inside the ranks it starts), 1 everywhere else. Catches the default applied under
    torchrun (N ranks each starting 2 more), with --gpu, on a 1-core affinity mask, or to
    modes that cannot split their work."""
    from harness import options
    parse = lambda *a: train.build_parser().parse_args(list(a))        # noqa: E731
    for var in ("WORLD_SIZE", options.LAUNCHED):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    quick = parse("--search", "darts", "--quick")
    assert options.default_procs(quick, "search") == 2
    assert options.default_procs(parse("--train", "--quick"), "train") == 2
    assert options.default_procs(parse("--search", "darts"), "search") == 1
    assert options.default_procs(parse("--search", "darts", "--quick", "--gpu", "0"),
                                 "search") == 1
    assert options.default_procs(parse("--experiment", "table1", "--quick"), "experiment") == 1
    assert train.prepare(parse("--search", "darts", "--quick", "--procs", "1"),
                         [])[0].procs == 1                              # given: kept
    monkeypatch.setenv("WORLD_SIZE", "2")                                # torchrun's rank
    assert options.default_procs(quick, "search") == 1
    monkeypatch.setenv(options.LAUNCHED, "1")                            # a rank --procs started
    assert options.default_procs(quick, "search") == 2
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv(options.LAUNCHED)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})        # taskset -c 0
    assert options.default_procs(quick, "search") == 1


@pytest.mark.slow
def test_procs_2_retrains_with_two_ranks_in_sync(tmp_path):
    g = darts.Genotype(normal=[("sep_conv_3x3_brsf", 0), ("dil_conv_3x3_fa", 1),
                               ("skip_connect", 0), ("avg_pool_3x3", 2)], normal_concat=[2, 3],
                       reduce=[("max_pool_3x3", 0), ("sep_conv_3x3_usf", 1),
                               ("max_pool_3x3", 0), ("skip_connect", 2)], reduce_concat=[2, 3])
    gpath = tmp_path / "g.json"
    darts.save_genotype(g, str(gpath))
    train.main(tiny_args(tmp_path, "--train", "--genotype", str(gpath), "--epochs", "2",
                         "--init_channels", "4", "--run_name", "p2", "--procs", "2"))
    run = tmp_path / "runs" / "p2"
    log = (run / "log.txt").read_text()
    assert "x 2 processes (batch 8 each)" in log and "training finished" in log
    hist = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [0, 1]
    assert all(h["replica_max_diff"] == 0.0 for h in hist)    # DDP kept the replicas equal
    # each rank evaluated half of the test set with rank 0's BatchNorm statistics: the summed
    # result is rank 0's model on the whole test set, evaluated here in one process
    import argparse
    from harness.data import load_dataset, make_batches, place
    from harness.retrain import build_eval_model
    from harness.run_dir import evaluate
    args = argparse.Namespace(**json.loads((run / "args.json").read_text()))
    model = place(build_eval_model(args, g), args, torch.device("cpu"))
    model.load_state_dict(torch.load(run / "model.pt", weights_only=False))
    _, _, xte, yte = load_dataset(args.dataset, args.data)
    acc, loss = evaluate(model, make_batches(args, xte, yte, torch.device("cpu"), train=False))
    assert acc == hist[-1]["test_acc"] and abs(loss - hist[-1]["test_loss"]) < 1e-5 * max(1, loss)


class _Net(nn.Module):
    """Two channels_last branches, conv -> BN and conv -> ReLU, each into a global mean: the
    mean's backward hands BN and ReLU an expanded (stride-0) gradient, in neither format."""
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)    # a bias before BN: grad 0
        self.conv2 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn, self.relu, self.fc = nn.BatchNorm2d(8), nn.ReLU(), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.bn(self.conv1(x)).mean((2, 3)) + self.relu(self.conv2(x)).mean((2, 3)))


def _layouts_and_grads(net, x):
    seen = []

    def record(mod, inp, out):                 # the gradient BN's and ReLU's backward receive
        out.grad_fn.register_prehook(
            lambda g: seen.append(g[0].is_contiguous(memory_format=torch.channels_last)
                                  and g[0].stride(1) == 1 and 0 not in g[0].stride()))
    for m in (net.bn, net.relu):
        m.register_forward_hook(record)
    net(x).pow(2).sum().backward()
    return seen, [p.grad.clone() for p in net.parameters()]


def test_grads_channels_last_hands_bn_and_relu_dense_channels_last_gradients():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 10, 10).contiguous(memory_format=torch.channels_last)
    plain = _Net().to(memory_format=torch.channels_last)
    hooked = grads_channels_last(_Net().to(memory_format=torch.channels_last))
    hooked.load_state_dict(plain.state_dict())
    seen_plain, g_plain = _layouts_and_grads(plain, x)
    seen_hooked, g_hooked = _layouts_and_grads(hooked, x)
    assert seen_plain == [False, False]        # the setup does produce a layout mismatch
    assert seen_hooked == [True, True]
    for a, b in zip(g_plain, g_hooked):        # the same gradients, another layout
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_sigterm_to_the_launcher_stops_every_rank(tmp_path):
    """A scheduler's SIGTERM to the launching process must not leave its ranks running."""
    import signal
    import subprocess
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(f"""
        import os, time
        with open(os.path.join({str(tmp_path)!r}, "pid" + os.environ["RANK"]), "w") as f:
            f.write(str(os.getpid()))
        time.sleep(120)
        """))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parent = subprocess.Popen([sys.executable, "-c", "import sys; from harness import launch; "
                               f"sys.exit(launch.run_ranks({str(script)!r}, [], 2))"], cwd=root)
    for _ in range(200):
        if all((tmp_path / f"pid{r}").exists() for r in (0, 1)):
            break
        time.sleep(0.1)
    time.sleep(0.3)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 128 + signal.SIGTERM
    assert all(_gone(int((tmp_path / f"pid{r}").read_text())) for r in (0, 1))
