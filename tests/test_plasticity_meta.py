"""Tests of meta-learning the plasticity rules (A.1) against hand computations: BrainNet's
recurrence by hand, the rule moved by its own meta-gradient (Adam's first step), the share of
meta-steps with an exactly zero rule gradient on a hand-built case, and the binary output rule's
antisymmetry (only r(a, 0) - r(a, 1) reaches the loss). Each docstring names the bug it catches."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import plasticity as P
from experiments import plasticity_paper as PE


def _tiny(recurrence, rounds=2):
    """|V|=3, k=2, A = [[1, 0], [0, 1], [1, -1]], complete graph without self-loops."""
    net = P.CapRNN(2, 2, num_v=3, cap=2, p=1.0, rounds=rounds, seed=0, recurrence=recurrence)
    with torch.no_grad():
        net.A.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]))
        net.G.copy_(1 - torch.eye(3))
    return net


def test_brainnet_recurrence_by_hand():
    """Bug: BrainNet's round reads W h + A x (the text's) instead of W (h + A x) + b, or the
    bias is left out of round 1."""
    x = torch.tensor([[2.0, 1.0]])
    W = torch.tensor([[0.0, 1.0, -1.0], [-1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])   # W[j, i]: edge i -> j
    net = _tiny("brainnet")
    net.bias = 0.5
    with torch.no_grad():
        net.A.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -0.5]]))   # A x = (2, 1, 1.5)
    # round 1: c_2(ReLU(A x + b)) = c_2(2.5, 1.5, 2.0) = (2.5, 0, 2.0)
    # round 2: W (h + A x) + b = W (4.5, 1, 3.5) + 0.5 = (-2.0, -0.5, 6.0) -> (0, 0, 6)
    h, codes = net.hidden(x, W)
    assert torch.allclose(h[0], torch.tensor([0.0, 0.0, 6.0]))
    assert codes[0].tolist() == [2, 0, 3]                   # patterns "10", "00", "11"
    text = _tiny("text")
    with torch.no_grad():
        text.A.copy_(net.A)
    # text: round 1 c_2(2, 1, 1.5) = (2, 0, 1.5); round 2 W h + A x = (0.5, 0.5, 3.5), a tie for the 2nd place
    t = text.hidden(x, W)[0][0]
    assert t[2] == 3.5 and sorted(t[:2].tolist()) == [0.0, 0.5]


def _unrolled_grad(net, X, y, R, Ro, lr):
    """d CE / d R by autograd through a per-example unrolling (additive, on mistakes, rows
    predicted), written independently of plasticity's replay."""
    R = R.clone().requires_grad_(True)
    W, U = net.G * 0.0, torch.zeros(net.n_out, net.num_v)
    for i in range(len(X)):
        h, c = net.hidden(X[i:i + 1], W)
        c, pred, yi = c[0], int((h @ U.t()).argmax()), int(y[i])
        if pred == yi:
            continue
        W = W + lr * R[c[None, :], c[:, None]] * net.G
        U = U.index_add(0, torch.tensor([yi, pred]), lr * torch.stack([Ro[c, 0], Ro[c, 1]]))
    loss = F.cross_entropy(net(X, W=W, U=U), y)
    return torch.autograd.grad(loss, R)[0]


@pytest.mark.parametrize("recurrence", ["text", "brainnet"])
def test_meta_learn_moves_the_rnn_rule_by_its_gradient(recurrence):
    """Bug: the RNN rule gets no meta-gradient (W.detach() before the loss, or the RNN rule left
    out of the optimizer): with weight decay 0, Adam's first step is -meta_lr * sign(dL/dR)."""
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(12, 5, generator=g), torch.randint(0, 3, (12,), generator=g)
    mk = lambda: P.CapRNN(5, 3, num_v=10, cap=5, p=0.6, rounds=2, seed=1, recurrence=recurrence)  # noqa: E731
    start = 0.5 + torch.rand(4, 4, generator=g)           # positive: round 2 fires in both recurrences
    Ro = P.perceptron_output_rule(2).table().detach()
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))   # meta_learn's batch order (seed 0)
    grad = _unrolled_grad(mk().reset(), X[perm], y[perm], start, Ro, 0.1)
    assert (grad.abs() > 1e-5).sum() >= 4                 # the case carries a gradient
    rule = P.RuleTable(2, start)
    out = P.meta_learn(mk, X, y, rnn_rule=rule, output_rule=Ro, batch_size=12, meta_lr=1e-3,
                       weight_decay=0.0, lr=0.1, steps=1)
    step = rule.table().detach() - start
    big = grad.abs() > 1e-5
    assert torch.allclose(step[big], -1e-3 * torch.sign(grad[big]), atol=1e-6)
    assert out.zero_grad == {"rnn": [False]} and out.zero_grad_share() == 0.0


def _cycling_factory(pattern, recurrence="text"):
    """Net factory handing out, step after step, a net with A = 0 ("dead") or the usual A
    ("live"): with A = 0 no unit fires in any round, h = 0 and the logits are 0 whatever W and
    U, so both rules' meta-gradients are exactly zero (the hand computation)."""
    calls = []

    def make():
        net = P.CapRNN(5, 3, num_v=10, cap=5, p=0.6, rounds=3, seed=1, recurrence=recurrence)
        if pattern[len(calls) % len(pattern)] == "dead":
            with torch.no_grad():
                net.A.zero_()
        calls.append(1)
        return net
    return make


