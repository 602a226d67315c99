"""Tests of plasticity.py against hand computations, a naive unrolled implementation, and the
paper's closed forms (Sec. 2, A.1, Theorem 1, App. B, App. C)."""
import math

import pytest
import torch
import torch.nn.functional as F

import plasticity as P
import plasticity_experiments as PE


def _tiny_net(rounds=2):
    """|V|=3, k=2, two inputs: A = [[1,0],[0,1],[1,1]], complete graph without self-loops."""
    net = P.CapRNN(2, 2, num_v=3, cap=2, p=1.0, rounds=rounds, seed=0)
    with torch.no_grad():
        net.A.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        net.A_mask.fill_(1.0)
        net.G.copy_(1 - torch.eye(3))
    return net


def test_cap_k_keeps_exactly_k_largest():
    torch.manual_seed(0)
    u = torch.rand(5, 40) + 0.1                         # all positive, distinct
    out = P.cap_k(u, 7)
    assert ((out != 0).sum(1) == 7).all()
    thresh = u.sort(1, descending=True).values[:, 6:7]
    assert torch.equal(out, torch.where(u >= thresh, u, torch.zeros_like(u)))


def test_firing_patterns_hand_run_two_rounds():
    net = _tiny_net(rounds=2)
    with torch.no_grad():
        net.W.copy_(torch.tensor([[0.0, 5.0, 0.0], [0.0, 0.0, -10.0], [0.0, 0.0, 0.0]]))
        net.U.copy_(torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, -1.0]]))
    x = torch.tensor([[1.0, 2.0]])
    # round 1: Ax = [1,2,3] -> cap_2 -> [0,2,3]; round 2: W h + Ax = [10+1, -30+2, 0+3] -> [11,0,3]
    # patterns (round 1 = high bit): unit0 "01" = 1, unit1 "10" = 2, unit2 "11" = 3
    assert net.firing(x).tolist() == [[1, 2, 3]]
    assert net(x).tolist() == [[14.0, 8.0]]


def test_one_update_of_W_and_U_by_hand():
    net = _tiny_net(rounds=2)
    R = torch.tensor([[10.0 * a + b for b in range(4)] for a in range(4)])   # R[pre, post]
    Ro = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([1])
    P.train_with_rules(net, x, y, rnn_rule=R, output_rule=Ro, lr=0.5)
    # W = 0, so both rounds give h = [0,2,3]: codes [0, 3, 3]; U = 0 predicts class 0 != 1.
    # W[j, i] = 0.5 R[code_i, code_j] on edges i -> j
    W = torch.tensor([[0.0, 0.5 * 30, 0.5 * 30], [0.5 * 3, 0.0, 0.5 * 33], [0.5 * 3, 0.5 * 33, 0.0]])
    U = torch.tensor([[0.5 * 2, 0.5 * 8, 0.5 * 8],       # predicted row: column 1
                      [0.5 * 1, 0.5 * 7, 0.5 * 7]])      # true row: column 0
    assert torch.allclose(net.W, W) and torch.allclose(net.U, U)
    # multiplicative mode on a graph without the edge 2 -> 1: weights start at 1 (on G), so
    # round 2 is W h + Ax = [2+3+1, 0+2, 2+3] = [6, 2, 5] -> [6, 0, 5]: codes [1, 2, 3];
    # U = 1 gives equal logits, prediction 0 != 1; then w <- w (1 + 0.5 r)
    with torch.no_grad():
        net.G[1, 2] = 0.0
    P.train_with_rules(net, x, y, rnn_rule=R, output_rule=Ro, lr=0.5, mode="multiplicative")
    W = torch.tensor([[0.0, 1 + 0.5 * 21, 1 + 0.5 * 31], [1 + 0.5 * 12, 0.0, 0.0], [1 + 0.5 * 13, 1 + 0.5 * 23, 0.0]])
    U = torch.tensor([[1 + 0.5 * 4, 1 + 0.5 * 6, 1 + 0.5 * 8], [1 + 0.5 * 3, 1 + 0.5 * 5, 1 + 0.5 * 7]])
    assert torch.allclose(net.W, W) and torch.allclose(net.U, U)


def test_multiplicative_weights_rule_doubles_and_halves():
    net = _tiny_net(rounds=1)
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([1])     # units 1, 2 fire; prediction 0
    P.train_with_rules(net, x, y, output_rule=P.multiplicative_weights_output_rule(1), lr=1.0,
                       mode="multiplicative")
    assert net.U.tolist() == [[1.0, 0.5, 0.5], [1.0, 2.0, 2.0]]


def test_perceptron_output_rule_learns_halfspace():
    X, y = P.halfspace(4000, 10, seed=3)
    net = P.CapRNN(10, 2, num_v=1000, cap=500, p=0.5, rounds=1, seed=0)
    P.train_with_rules(net, X[:2000], y[:2000], output_rule=P.perceptron_output_rule(1), epochs=2, seed=0)
    assert P.accuracy(net, X[2000:], y[2000:]) > 0.9


