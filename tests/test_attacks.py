"""Tests of attacks.py against independent computations: closed-form input gradients of
linear/MLP models (W^T or B^T of the error), hand-computed APGD checkpoints and DLR values,
models built so that the answer of an attack is known, and a small Fashion-MNIST model."""
import copy
import gzip
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import attacks
import rules

DT = torch.float64                    # explicit: other test files change the default dtype
FMNIST = "/usr/share/datasets/fashion-mnist/"


def _idx(path, offset, n, shape):
    """The first n records of an IDX .gz file (only those are decompressed)."""
    size = n * int(torch.tensor(shape).prod())
    with gzip.open(path) as f:
        raw = f.read(offset + size)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)[offset:].view((n,) + shape)


def _data(n_train=2000, n_test=256):
    """Fashion-MNIST subsets in [0, 1] (synthetic 10-class images if the files are absent)."""
    if os.path.exists(FMNIST + "t10k-labels-idx1-ubyte.gz"):
        x = _idx(FMNIST + "train-images-idx3-ubyte.gz", 16, n_train, (1, 28, 28))
        y = _idx(FMNIST + "train-labels-idx1-ubyte.gz", 8, n_train, ()).long()
        xt = _idx(FMNIST + "t10k-images-idx3-ubyte.gz", 16, n_test, (1, 28, 28))
        yt = _idx(FMNIST + "t10k-labels-idx1-ubyte.gz", 8, n_test, ()).long()
        return x.to(DT) / 255, y, xt.to(DT) / 255, yt
    g = torch.Generator().manual_seed(0)
    protos = torch.rand(10, 1, 28, 28, generator=g, dtype=DT)
    y = torch.randint(0, 10, (n_train + n_test,), generator=g)
    x = (protos[y] + 0.3 * torch.randn(len(y), 1, 28, 28, generator=g, dtype=DT)).clamp(0, 1)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: intra-op threads only add synchronization (which costs
    seconds per epoch on a loaded 2-core machine). Restored after the module."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _mlp(rule, hidden=64):
    return nn.Sequential(nn.Flatten(), rules.RuleLinear(784, hidden, rule=rule), nn.ReLU(),
                         rules.RuleLinear(hidden, 10, rule=rule)).to(DT)


@pytest.fixture(scope="module")
def trained():
    """A bp MLP and an fa MLP trained for a few epochs on 2000 Fashion-MNIST images."""
    x, y, xt, yt = _data()
    nets = {}
    for rule in ("bp", "fa"):
        torch.manual_seed(0)
        net = _mlp(rule)
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        for _ in range(6):
            perm = torch.randperm(len(y))
            for i in range(0, len(y), 100):
                idx = perm[i:i + 100]
                opt.zero_grad()
                F.cross_entropy(net(x[idx]), y[idx]).backward()
                opt.step()
        net.zero_grad(set_to_none=True)
        nets[rule] = net
    return nets, xt, yt


def _acc(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).to(DT).mean().item()


def _ce_grad_linear(W, b, x, y):
    """Closed form of d/dx sum_i CE(W x_i + b, y_i) = (softmax(Wx + b) - onehot(y)) W."""
    x2 = x.flatten(1)
    p = torch.softmax(x2 @ W.t() + b, 1)
    return ((p - F.one_hot(y, W.shape[0]).to(DT)) @ W).view_as(x)


# ----------------------------------------------------------------------------------------

ALL = ["fgsm", "pgd", "tpgd", "apgd-ce", "apgd-dlr", "onepixel", "targeted_l2"]


