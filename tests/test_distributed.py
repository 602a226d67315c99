"""torchrun-style retraining with DistributedDataParallel: 2 CPU processes (gloo) spawned by
the test keep identical weights (brsf and fa layers included); rank 0's checkpoint resumes in
one process."""
import json
import os

import torch
import torch.multiprocessing as mp
import pytest

import darts
from experiments import bionas_runs
import train
from conftest import free_port, make_fake_mnist, rank_env, tiny_args

GENOTYPE = darts.Genotype(
    normal=[("sep_conv_3x3_brsf", 0), ("dil_conv_3x3_fa", 1), ("skip_connect", 0), ("sep_conv_3x3_usf", 2)],
    normal_concat=[2, 3],
    reduce=[("skip_connect_brsf", 0), ("sep_conv_3x3_frsf", 1), ("max_pool_3x3", 0), ("dil_conv_3x3_brsf", 2)],
    reduce_concat=[2, 3])


def _worker(rank, world, port, argv, out):
    rank_env(rank, world, port)
    from harness import retrain
    import torch.distributed as dist

    def record(model):                       # every rank's weights and buffers at epoch ends
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
                   os.path.join(out, f"rank{rank}.pt"))
        return 0.0
    retrain.replica_spread = record
    train.main(argv)
    assert not dist.is_initialized()         # every rank left the group (no abort at exit)


@pytest.mark.slow
def test_two_ranks_stay_identical_and_rank0_checkpoint_resumes(tmp_path):
    gpath = tmp_path / "g.json"
    darts.save_genotype(GENOTYPE, str(gpath))
    argv = tiny_args(tmp_path, "--train", "--genotype", str(gpath), "--epochs", "2", "--stop_after", "1",
                     "--init_channels", "4", "--run_name", "ddp")
    ctx = mp.spawn(_worker, args=(2, free_port(), argv, str(tmp_path)), nprocs=2, join=False)
    assert ctx.join(timeout=300) or ctx.join(timeout=300), "the 2-process run did not finish"
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert w0.keys() == w1.keys()
    for k in w0:                # weights and feedback matrices B (fa, usf, frsf, brsf's last draw);
        if "running_" not in k and "num_batches" not in k:    # BN statistics: rank 0's are
            assert torch.equal(w0[k], w1[k]), k               # broadcast at every forward
    assert sum(k.endswith("weight_backward") for k in w0) > 5
    assert any(k.endswith("running_mean") and w0[k].abs().sum() > 0 for k in w0)   # it trained
    run = tmp_path / "runs" / "ddp"
    log = (run / "log.txt").read_text()
    assert "x 2 processes (batch 8 each)" in log and not (tmp_path / "runs" / "ddp" / "rank1").exists()
    ck = torch.load(run / "checkpoint.pt", weights_only=False)
    assert ck["epoch"] == 0 and ck["history"][0]["replica_max_diff"] == 0.0
    # rank 0's checkpoint resumes in a single process
    train.main(["--resume", str(run)])
    hist = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [0, 1] and "replica_max_diff" not in hist[1]


