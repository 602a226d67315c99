"""DARTS-PRIME (Maile's thesis Ch. 5): the FIMT gate, proximity and ADMM terms against their
definitions, CRB pruning, and the options through train.py --search darts."""
import json
import math
from types import SimpleNamespace

import pytest
import torch

import darts
import darts_prime as DP
import ops
import train
from conftest import tiny_args

CANDS = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3_fa", "dil_conv_3x3_usf"]


def test_fimt_gate_and_threshold_follow_algorithm_3():
    s = DP.Schedule("fimt")                          # h0 = 1, h_i = 1.05, r = 10, lambda = 0.2
    h_d = 1.05 ** -10
    assert s.h_d == pytest.approx(h_d)
    fisher = [4.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 9.0, 0.05]
    ewma, h, gates = None, 1.0, []
    for f in fisher:                                  # Algorithm 3, lines 5-10, by hand
        ewma = f if ewma is None else 0.2 * f + 0.8 * ewma
        gates.append(ewma < h)
        h = h * h_d if ewma < h else h * 1.05
    got = [s.after_weight_step(f) for f in fisher]
    assert got == gates and s.h == pytest.approx(h) and s.ewma == pytest.approx(ewma)
    assert got[0] is False and any(got) and not all(got)          # starts closed, opens later
    assert s.alpha_steps == sum(gates) and s.weight_steps == len(fisher)
    # a constant Fisher trace settles at r = 10 weight steps per alpha step
    s = DP.Schedule("fimt")
    opened = [s.after_weight_step(0.5) for _ in range(2200)]
    assert sum(opened[200:]) == pytest.approx(2000 / 11, abs=2)


def test_constant_and_alternate_schedules_and_split():
    cs = DP.Schedule("cs10")
    assert [cs.after_weight_step() for _ in range(30)] == [(i + 1) % 10 == 0 for i in range(30)]
    alt = DP.Schedule("alternate")
    assert alt.before_weight_step() and not alt.after_weight_step(1.0)
    assert cs.weight_share == pytest.approx(0.9091, abs=1e-4) and alt.weight_share == 0.5
    with pytest.raises(ValueError, match="unknown schedule 'cs5'"):
        DP.Schedule("cs5")


def _fake_model(wn, wr, candidates=CANDS, steps=2):
    return SimpleNamespace(mixing_weights=lambda: (wn, wr), candidates=candidates, steps=steps)


def test_projection_and_proximity_term():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(5, 5, generator=g)                       # 2 nodes: edges 0-1, then 2-4
    z = darts.project(w, CANDS, 2)
    # by hand: per node, the 2 edges whose best non-none candidate is largest; one 1 per edge
    expect = torch.zeros(5, 5)
    for lo, hi in ((0, 2), (2, 5)):
        best = w[lo:hi, 1:].max(1)
        for e in best.values.argsort(descending=True)[:2]:
            expect[lo + e, 1 + best.indices[e]] = 1
    assert torch.equal(z, expect)
    m = _fake_model(w, w.flip(0))
    rho, c = 0.1, 0.3
    by_hand = sum(c * rho / 2 * (x - darts.project(x, CANDS, 2)).norm() for x in (w, w.flip(0)))
    assert float(DP.proximity(m, c, rho)) == pytest.approx(float(by_hand.detach()))
    assert float(DP.proximity(m, c, rho)) > 0
    assert float(DP.proximity(_fake_model(z, darts.project(w.flip(0), CANDS, 2)), 1.0)) == 0.0
    assert float(DP.proximity(m, 0.0)) == 0.0                      # c = 0 at the start


def _valid_projection(z, steps=2, none=0):
    start = 0
    for n in range(2, 2 + steps):
        rows = z[start:start + n]
        assert set(rows.flatten().tolist()) <= {0.0, 1.0}
        assert (rows.sum(1) > 0).sum() == 2 and rows.sum() == 2 and rows[:, none].sum() == 0
        start += n


def test_admm_z_is_always_a_projection_and_u_follows_eq_25():
    torch.manual_seed(0)
    net = darts.Network(2, 3, 2, CANDS, steps=2, multiplier=2, in_channels=1)
    admm = DP.ADMM(net, rho=0.1, lam_u=0.8, every=3)
    for z in admm.z:
        _valid_projection(z)
    for k in range(12):
        with torch.no_grad():
            for a in net.arch_parameters():
                a.add_(0.5 * torch.randn_like(a))
        u_old = [u.clone() for u in admm.u]
        admm.after_alpha_step()
        for z in admm.z:
            _valid_projection(z)
        if (k + 1) % 3 == 0:                          # Eqs. 23 and 25 by hand
            w = [x.detach() for x in net.mixing_weights()]
            for x, z, u, u0 in zip(w, admm.z, admm.u, u_old):
                assert torch.equal(z, darts.project(x + u0, CANDS, 2))
                assert torch.allclose(u, 0.8 * u0 + x - z)
        else:
            assert all(torch.equal(u, u0) for u, u0 in zip(admm.u, u_old))
    pen = admm.penalty()
    by_hand = sum(0.05 * (x - z + u).norm() for x, z, u in zip(net.mixing_weights(), admm.z, admm.u))
    assert float(pen.detach()) == pytest.approx(float(by_hand.detach()))