def _run(name, model, x, y, eps, grad):
    if name == "fgsm":
        return attacks.fgsm(model, x, y, eps, grad=grad)
    if name == "pgd":
        return attacks.pgd(model, x, y, eps, eps / 4, 5, grad=grad)
    if name == "tpgd":
        return attacks.tpgd(model, x, eps, eps / 4, 5, grad=grad)
    if name.startswith("apgd"):
        return attacks.apgd(model, x, y, eps, 12, restarts=2, loss=name[5:], grad=grad)
    if name == "onepixel":
        return attacks.one_pixel(model, x, y, 2, steps=5, popsize=20, chunk=300, grad=grad)
    return attacks.targeted_l2(model, x, y, 10 * eps, 0.5, 5, grad=grad)


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("grad", attacks.GRADS)
def test_bounds(trained, name, grad):
    nets, xt, yt = trained
    x, y, eps = xt[:48], yt[:48], 0.1
    adv = _run(name, nets["fa"], x, y, eps, grad)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert adv.min() >= 0 and adv.max() <= 1
    d = (adv - x).flatten(1)
    if name == "targeted_l2":
        assert d.norm(dim=1).max() <= 10 * eps + 1e-9
    elif name == "onepixel":
        assert ((adv - x).abs().sum(1) > 0).flatten(1).sum(1).max() <= 2
    else:
        assert d.abs().max() <= eps + 1e-12
    assert (d.abs().sum(1) > 0).any()                        # the attack did move


@pytest.mark.parametrize("rule", ["bp", "fa"])
def test_fgsm_closed_form(rule):
    """Softmax regression: FGSM = clip(x + eps sign((p - e_y) M)) with M = W (exact) or B."""
    torch.manual_seed(1)
    lin = rules.RuleLinear(12, 5, rule=rule).to(DT)
    with torch.no_grad():
        lin.bias.normal_()
    model = nn.Sequential(nn.Flatten(), lin)
    x = torch.rand(30, 3, 2, 2, dtype=DT)
    y = torch.randint(0, 5, (30,))
    W, b = lin.weight.detach(), lin.bias.detach()
    B = W if rule == "bp" else lin.weight_backward
    for grad, M in (("exact", W), ("feedback", B)):
        x2 = x.flatten(1)
        err = torch.softmax(x2 @ W.t() + b, 1) - F.one_hot(y, 5).to(DT)
        expect = (x + 0.07 * torch.sign((err @ M).view_as(x))).clamp(0, 1)
        assert torch.equal(attacks.fgsm(model, x, y, 0.07, grad=grad), expect)


def test_exact_and_feedback_gradients_on_fa_model():
    torch.manual_seed(2)
    model = nn.Sequential(rules.RuleLinear(20, 16, rule="fa"), nn.Tanh(),
                          rules.RuleLinear(16, 4, rule="fa")).to(DT)
    x, y = torch.rand(10, 20, dtype=DT), torch.randint(0, 4, (10,))
    g_exact = attacks.input_gradient(model, x, y, "exact")
    g_fb = attacks.input_gradient(model, x, y, "feedback")
    # exact == gradient of the same weights converted to bp (plain autograd)
    bp = rules.convert(copy.deepcopy(model), "bp")
    xr = x.clone().requires_grad_(True)
    g_bp, = torch.autograd.grad(F.cross_entropy(bp(xr), y, reduction="sum"), xr)
    assert torch.allclose(g_exact, g_bp, atol=1e-12)
    # feedback == the chain rule with B in place of W, written out by hand
    W1, b1 = model[0].weight.detach(), model[0].bias.detach()
    W2, b2 = model[2].weight.detach(), model[2].bias.detach()
    h = torch.tanh(x @ W1.t() + b1)
    e = torch.softmax(h @ W2.t() + b2, 1) - F.one_hot(y, 4).to(DT)
    g_hand = ((e @ model[2].weight_backward) * (1 - h ** 2)) @ model[0].weight_backward
    assert torch.allclose(g_fb, g_hand, atol=1e-12)
    cos = F.cosine_similarity(g_exact.flatten(), g_fb.flatten(), 0)
    assert cos < 0.9                                          # they really differ
    assert not any(m.exact for m in model.modules() if isinstance(m, rules.RULE_LAYERS))