def test_rule_layers_under_bf16_autocast_match_fp32_gradients():
    import rules
    torch.manual_seed(0)
    for rule in ("bp", "fa", "usf", "brsf", "frsf", "hebbian"):
        conv = rules.RuleConv2d(3, 8, 3, padding=1, rule=rule).eval()   # eval: brsf keeps one R
        lin = rules.RuleLinear(8, 4, rule=rule).eval()
        x = torch.randn(4, 3, 8, 8)
        grads = []
        for amp in (False, True):
            conv.zero_grad(), lin.zero_grad()
            xi = x.clone().requires_grad_(True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                y = lin(torch.relu(conv(xi)).mean((2, 3)))
                loss = y.float().pow(2).mean()
            assert y.dtype == (torch.bfloat16 if amp else torch.float32)
            loss.backward()
            grads.append([conv.weight.grad.clone(), lin.weight.grad.clone(), xi.grad.clone()])
        for g32, g16 in zip(*grads):
            assert g16.dtype == torch.float32 and torch.isfinite(g16).all()
            assert (g16 - g32).norm() <= 0.1 * g32.norm() + 1e-6, rule    # bf16: ~5% (bp too)


@pytest.mark.slow
def test_train_with_bf16_autocast_on_cpu(tmp_path):
    gpath = tmp_path / "g.json"
    darts.save_genotype(GENOTYPE, str(gpath))
    train.main(tiny_args(tmp_path, "--train", "--genotype", str(gpath), "--epochs", "1", "--amp", "bf16",
                         "--init_channels", "4", "--run_name", "amp"))
    hist = json.loads((tmp_path / "runs" / "amp" / "history.json").read_text())
    assert torch.isfinite(torch.tensor(hist[0]["train_loss"])) and 0 <= hist[0]["test_acc"] <= 100


def _saved_bytes(net, x, y):
    """Bytes of the tensors autograd keeps for backward (activation memory), by saved-tensor hooks."""
    total, seen = [0], set()

    def pack(t):
        key = (t.data_ptr(), t.numel(), t.dtype)
        if key not in seen and t.device.type == "cpu":
            seen.add(key)
            total[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = net.loss(x, y)
    loss.backward()
    return total[0]


@pytest.mark.slow
def test_partial_channels_search_step_runs_and_saves_memory():
    import ops
    from harness.search import make_supernet
    cands = ops.search_space()                                  # the 22-candidate BioNAS space
    x, y = torch.rand(4, 1, 16, 16), torch.randint(0, 10, (4,))
    mem = {}
    for k in (1, 4):
        torch.manual_seed(0)
        net = make_supernet(8, 10, 3, cands, steps=2, multiplier=2, in_channels=1,
                            partial_channels=k)
        arch = darts.Architect(net)
        arch.step(x, y, x, y)                                   # an alpha step (betas included)
        mem[k] = _saved_bytes(net, x, y)
        if k == 4:
            assert net.betas_normal.grad is not None and len(net.arch_parameters()) == 4
            edge = net.cells[0].edges[0]
            conv = next(m for m in edge.ops[cands.index("sep_conv_3x3_fa")].modules()
                        if isinstance(m, torch.nn.Conv2d))
            assert conv.in_channels == 2                              # C/K = 8/4 channels
            g = net.genotype()
            assert len(g.normal) == 4
    assert mem[4] < 0.5 * mem[1], mem
    # the shuffle interleaves the K groups: channel c of group j goes to position c*K + j
    t = torch.arange(8.0).view(1, 8, 1, 1)
    assert ops.channel_shuffle(t, 4).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]


@pytest.mark.slow
def test_attack_table_split_over_two_ranks_equals_one_process(tmp_path):
    import csv
    root = str(tmp_path / "d")
    make_fake_mnist(root, n_train=64, n_test=48)
    gpath = tmp_path / "g.json"
    darts.save_genotype(GENOTYPE, str(gpath))
    common = ["--data", root, "--save", str(tmp_path / "runs"), "--dataset", "fashion-mnist"]
    train.main(["--train", "--genotype", str(gpath), "--epochs", "1", "--init_channels", "4",
                "--layers", "3", "--batch_size", "16", "--run_name", "m"] + common)
    # deterministic attacks only: PGD's random start draws other numbers for 2 x 24 than for 48
    attack = ["--attack", "fgsm", "--checkpoint", str(tmp_path / "runs" / "m" / "checkpoint.pt"),
              "--attack-grad", "both"] + common
    train.main(attack + ["--batch_size", "48", "--run_name", "one"])
    ctx = mp.spawn(_worker, args=(2, free_port(), attack + ["--batch_size", "24", "--run_name", "two"],
                                  str(tmp_path)), nprocs=2, join=False)
    assert ctx.join(timeout=300) or ctx.join(timeout=300), "the 2-process attack did not finish"

    def rows(name):
        with open(tmp_path / "runs" / name / "robustness.csv") as f:
            return list(csv.DictReader(f))
    one, two = rows("one"), rows("two")
    assert [r["grad"] for r in one] == [r["grad"] for r in two] == ["exact", "feedback"]
    for a, b in zip(one, two):                   # 24 + 24 images on two ranks = the 48 at once
        for k in ("clean", "fgsm"):
            assert float(a[k]) == pytest.approx(float(b[k]), abs=1e-6), k
    assert not (tmp_path / "runs" / "two" / "rank1").exists()


# ------------------------------------------------------------------ distributed search (torchrun)

def _spawn(fn, tmp_path, *args):
    ctx = mp.spawn(fn, args=(2, free_port(), str(tmp_path)) + args, nprocs=2, join=False)
    assert ctx.join(timeout=600) or ctx.join(timeout=600), "the 2-process run did not finish"


def _env(rank, world, port):
    rank_env(rank, world, port)
    import torch.distributed as dist
    dist.init_process_group("gloo")
    return dist


SEARCH_RULES = ("fa", "brsf")                       # brsf: a fresh feedback draw per forward


def _supernet():
    import ops
    torch.manual_seed(0)
    return darts.Network(4, 10, 3, ops.search_space(SEARCH_RULES, ("brsf",)), steps=2,
                         multiplier=2, in_channels=1)


def _search_batches(steps=2, n=16):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g),
             torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g))
            for _ in range(steps)]