@pytest.mark.parametrize("pattern, share", [(("dead", "live", "dead", "dead"), 0.75),
                                            (("live", "live", "dead", "live"), 0.25),
                                            (("live",), 0.0)])
def test_zero_gradient_share_on_a_hand_built_case(pattern, share):
    """Bug: the zero-gradient flag tests `not grad.all()` (a rule with one unvisited entry
    counts as untrained) or is read from the wrong rule, or the warning fires at the threshold."""
    g = torch.Generator().manual_seed(3)
    X, y = torch.randn(16, 5, generator=g), torch.tensor([1, 2] * 8)   # class 0 never: every net errs
    rule, out_rule = P.RuleTable(3, seed=4), P.OutputRuleTable(3, seed=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = P.meta_learn(_cycling_factory(pattern), X, y, rnn_rule=rule, output_rule=out_rule,
                           epochs=10 ** 9, batch_size=16, weight_decay=0.0, lr=0.1, steps=8)
    dead = [pattern[i % len(pattern)] == "dead" for i in range(8)]
    assert out.zero_grad["rnn"] == dead and out.zero_grad["output"] == dead
    assert out.zero_grad_share() == share and out.zero_grad_share("output") == share
    msgs = [str(w.message) for w in caught if "the rule is not being trained" in str(w.message)]
    assert len(msgs) == (2 if share > P.ZERO_GRAD_WARN else 0)


def test_zero_gradient_share_of_the_text_protocol_with_a_negative_rule():
    """Bug: the share counts steps by the loss (or by the output rule) rather than by the RNN
    rule's gradient. With the text's recurrence and an RNN rule < 0 everywhere, W <= 0 after the
    first mistake, W h + A x <= A x, and with a strongly negative W no unit fires in round 2, so
    round 3 repeats round 1 and the RNN rule's gradient is exactly zero at every step, while the
    output rule (trained alongside) still gets one."""
    X, y = PE.halfspace(64, 5, seed=0)
    mk = lambda: P.CapRNN(5, 2, num_v=10, cap=5, p=0.6, rounds=3, seed=1)   # noqa: E731
    with pytest.warns(RuntimeWarning, match="the rule is not being trained: the rnn rule"):
        out = P.meta_learn(mk, X, y, rnn_rule=P.RuleTable(3, -100 * torch.ones(8, 8)),
                           output_rule=P.OutputRuleTable(3, seed=0), epochs=10 ** 9, batch_size=32,
                           weight_decay=0.0, lr=1.0, steps=4)
    assert out.zero_grad_share("rnn") == 1.0 and out.zero_grad_share("output") == 0.0


def test_zero_started_binary_output_rule_stays_antisymmetric():
    """Bug: updates on correct predictions in the mistakes scheme (the true row alone gets
    column 0, so the row mean reaches the loss), or init="zeros" ignored. On two classes with
    updates on mistakes, only r(a, 0) - r(a, 1) moves the logit difference, so the meta-gradient
    is antisymmetric in the columns and a zero-started rule stays r(a, 1) = -r(a, 0)."""
    X, y = PE.halfspace(400, 10, seed=1)
    rule = P.OutputRuleTable(1, init="zeros")
    assert not rule.table().detach().any()
    P.meta_learn(lambda: P.CapRNN(10, 2, 40, 20, 0.5, 1, seed=2), X, y, output_rule=rule,
                 epochs=10 ** 9, batch_size=100, meta_lr=0.05, steps=12, seed=0)
    t = rule.table().detach()
    assert t.abs().min() > 0.05                             # it moved
    assert torch.allclose(t[:, 0], -t[:, 1], atol=1e-6)


def test_binary_loss_is_independent_of_the_output_rules_row_mean():
    """Bug: as above (updates on correct predictions). Adding m_a to both columns of row a adds
    eta m_a chi^a to the true and the predicted row alike: on two classes the logit difference,
    the predictions and the cross-entropy are unchanged; on three classes they are not."""
    def loss_after(rule, n_out):
        X, y = PE.halfspace(300, 10, seed=3) if n_out == 2 else (torch.randn(300, 10), torch.arange(300) % 3)
        net = P.train_with_rules(P.CapRNN(10, n_out, 40, 20, 0.5, 1, seed=4), X, y, output_rule=rule)
        return F.cross_entropy(net(X), y).item(), net(X).argmax(1)
    base = torch.tensor([[-0.3, 0.8], [1.1, -0.4]])
    shifted = base + torch.tensor([[0.7], [-0.9]])          # row means moved by +0.7 and -0.9
    (l0, p0), (l1, p1) = loss_after(base, 2), loss_after(shifted, 2)
    assert abs(l0 - l1) < 1e-5 and torch.equal(p0, p1)
    assert abs(loss_after(base, 3)[0] - loss_after(shifted, 3)[0]) > 1e-3