@pytest.mark.slow
def test_strength_ordering(trained):
    """At the same eps: acc(FGSM) >= acc(PGD) >= acc(APGD), on a trained model."""
    nets, xt, yt = trained
    torch.manual_seed(3)
    for rule in ("bp", "fa"):
        net, eps = nets[rule], 0.05
        a_fgsm = _acc(net, attacks.fgsm(net, xt, yt, eps), yt)
        a_pgd = _acc(net, attacks.pgd(net, xt, yt, eps, eps / 4, 10), yt)
        a_apgd = _acc(net, attacks.apgd(net, xt, yt, eps, 50), yt)
        assert _acc(net, xt, yt) > a_fgsm >= a_pgd >= a_apgd
        assert a_fgsm > 0.05                                  # not a vacuous ordering


@pytest.mark.slow
def test_tpgd_increases_the_kl_divergence(trained):
    """TPGD maximizes KL(p(x) || p(x')): it must beat a random vertex of the same ball."""
    nets, xt, yt = trained
    torch.manual_seed(10)
    net, eps = nets["bp"], 0.1

    def kl(x_adv):
        with torch.no_grad():
            p, logq = torch.softmax(net(xt), 1), torch.log_softmax(net(x_adv), 1)
        return (p * (p.log() - logq)).sum(1).mean().item()

    rand = (xt + eps * torch.randint(0, 2, xt.shape).to(DT).mul(2).sub(1)).clamp(0, 1)
    adv = attacks.tpgd(net, xt, eps, eps / 4, 7)
    assert kl(adv) > 5 * kl(rand)
    assert _acc(net, adv, yt) < _acc(net, xt, yt) - 0.2


def test_apgd_checkpoints_and_dlr():
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (Croce & Hein 2020), w = ceil(p N)
    assert attacks.apgd_checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    assert attacks.apgd_checkpoints(50) == [0, 11, 21, 29, 35, 40, 44, 47, 50]
    z = torch.tensor([[3.0, 1.0, 2.0, -1.0], [0.5, 4.0, 1.0, 3.0]], dtype=DT)
    y = torch.tensor([0, 2])
    # row 0: -(3 - 2) / (3 - 1); row 1: -(1 - 4) / (4 - 1)
    assert torch.allclose(attacks.dlr_loss(z, y), torch.tensor([-0.5, 1.0], dtype=DT))


def test_apgd_reaches_the_linear_optimum():
    """Two-class linear model, label 0 that the ball cannot change: CE(x) = softplus((W_1 -
    W_0) x + b_1 - b_0) is increasing along sign(W_1 - W_0), so its maximizer over the L-inf
    ball and [0, 1] is clip(x + eps sign(W_1 - W_0)); APGD returns its best point."""
    torch.manual_seed(4)
    lin = nn.Linear(8, 2).to(DT)
    with torch.no_grad():
        lin.bias.copy_(torch.tensor([10.0, 0.0]))   # |(W_1 - W_0) x| < 6
    x, y = torch.rand(20, 8, dtype=DT), torch.zeros(20, dtype=torch.long)
    adv = attacks.apgd(lin, x, y, 0.1, 20)
    d = (lin.weight[1] - lin.weight[0]).detach().sign()
    assert torch.allclose(adv, (x + 0.1 * d).clamp(0, 1))


class _Peak(nn.Module):
    """Two logits (0.1, -a (x - c)^2) of a scalar input: CE for label 0 peaks at x = c."""

    def __init__(self, c, a=20.0):
        super().__init__()
        self.register_buffer("c", c)
        self.a = a

    def forward(self, x):
        z1 = -self.a * (x[:, 0] - self.c) ** 2
        return torch.stack([torch.full_like(z1, 0.1), z1], 1)


def test_apgd_step_size_halving_finds_an_interior_peak():
    """The CE maximum at x = c lies inside the ball: sign steps of a fixed size oscillate
    around it, APGD's per-image halving (each image has its own c) converges to it."""
    torch.manual_seed(9)
    c = 0.5 + 0.5 * torch.rand(16, dtype=DT) - 0.25
    model, x, y = _Peak(c), torch.full((16, 1), 0.5, dtype=DT), torch.zeros(16, dtype=torch.long)
    adv = attacks.apgd(model, x, y, 0.3, 50)
    assert (adv[:, 0] - c).abs().max() < 0.01
    fixed = attacks.pgd(model, x, y, 0.3, 0.6, 50)            # step 2 eps, never halved
    assert (fixed[:, 0] - c).abs().max() > 0.1


