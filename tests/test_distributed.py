"""torchrun-style retraining with DistributedDataParallel: 2 CPU processes (gloo) spawned by
the test keep identical weights (brsf and fa layers included); rank 0's checkpoint resumes in
one process."""
import json
import os
import socket

import torch
import torch.multiprocessing as mp
import pytest

import darts
import train
from test_train import tiny_args

GENOTYPE = darts.Genotype(
    normal=[("sep_conv_3x3_brsf", 0), ("dil_conv_3x3_fa", 1), ("skip_connect", 0), ("sep_conv_3x3_usf", 2)],
    normal_concat=[2, 3],
    reduce=[("skip_connect_brsf", 0), ("sep_conv_3x3_frsf", 1), ("max_pool_3x3", 0), ("dil_conv_3x3_brsf", 2)],
    reduce_concat=[2, 3])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, argv, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import retrain
    import torch.distributed as dist

    def record(model):                       # every rank's weights and buffers at epoch ends
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
                   os.path.join(out, f"rank{rank}.pt"))
        return 0.0
    retrain.replica_spread = record
    train.main(argv)
    dist.destroy_process_group()


def test_two_ranks_stay_identical_and_rank0_checkpoint_resumes(tmp_path):
    gpath = tmp_path / "g.json"
    darts.save_genotype(GENOTYPE, str(gpath))
    argv = tiny_args(tmp_path, "--train", "--genotype", str(gpath), "--epochs", "2", "--stop_after", "1",
                     "--init_channels", "4", "--run_name", "ddp")
    ctx = mp.spawn(_worker, args=(2, _free_port(), argv, str(tmp_path)), nprocs=2, join=False)
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


def test_partial_channels_search_step_runs_and_saves_memory():
    import ops
    cands = ops.search_space()                                  # the 22-candidate BioNAS space
    x, y = torch.rand(4, 1, 16, 16), torch.randint(0, 10, (4,))
    mem = {}
    for k in (1, 4):
        torch.manual_seed(0)
        net = darts.Network(8, 10, 3, cands, steps=2, multiplier=2, in_channels=1, partial_channels=k)
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


def test_attack_table_split_over_two_ranks_equals_one_process(tmp_path):
    import csv
    from test_train import make_fake_mnist
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
    ctx = mp.spawn(_worker, args=(2, _free_port(), attack + ["--batch_size", "24", "--run_name", "two"],
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