def _search_steps(model, loss_model, unrolled, batches, reduce_alpha, reduce_w):
    """search.py's step: the architect's alpha step, then SGD on the weights (grads averaged
    before clipping). Returns alpha and the weights after the steps."""
    torch.manual_seed(3)                                     # the same brsf draws on every rank
    arch = darts.Architect(loss_model, unrolled=unrolled, reduce=reduce_alpha)
    opt = torch.optim.SGD(model.weights(), 0.05, momentum=0.9, weight_decay=3e-4)
    for x, y, xv, yv in batches:
        arch.step(x, y, xv, yv, 0.05, opt)
        opt.zero_grad()
        loss_model.loss(x, y).backward()
        reduce_w([p.grad for p in model.weights()])
        torch.nn.utils.clip_grad_norm_(model.weights(), 5.0)
        opt.step()
    return [a.detach().clone() for a in model.arch_parameters()], \
        [w.detach().clone() for w in model.weights()]


class _TwoShards(torch.nn.Module):
    """One process on the union of the two ranks' shards: the loss is the mean of the shards'
    losses, each shard through the network with its own BN batch statistics (as each rank
    normalizes its own) and the same brsf draw (each rank draws the same); the RNG advances
    as one forward does."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def weights(self):
        return self.net.weights()

    def arch_parameters(self):
        return self.net.arch_parameters()

    def loss(self, x, y):
        h = len(x) // 2
        with torch.random.fork_rng():
            first = self.net.loss(x[:h], y[:h])
        return (first + self.net.loss(x[h:], y[h:])) / 2


def _search_worker(rank, world, port, out, unrolled, reduce_alphas):
    _env(rank, world, port)
    from harness import run_dir
    h = 8
    shard = [(x[rank * h:(rank + 1) * h], y[rank * h:(rank + 1) * h],
              xv[rank * h:(rank + 1) * h], yv[rank * h:(rank + 1) * h])
             for x, y, xv, yv in _search_batches()]
    for reduce_alpha in reduce_alphas:
        model = _supernet()
        res = _search_steps(model, model, unrolled, shard,
                            run_dir.all_average if reduce_alpha else None, run_dir.all_average)
        torch.save(res, os.path.join(out, f"search{rank}-{reduce_alpha}.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("unrolled", [False, True])
def test_two_rank_search_step_is_one_process_on_the_union(tmp_path, unrolled):
    model = _supernet()
    ref_a, ref_w = _search_steps(model, _TwoShards(model), unrolled, _search_batches(),
                                 None, lambda grads: grads)
    reduce_alphas = (True, False) if not unrolled else (True,)
    _spawn(_search_worker, tmp_path, unrolled, reduce_alphas)
    for reduce_alpha in reduce_alphas:
        (a0, w0), (a1, w1) = (torch.load(tmp_path / f"search{r}-{reduce_alpha}.pt") for r in (0, 1))
        gap = max((a - r).abs().max().item() for a, r in zip(a0, ref_a))
        if reduce_alpha:
            for a, b in zip(a0 + w0, a1 + w1):
                assert torch.equal(a, b)                       # the ranks agree exactly
            assert gap < 1e-5
            for w, r in zip(w0, ref_w):
                assert torch.allclose(w, r, atol=1e-5, rtol=1e-4)
        else:                  # each rank's alpha steps on its own shard: another search
            assert gap > 1e-4 and max((a - b).abs().max().item() for a, b in zip(a0, a1)) > 1e-4


def _egnas_worker(rank, world, port, out):
    _env(rank, world, port)
    import egnas
    from harness import run_dir
    model, (x, y, _, _) = _supernet(), _search_batches(1)[0]
    torch.save(egnas.explore(model, x, y, 1, samples=2, population_size=5, seed=4,
                             shard=(rank, world), all_sum=run_dir.all_sum),
               os.path.join(out, f"eg{rank}.pt"))


@pytest.mark.slow
def test_two_rank_egnas_exploration_is_the_one_process_result(tmp_path, monkeypatch):
    import egnas
    model, (x, y, _, _) = _supernet(), _search_batches(1)[0]
    calls = []
    score = egnas.compound_fitness
    monkeypatch.setattr(egnas, "compound_fitness", lambda *a: calls.append(1) or score(*a))
    (wn, wr), acc = egnas.explore(model, x, y, 1, samples=2, population_size=5, seed=4)
    assert len(calls) == 10
    _spawn(_egnas_worker, tmp_path)
    for r in (0, 1):
        (wn2, wr2), acc2 = torch.load(tmp_path / f"eg{r}.pt")
        assert acc2 == acc and torch.equal(wn2, wn) and torch.equal(wr2, wr)


def _cli_worker(rank, world, port, out, argv):
    rank_env(rank, world, port)
    import torch.distributed as dist
    genotype = darts.Network.genotype
    tag = argv[argv.index("--run_name") + 1] if "--run_name" in argv else "resumed"

    def record(model):               # every rank's supernet whenever it derives its genotype
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
                   os.path.join(out, f"{tag}-rank{rank}.pt"))
        return genotype(model)
    darts.Network.genotype = record
    train.main(list(argv))
    assert not dist.is_initialized()         # every rank left the group (no abort at exit)


@pytest.mark.slow
def test_two_rank_search_resumes_under_torchrun_as_uninterrupted(tmp_path):
    base = tiny_args(tmp_path, "--search", "darts", "--epochs", "2", "--rules", "fa,brsf",
                     "--skip_rules", "brsf", "--arch_learning_rate", "3e-2")
    _spawn(_cli_worker, tmp_path, base + ["--run_name", "full"])
    _spawn(_cli_worker, tmp_path, base + ["--run_name", "cut", "--stop_after", "1"])
    runs = tmp_path / "runs"
    assert len(json.loads((runs / "cut" / "history.json").read_text())) == 1
    _spawn(_cli_worker, tmp_path, ["--resume", str(runs / "cut")])
    full, cut = (torch.load(runs / n / "checkpoint.pt", weights_only=False) for n in ("full", "cut"))
    assert cut["epoch"] == full["epoch"] == 1
    for k in ("alphas_normal", "alphas_reduce"):
        assert torch.equal(full["model"][k], cut["model"][k])
        assert (full["model"][k] - full["model"][k].mean()).abs().max() > 1e-3    # alpha moved
    log = (runs / "full" / "log.txt").read_text()
    assert "x 2 processes (batch 8 each)" in log and log.count("epoch 2/2 done") == 1
    s0, s1 = (torch.load(tmp_path / f"full-rank{r}.pt") for r in (0, 1))
    for k in s0:             # averaged weight and alpha gradients: the ranks stay identical
        if "running_" not in k and "num_batches" not in k:     # (BN statistics: per shard)
            assert torch.equal(s0[k], s1[k]), k


# ------------------------------------------------------------------ --gpus: sub-runs over devices

def _timed_job(out, name, device):
    import time
    t0 = time.time()
    open(os.path.join(out, name + ".start"), "w").close()
    partner = {"j0": "j1", "j1": "j0"}.get(name)       # the first two wait for each other
    met = False
    while partner and not met and time.time() < t0 + 60:
        met = os.path.exists(os.path.join(out, partner + ".start"))
        time.sleep(0.05)
    time.sleep(0.4)
    if name == "bad":
        raise RuntimeError("planted failure")
    with open(os.path.join(out, name + ".json"), "w") as f:
        json.dump(dict(device=device, start=t0, end=time.time(), met=met), f)


@pytest.mark.slow
def test_run_on_devices_one_job_per_device_at_a_time(tmp_path):
    from harness import run_dir
    names = [f"j{i}" for i in range(3)]
    placed = run_dir.run_on_devices([(n, (str(tmp_path), n)) for n in names], [0, 1],
                                    _timed_job, log=lambda *a: None, poll=0.05)
    rec = {n: json.loads((tmp_path / f"{n}.json").read_text()) for n in names}
    assert {n: r["device"] for n, r in rec.items()} == placed and set(placed.values()) == {0, 1}
    for dev in (0, 1):                               # never two jobs at once on one device
        spans = sorted((r["start"], r["end"]) for r in rec.values() if r["device"] == dev)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    assert rec["j0"]["met"] and rec["j1"]["met"]          # the two devices run concurrently
    with pytest.raises(SystemExit, match="1 sub-run.*failed: bad"):
        run_dir.run_on_devices([("bad", (str(tmp_path), "bad")), ("ok", (str(tmp_path), "ok"))],
                               [0], _timed_job, log=lambda *a: None, poll=0.05)
    assert (tmp_path / "ok.json").exists()                  # the others still ran


def _pid_job(out, name, device):
    import time
    with open(os.path.join(out, name + ".pid"), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)


def _gone(pid):
    """True when the process no longer runs (absent, or a zombie nobody has reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_run_on_devices_sigterm_stops_its_jobs(tmp_path):
    """Bug: a SIGTERM to the process dealing an experiment's sub-runs leaves its spawned jobs
    running as orphans that keep training and writing into the run: they must be gone soon
    after the parent exits."""
    import signal
    import subprocess
    import sys
    import time
    here = os.path.dirname(os.path.abspath(__file__))
    script = (f"import sys; sys.path[:0] = [{os.path.dirname(here)!r}, {here!r}]\n"
              "from harness import run_dir\nimport test_distributed as T\n"
              f"run_dir.run_on_devices([('a', ({str(tmp_path)!r}, 'a')), ('b', ({str(tmp_path)!r}, 'b'))], "
              "[None, None], T._pid_job, log=lambda *a: None, poll=0.05)\n")
    parent = subprocess.Popen([sys.executable, "-c", script])
    pids, t0 = [tmp_path / "a.pid", tmp_path / "b.pid"], time.time()
    while not all(p.exists() and p.read_text() for p in pids) and time.time() < t0 + 90:
        time.sleep(0.1)
    assert all(p.exists() for p in pids), "the jobs did not start"
    children = [int(p.read_text()) for p in pids]
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(30) != 0
    t1 = time.time()
    while not all(_gone(c) for c in children) and time.time() < t1 + 15:
        time.sleep(0.1)
    for c in children:
        if not _gone(c):
            os.kill(c, signal.SIGKILL)
            pytest.fail(f"job {c} still running after its parent's SIGTERM")


@pytest.mark.slow
def test_experiment_gpus_spreads_sub_runs_and_reuses_finished(tmp_path, monkeypatch):
    gpath = tmp_path / "g.json"
    darts.save_genotype(GENOTYPE, str(gpath))
    argv = tiny_args(tmp_path, "--experiment", "random-rules", "--genotype", str(gpath),
                     "--seeds", "4", "--epochs", "1", "--init_channels", "4", "--quick",
                     "--gpus", "cpu,cpu", "--run_name", "ex")
    rows = train.main(argv)
    run = tmp_path / "runs" / "ex"
    log = (run / "log.txt").read_text()
    labels = ["searched", "random-4"]
    for label in labels:                               # each once, in its own process
        assert log.count(f"{label}: started on cpu") == 1
        assert json.loads((run / label / "result.json").read_text())["test_acc"] >= 0
    assert [r["variant"] for r in rows] == labels
    monkeypatch.setattr(bionas_runs, "train", lambda *a, **k: pytest.fail("retrained a finished run"))
    rows2 = train.main(["--resume", str(run)])
    assert (run / "log.txt").read_text().count("started on") == len(labels)
    assert [r["test_acc"] for r in rows2] == [r["test_acc"] for r in rows]
    with pytest.raises(SystemExit, match="--gpus spreads"):
        train.main(tiny_args(tmp_path, "--search", "darts", "--gpus", "0,1"))
    with pytest.raises(SystemExit, match="CUDA indices or 'cpu'"):
        train.main(argv[:-2] + ["--run_name", "ex2", "--gpus", "0,x"])