@pytest.mark.slow
def test_one_pixel_at_most_k_and_finds_the_pixel(trained):
    nets, xt, yt = trained
    torch.manual_seed(5)
    for k in (1, 3):
        adv = attacks.one_pixel(nets["bp"], xt[:24], yt[:24], k, steps=4, popsize=16)
        changed = ((adv - xt[:24]).abs().sum(1) > 0).flatten(1).sum(1)
        assert changed.max() <= k and changed.max() >= 1
    # a model that says class 1 iff pixel (2, 5) of channel 1 is bright: one pixel suffices
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 6 * 7, 2)).to(DT)
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([0.5, 0.0]))
        model[1].weight[1, 1 * 42 + 2 * 7 + 5] = 2.0
    x = torch.rand(6, 2, 6, 7, dtype=DT) * 0.2
    y = torch.zeros(6, dtype=torch.long)
    adv = attacks.one_pixel(model, x, y, 1, steps=30, popsize=40)
    diff = (adv - x).abs().sum(1) > 0
    assert _acc(model, adv, y) == 0
    assert diff.flatten(1).sum(1).eq(1).all() and diff[:, 2, 5].all()


def test_targeted_l2_closed_form_and_broken():
    """Binary softmax regression, one step: x - alpha (p - e_y') W, projected on the
    L2 ball, clipped; with 2 classes there is a single target y' = 1 - y."""
    torch.manual_seed(6)
    lin = nn.Linear(10, 2).to(DT)
    x, y = torch.rand(16, 10, dtype=DT), torch.randint(0, 2, (16,))
    W, b = lin.weight.detach(), lin.bias.detach()
    alpha, eps = 3.0, 0.4
    step = x - alpha * _ce_grad_linear(W, b, x, 1 - y)
    d = step - x
    d = d * (eps / d.norm(dim=1, keepdim=True)).clamp(max=1)
    expect = (x + d).clamp(0, 1)
    adv, broken = attacks.targeted_l2(lin, x, y, eps, alpha, 1, return_broken=True)
    assert torch.allclose(adv, expect, atol=1e-12)
    assert torch.equal(broken, (x + d).clamp(0, 1).matmul(W.t()).add(b).argmax(1) != y)
    # eps = 0: broken exactly when the clean image is misclassified
    nets = nn.Sequential(nn.Linear(10, 4)).to(DT)
    y4 = torch.randint(0, 4, (16,))
    adv0, broken0 = attacks.targeted_l2(nets, x, y4, 0.0, 1.0, 3, return_broken=True)
    assert torch.equal(adv0, x)
    assert torch.equal(broken0, nets(x).argmax(1) != y4)