def test_crb_prunes_candidates_for_good_and_stops_calling_them():
    torch.manual_seed(0)
    cands = CANDS[1:]                                                 # CRB: no 'none'
    with pytest.raises(ValueError, match="no 'none' candidate"):
        DP.CRBNetwork(2, 3, 2, CANDS, steps=2, multiplier=2, in_channels=1)
    net = DP.CRBNetwork(2, 3, 3, cands, steps=2, multiplier=2, in_channels=1)
    assert torch.allclose(net.alphas_normal, torch.full_like(net.alphas_normal, 0.25), atol=1e-3)
    wn, _ = net.mixing_weights()
    assert torch.equal(wn, net.alphas_normal.clamp(0, 1))
    normal = next(c for c in net.cells if not c.reduction)
    assert normal.node_bns is not None and not normal.node_bns[0].affine
    sep = normal.edges[0].ops[cands.index("sep_conv_3x3_fa")]
    calls = []
    sep.register_forward_hook(lambda *a: calls.append(1))
    x = torch.rand(2, 1, 8, 8)
    net(x)
    assert len(calls) == 1
    with torch.no_grad():
        net.alphas_normal[0, cands.index("sep_conv_3x3_fa")] = -0.01
    alive = net.prune()
    assert alive[0] == net.alphas_normal.numel() - 1
    assert net.alphas_normal[0, cands.index("sep_conv_3x3_fa")] == 0
    net(x)
    assert len(calls) == 1                                           # no longer computed
    with torch.no_grad():
        net.alphas_normal[0, cands.index("sep_conv_3x3_fa")] = 0.5   # an optimizer step back up
    net.prune()
    assert net.alphas_normal[0, cands.index("sep_conv_3x3_fa")] == 0  # pruned for good
    net(x)
    assert len(calls) == 1
    with torch.no_grad():
        net.alphas_normal[1].fill_(-1.0)                              # a whole edge pruned
    net.prune()
    assert torch.isfinite(net(x)).all()


@pytest.mark.slow
def test_darts_prime_search_resumes_exactly_and_logs_alpha_steps(tmp_path):
    args = tiny_args(tmp_path, "--search", "darts", "--epochs", "2", "--darts-prime", "--crb")
    train.main(args + ["--run_name", "full"])
    train.main(args + ["--run_name", "cut", "--stop_after", "1"])
    train.main(["--resume", str(tmp_path / "runs" / "cut")])
    full = torch.load(tmp_path / "runs" / "full" / "checkpoint.pt", weights_only=False)
    cut = torch.load(tmp_path / "runs" / "cut" / "checkpoint.pt", weights_only=False)
    for k in ("alphas_normal", "alphas_reduce", "alive_normal", "alive_reduce"):
        assert torch.equal(full["model"][k], cut["model"][k])
    assert full["searcher"]["schedule"] == cut["searcher"]["schedule"]
    hist = json.load(open(tmp_path / "runs" / "full" / "history.json"))
    assert all(isinstance(h["alpha_steps"], int) and 0 <= h["param_free_share"] <= 1 for h in hist)
    assert sum(h["alpha_steps"] for h in hist) == full["searcher"]["schedule"]["alpha_steps"]
    assert "none" not in full["config"]["candidates"] and full["config"]["activation"] == "crb"
    # --schedule cs10 takes one alpha step per 10 weight steps (64 * 10/11 -> 58 images, 15 batches)
    train.main(tiny_args(tmp_path, "--search", "darts", "--epochs", "1", "--schedule", "cs10",
                         "--admm", "--batch_size", "4", "--run_name", "cs"))
    h = json.load(open(tmp_path / "runs" / "cs" / "history.json"))[0]
    assert h["alpha_steps"] == math.ceil(58 / 4) // 10 == 1


def test_darts_prime_bad_combinations(tmp_path):
    with pytest.raises(SystemExit, match="pick one"):
        train.main(tiny_args(tmp_path, "--search", "darts", "--prox", "--admm"))
    with pytest.raises(SystemExit, match="use them with --search darts"):
        train.main(tiny_args(tmp_path, "--search", "egnas", "--crb"))


def test_parameter_free_share():
    g = darts.Genotype([("skip_connect_usf", 0), ("sep_conv_3x3_fa", 1), ("max_pool_3x3", 0),
                        ("avg_pool_3x3", 2)], [2, 3], [("sep_conv_3x3_fa", 0)] * 4, [2, 3])
    assert DP.parameter_free_share(g) == 0.75
    assert ops.parse_candidate("skip_connect_usf")[0] == "skip_connect"


def test_checkpoint_cells_gives_the_same_gradients_brsf_included():
    cands = ["none", "max_pool_3x3", "skip_connect_brsf", "sep_conv_3x3_brsf", "dil_conv_3x3_fa"]
    torch.manual_seed(0)
    plain = darts.Network(3, 4, 3, cands, steps=2, multiplier=2, in_channels=1)
    x, y = torch.rand(4, 1, 12, 12), torch.randint(0, 4, (4,))
    torch.manual_seed(0)                              # the same weights, cells checkpointed
    checkpointed = darts.CheckpointedNetwork(3, 4, 3, cands, steps=2, multiplier=2, in_channels=1)
    grads = []
    for net in (plain, checkpointed):
        net.zero_grad()
        torch.manual_seed(1)                          # the same brsf draws in both passes
        net.loss(x, y).backward()
        grads.append([p.grad.clone() for p in net.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 10
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
