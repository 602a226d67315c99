"""Eq. 32 (the gradient trigger of GradMax, Firefly, NeST) against an independent computation,
the drivers' hyper-parameters against Table 8 / the authors' code, and "it learns" floors on
Sec. 6.3.2's generated data."""
import torch
import torch.nn.functional as F

import neurogenesis as N
from experiments import thesis_neurogenesis as NE


def _net(seed=0):
    torch.manual_seed(seed)
    m = N.GrowableMLP(6, [5, 4], 3, max_widths=[40, 40]).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))                     # nonzero biases, larger gradients
    return m


def _batch(n=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _eq32_by_hand(m, x, y):
    """Per hidden layer l: (the auxiliary gradient, as the gradient of an explicit zero bridge
    from layer l's input and a ones column to layer l + 1's pre-activation; ||dL/dw_m^in|| and
    ||dL/dw_m^out|| of every neuron m, from torch.autograd.grad of the loss with respect to the
    weight matrices: the fan-in row with its bias, the fan-out column)."""
    layers, out = list(m.layers) + [m.head], []
    for l in range(len(m.layers)):
        bridge = torch.zeros(layers[l + 1].weight.shape[0], layers[l].weight.shape[1] + 1, dtype=torch.float64,
                             requires_grad=True)
        h = inp = x
        for j, layer in enumerate(layers):
            inp = h if j == l else inp                              # layer l's input feeds the bridge
            z = layer(h)
            if j == l + 1:
                z = z + torch.cat([inp, torch.ones(len(inp), 1, dtype=inp.dtype)], 1) @ bridge.t()
            h = z * (z >= 0)                                        # Table 8's ReLU (sigma'(0) = 1)
        loss = F.cross_entropy(z, y)
        gw, gb, gout, gbridge = torch.autograd.grad(loss, [layers[l].weight, layers[l].bias, layers[l + 1].weight,
                                                           bridge])
        out.append((gbridge, torch.sqrt(gw.pow(2).sum(1) + gb.pow(2)), gout.norm(dim=0)))
    return out


def test_neuron_grad_norms_include_fan_in_bias_and_fan_out():
    """Catches: Eq. 32's threshold without the fan-out gradient norms (or without the bias, or
    with squared norms): neuron_grad_norms after a backward against autograd.grad per matrix."""
    m, (x, y) = _net(), _batch()
    ref = _eq32_by_hand(m, x, y)
    m.zero_grad()
    F.cross_entropy(m(x), y).backward()
    for l, (_, n_in, n_out) in enumerate(ref):
        assert torch.allclose(N.neuron_grad_norms(m, l), n_in + n_out, rtol=1e-10, atol=0)


def test_controller_grows_eq32_count_from_the_steps_own_gradients():
    """Catches the same bugs end to end, and an auxiliary gradient or threshold taken after the
    optimizer step instead of from the step's own backward: Neurogenesis with NeST (Eq. 32; its
    initialization adds exactly k neurons) grows, per layer, the number of singular values of the
    bridge gradient above half of sum_m ||dL/dw_m^in|| + ||dL/dw_m^out|| (the authors' code's
    half sum), computed by hand on the network before the step. On this batch the count without
    the fan-out norms differs (checked), so dropping them changes what grows."""
    m, (x, y) = _net(), _batch()
    hand = _eq32_by_hand(m, x, y)
    count = lambda aux, norms: int((torch.linalg.svdvals(aux) > norms.sum() / 2).sum())   # noqa: E731
    expect = [count(aux, n_in + n_out) for aux, n_in, n_out in hand]
    assert expect != [count(aux, n_in) for aux, n_in, _ in hand] and max(expect) > 0
    ng = N.Neurogenesis(m, torch.optim.Adam(m.parameters(), 1e-3), "NeST", max_widths=[40, 40])
    ng.start(x)
    ng.step(x, y)
    assert [sum(k for _, l2, k in ng.history["events"] if l2 == l) for l in range(2)] == expect


def test_drivers_use_the_thesis_hyper_parameters(monkeypatch):
    """Catches a generated-data driver that drifts from Sec. 6.3.2 / Table 8 / the authors'
    code: initial width 4, max 512, batch 128, buffer 1024, Adam 3e-4 (train_growing's default),
    (20 + 4 n_f) epochs per hidden layer; the static baseline 64 wide and not growing."""
    seen = []

    def spy(model, strategy, data, epochs=None, batch_size=None, max_widths=None, buffer_size=None, **kw):
        seen.append(dict(strategy=strategy, widths=model.widths, epochs=epochs, batch=batch_size,
                         max=max_widths, buffer=buffer_size, lr=kw.get("lr", 3e-4), n=len(data[0])))
        return dict(widths=model.widths, test_accuracy=0.5, train_seconds=0.0)
    monkeypatch.setattr(NE, "train_growing", spy)
    sizes = dict(n_fs=(8,), hidden=(1, 2), strategies=("GradMax",), samples=5000)
    rows = NE.experiment_generated(dict(NE.SIZES[False], **sizes), (1,), lambda key, work, d: work(None, None))
    assert [(s["strategy"], s["widths"], s["epochs"]) for s in seen] == [
        ("GradMax", [4], 52), (None, [64], 52), ("GradMax", [4, 4], 104), (None, [64, 64], 104)]
    assert all((s["batch"], s["max"], s["buffer"], s["lr"], s["n"]) == (128, 512, 1024, 3e-4, 4500) for s in seen)
    assert [r["strategy"] for r in rows] == ["GradMax", "Static 64"] * 2


def test_static_64_64_2_learns_generated_n_f_2_above_95_percent():
    """An "it learns" floor: the static 64-[64]-2 MLP of Adam 3e-4, batch 128, reaches > 95%
    test accuracy on Sec. 6.3.2's n_f = 2 data within 3 epochs (a broken forward, loss, optimizer
    hookup or data labelling stays near 50%)."""
    data = NE.generated_data(2)
    torch.manual_seed(1)
    model = N.GrowableMLP(64, [64], 2)
    res = NE.train_growing(model, None, data, epochs=3, batch_size=128, max_widths=64, seed=1)
    assert res["test_accuracy"] > 0.95 and model.widths == [64]


def test_growing_from_width_4_learns_generated_n_f_2():
    """The same floor for growth from Sec. 6.3.2's width 4: NORTH-Random (Eq. 28) and GradMax
    (Eq. 32) grow and reach > 93% within 4 epochs on n_f = 2 (a trigger that never fires leaves 4
    neurons; growth that breaks the function or the optimizer state stalls learning)."""
    data = NE.generated_data(2)
    for strategy in ("NORTH-Random", "GradMax"):
        torch.manual_seed(1)
        model = N.GrowableMLP(64, [4], 2, max_widths=512)
        res = NE.train_growing(model, strategy, data, epochs=4, batch_size=128, max_widths=512, buffer_size=1024,
                               seed=1)
        assert model.widths[0] > 8 and res["test_accuracy"] > 0.93, (strategy, model.widths, res["test_accuracy"])