def _naive_unrolled_loss(net, X, y, R, Ro, lr, mode):
    """Per-example differentiable unrolled rule training with an elementwise gather."""
    W = net.G * (0.0 if mode == "additive" else 1.0)
    U = torch.full((net.n_out, net.num_v), 0.0 if mode == "additive" else 1.0)
    for i in range(len(X)):
        h, codes = net.hidden(X[i:i + 1], W)
        codes = codes[0]
        pred = int((h @ U.t()).argmax())
        if pred == int(y[i]):
            continue
        delta = R[codes[None, :], codes[:, None]] * net.G                # delta[j, i] = R[c_i, c_j]
        rows = torch.zeros(net.n_out, net.num_v)
        rows = rows.index_put((torch.tensor([int(y[i])]),), Ro[codes, 0][None])
        rows = rows.index_put((torch.tensor([pred]),), Ro[codes, 1][None])
        W = W + lr * delta if mode == "additive" else W * (1 + lr * delta)
        U = U + lr * rows if mode == "additive" else U * (1 + lr * rows)
    return F.cross_entropy(net(X, W=W, U=U), y)


@pytest.mark.parametrize("mode", ["additive", "multiplicative"])
def test_meta_gradient_equals_naive_unrolled_gradient(mode):
    torch.manual_seed(0)
    X, y = torch.randn(12, 4), torch.randint(0, 3, (12,))
    net = P.CapRNN(4, 3, num_v=8, cap=4, p=0.6, rounds=2, seed=1)
    R = (0.3 * torch.randn(4, 4)).requires_grad_(True)
    Ro = (0.3 * torch.randn(4, 2)).requires_grad_(True)
    naive = _naive_unrolled_loss(net, X, y, R, Ro, 0.1, mode)
    g_naive = torch.autograd.grad(naive, (R, Ro))
    net.reset(mode)
    rec = P._rule_trajectory(net, X, y, R.detach(), Ro.detach(), 0.1, "mistakes", "predicted", mode,
                             torch.arange(len(X)), record=True)
    W, U = P._replay(net, rec, R, Ro, 0.1, "predicted", mode)
    ours = F.cross_entropy(net(X, W=W, U=U), y)
    g_ours = torch.autograd.grad(ours, (R, Ro))
    assert torch.allclose(ours, naive, atol=1e-5)
    for a, b in zip(g_ours, g_naive):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    assert torch.allclose(W, net.W, atol=1e-5) and torch.allclose(U, net.U, atol=1e-5)


def _rule_loss(rnn_rule, out_rule, X, y, batches=4, bs=50):
    loss = 0.0
    for b in range(batches):
        net = P.CapRNN(10, 2, num_v=40, cap=20, p=0.5, rounds=3, seed=5)
        xb, yb = X[b * bs:(b + 1) * bs], y[b * bs:(b + 1) * bs]
        P.train_with_rules(net, xb, yb, rnn_rule=rnn_rule, output_rule=out_rule)
        loss += F.cross_entropy(net(xb), yb).item() / batches
    return loss


def test_meta_learning_lowers_the_loss():
    X, y = P.relu_data(1200, 10, seed=4)
    rr, ro = P.RuleTable(3, seed=0), P.OutputRuleTable(3, seed=0)
    before = _rule_loss(rr, ro, X, y)
    losses = P.meta_learn(lambda: P.CapRNN(10, 2, num_v=40, cap=20, p=0.5, rounds=3, seed=5), X[200:], y[200:],
                          rnn_rule=rr, output_rule=ro, batch_size=50, meta_lr=0.1, epochs=2, steps=30)
    after = _rule_loss(rr, ro, X, y)
    assert len(losses) == 30 and after < 0.85 * before


def test_theorem1_sign_pattern_emerges():
    X, y = P.halfspace(3000, 10, seed=0)
    rule, losses = P.theorem1_gd(lambda: P.CapRNN(10, 2, num_v=60, cap=30, p=0.5, rounds=1, seed=1),
                                 X, y, steps=60, batch_size=50, meta_lr=0.1, seed=1)
    assert P.sign_pattern(rule.table().detach()) == [[-1, 1], [1, -1]]
    assert sum(losses[-10:]) < sum(losses[:10])


def _mse_by_training(net, X, y, rule, lr):
    """App. B's loss by actually training (updates on every example, all rows) and reading U."""
    P.train_with_rules(net, X, y, output_rule=rule, lr=lr, update="all", rows="all")
    h = net.hidden(X)[0]
    return ((h @ net.U.t() - F.one_hot(y, net.n_out).float()) ** 2).mean().item()