def test_state_untouched():
    """Parameter .grads, per-module train/eval modes, BN statistics and exact flags."""
    torch.manual_seed(7)
    model = nn.Sequential(rules.RuleConv2d(1, 4, 3, padding=1, rule="brsf"), nn.BatchNorm2d(4),
                          nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                          rules.RuleLinear(4 * 36, 3, rule="fa")).to(DT)
    model.train()
    model[3].eval()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    grads = [p.grad.clone() for p in model.parameters()]
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    x, y = torch.rand(8, 1, 6, 6, dtype=DT), torch.randint(0, 3, (8,))
    for name in ALL:
        for grad in attacks.GRADS:
            _run(name, model, x, y, 0.05, grad)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert all(torch.equal(v, buffers[k]) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == modes
    assert not model[0].exact and not model[5].exact


def test_tables_against_hand_computation():
    """evaluate_robustness/robust_accuracy/accuracy_vs_eps on softmax regression, where the
    FGSM images are known in closed form; one-pixel is shared by the two gradient rows."""
    torch.manual_seed(8)
    lin = rules.RuleLinear(2 * 5 * 5, 3, rule="fa").to(DT)
    model = nn.Sequential(nn.Flatten(), lin)
    x, y = torch.rand(40, 2, 5, 5, dtype=DT), torch.randint(0, 3, (40,))
    loader = [(x[:25], y[:25]), (x[25:], y[25:])]
    W, b = lin.weight.detach(), lin.bias.detach()
    e = torch.softmax(x.flatten(1) @ W.t() + b, 1) - F.one_hot(y, 3).to(DT)
    exp = {}
    for grad, M in (("exact", W), ("feedback", lin.weight_backward)):
        adv = (x + 0.1 * torch.sign((e @ M).view_as(x))).clamp(0, 1)
        exp[grad] = 100 * _acc(model, adv, y)
    rows = attacks.evaluate_robustness(model, loader, ["fgsm", "onepixel"],
                                       overrides={"fgsm": {"eps": 0.1},
                                                  "onepixel": {"pixels": (1, 2), "steps": 3,
                                                               "popsize": 8}})
    assert [r["grad"] for r in rows] == ["exact", "feedback"]
    assert list(rows[0]) == ["grad", "clean", "onepixel-1", "onepixel-2", "fgsm"]
    for r in rows:
        assert r["clean"] == pytest.approx(100 * _acc(model, x, y))
        assert r["fgsm"] == pytest.approx(exp[r["grad"]])
    assert rows[0]["onepixel-1"] == rows[1]["onepixel-1"]
    assert exp["exact"] != exp["feedback"]
    # a bp model: both rows see the same gradient and the same random starts
    bp = rules.convert(copy.deepcopy(model), "bp")
    rows_bp = attacks.evaluate_robustness(bp, loader, ["pgd", "apgd"], overrides={
        "pgd": dict(eps=0.5, alpha=0.01, steps=1), "apgd": dict(eps=0.2, steps=3)})
    assert rows_bp[0]["pgd"] == rows_bp[1]["pgd"] and rows_bp[0]["apgd"] == rows_bp[1]["apgd"]
    assert rows_bp[0]["apgd"] < rows_bp[0]["clean"]
    assert attacks.robust_accuracy(model, loader, "fgsm", "feedback", eps=0.1) == \
        pytest.approx(exp["feedback"])
    curve = attacks.accuracy_vs_eps(model, loader, "fgsm", [0.0, 0.1], "exact")
    assert curve == [(0.0, pytest.approx(100 * _acc(model, x, y))),
                     (0.1, pytest.approx(exp["exact"]))]
    csv = attacks.to_csv(rows).strip().split("\n")
    assert csv[0] == "grad,clean,onepixel-1,onepixel-2,fgsm"
    assert csv[2].startswith("feedback,") and float(csv[2].split(",")[4]) == \
        pytest.approx(exp["feedback"], abs=0.005)
    md = attacks.to_markdown(rows).strip().split("\n")
    assert len(md) == 4 and md[0].startswith("| grad | clean |")


def test_normalize_and_presets():
    x = torch.rand(2, 3, 4, 4)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    out = attacks.Normalize(mean, std)(x)
    for c in range(3):
        assert torch.allclose(out[:, c], (x[:, c] - mean[c]) / std[c])
    bionas = dict((c, kw) for c, _, kw in attacks.attack_columns(
        ["apgd", "onepixel", "tpgd", "pgd", "fgsm"], "bionas"))
    assert list(bionas) == ["onepixel-1", "onepixel-2", "onepixel-3", "onepixel-4",
                            "onepixel-5", "fgsm", "pgd", "tpgd", "apgd"]
    assert bionas["fgsm"]["eps"] == 0.35 and bionas["pgd"]["eps"] == 0.35
    assert bionas["pgd"]["alpha"] == 2 / 255 and bionas["pgd"]["steps"] == 10
    assert bionas["tpgd"] == dict(eps=8 / 255, alpha=2 / 255, steps=7)
    assert bionas["apgd"]["steps"] == 50 and bionas["apgd"]["restarts"] == 1
    std_cols = attacks.attack_columns(["fgsm", "pgd", "tpgd", "apgd"], "standard")
    assert all(kw["eps"] == 8 / 255 for _, _, kw in std_cols)
    with pytest.raises(ValueError):
        attacks.attack_columns(["cw"])
