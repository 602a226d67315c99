"""torchrun-style retraining with DistributedDataParallel: 2 CPU processes (gloo) spawned by
the test keep identical weights (brsf and fa layers included); rank 0's checkpoint resumes in
one process."""
import json
import os
import socket

import torch
import torch.multiprocessing as mp

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