def test_mse_optimal_output_rule_beats_random_rules():
    X, y = P.relu_data(600, 10, seed=2)
    net = P.CapRNN(10, 2, num_v=80, cap=40, p=0.5, rounds=1, seed=0)
    h, codes = net.hidden(X)
    r_opt = P.mse_optimal_output_rule(h, codes, y, 2, lr=1e-2)
    best = _mse_by_training(net, X, y, r_opt, 1e-2)
    assert best == pytest.approx(P.mse_output_rule_loss(r_opt, h, codes, y, 2, 1e-2), rel=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        r = torch.randn(2, 2, generator=g)
        assert best <= _mse_by_training(net, X, y, r, 1e-2) + 1e-7
    # stationarity (dL/dr = 0) of the paper's literal scaled chi^1(y) = y version
    r_s = P.mse_optimal_output_rule(h, codes, y, 2, lr=1e-2, scaled=True).double().requires_grad_(True)
    M = P.output_rule_design(h.double(), codes, y, 2, 1e-2, scaled=True)
    loss = ((M @ r_s.reshape(-1) - F.one_hot(y, 2).double()) ** 2).mean()
    g_opt = torch.autograd.grad(loss, r_s)[0].abs().max()
    r_rand = torch.randn(2, 2, generator=g, dtype=torch.float64).requires_grad_(True)
    g_rand = torch.autograd.grad(((M @ r_rand.reshape(-1) - F.one_hot(y, 2).double()) ** 2).mean(), r_rand)[0]
    assert g_opt < 1e-6 * g_rand.abs().max()


@pytest.mark.parametrize("form", ["haploid", "paper"])
def test_evolution_tracks_gd(form):
    loss = lambda Y: (Y - 1.0) ** 2
    out = P.simulate_evolution(loss, n_genes=100, eps=0.01, theta=0.5, generations=300, x0=0.3, form=form)
    ye, yg = torch.tensor(out["y_evolution"]), torch.tensor(out["y_gd"])
    moved = abs(yg[-1] - yg[0])
    assert moved > 0.5 and abs(ye[-1] - 1.0) < abs(ye[0] - 1.0)     # selection lowers the loss
    assert (ye - yg).abs().max() < 0.05 * moved
    assert ((out["x_evolution"] >= 0) & (out["x_evolution"] <= 1)).all()


def test_malformed_rule_tables_are_clear_errors():
    with pytest.raises(ValueError, match="shape"):
        P.RuleTable(2, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="NaN"):
        P.OutputRuleTable(1, [[math.nan, 0.0], [0.0, 1.0]])
    net = _tiny_net(rounds=2)
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([1])
    with pytest.raises(ValueError, match="shape"):
        P.train_with_rules(net, x, y, rnn_rule=torch.zeros(2, 2), output_rule=torch.zeros(4, 2))
    with pytest.raises(ValueError, match="NaN"):
        P.train_with_rules(net, x, y, output_rule=torch.full((4, 2), math.inf))
    with pytest.raises(ValueError, match="mode"):
        P.train_with_rules(net, x, y, output_rule=torch.zeros(4, 2), mode="hebbian")


def _local_targeted_l2(net, X, y, eps, steps=10):
    """A tiny targeted L2 PGD (Sec. 4): nine targets per image, broken if any target succeeds."""
    n_out = net.n_out
    broken = torch.zeros(len(X), dtype=torch.bool)
    for t in range(1, n_out):
        target = (y + t) % n_out
        x = X.clone()
        for _ in range(steps):
            x.requires_grad_(True)
            g, = torch.autograd.grad(F.cross_entropy(net(x), target), x)
            x = x.detach() - 0.5 * eps * g / (g.norm(dim=1, keepdim=True) + 1e-12)
            d = x - X
            x = (X + d * torch.clamp(eps / (d.norm(dim=1, keepdim=True) + 1e-12), max=1.0)).clamp(0, 1)
        with torch.no_grad():
            broken |= net(x).argmax(1) != y
    return broken


def test_table2_robustness_path_with_local_attack():
    g = torch.Generator().manual_seed(0)
    protos = torch.rand(3, 784, generator=g)                   # three noisy prototype "images"
    y = torch.randint(0, 3, (400,), generator=g)
    X = (protos[y] + 0.3 * torch.randn(400, 784, generator=g)).clamp(0, 1)
    rows = PE.experiment_table2(X[:300], y[:300], X[300:], y[300:], quick=True, attack=_local_targeted_l2,
                               epochs=1, meta_steps=3, n_attack=10)
    assert [r["model"] for r in rows] == ["T=1", "T=1*", "T=3"]
    for r in rows:
        assert 0 <= r["robust_eps4"] <= r["robust_eps2"] <= 100
        assert r["accuracy"] > 60                                 # chance is 33%
    # eps = 0 is the clean accuracy; a huge budget breaks everything
    net = P.CapRNN(784, 3, num_v=200, cap=100, rounds=1, seed=0)
    P.train_with_rules(net, X[:300], y[:300], output_rule=P.perceptron_output_rule(1))
    Xa, ya = X[300:340], y[300:340]
    assert PE.robust_accuracy(net, Xa, ya, 0, _local_targeted_l2) == P.accuracy(net, Xa, ya)
    assert PE.robust_accuracy(net, Xa, ya, 50.0, _local_targeted_l2) == 0.0
