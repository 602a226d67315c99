"""DYNO (Maile's thesis Ch. 7): Eqs. 38-39 arithmetic, SELECT_PRUNE's order, pruning that keeps
outputs and optimizer state, phi* bookkeeping, the fixed output layer, FLOPs, resume."""
import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import dyno as D
import neurogenesis as N


def test_prune_and_grow_trigger_arithmetic():
    """Catches: min(0, .) as printed, (1 + delta) / (1 - delta) swapped between the triggers, or
    the threshold scaled by phi instead of phi*: phi* = 1 must never grow (phi <= 1)."""
    assert D.trig_prune(100, 0.9, 1.0) == 7                      # floor(100 (0.97 - 0.9))
    assert D.trig_prune(100, 0.98, 1.0) == 0
    assert D.trig_grow(100, 0.9, 0.8) == 7                       # floor(100 (0.9 - 0.824))
    assert D.trig_grow(100, 1.0, 1.0) == 0 and D.trig_grow(100, 0.5, 0.8) == 0
    assert D.trig_prune(50, 0.5, 0.5) == 0 and D.trig_grow(50, 0.5, 0.5) == 0


def _acts(n=40):
    """Columns: A (orthogonal to all), B, B' (identical), C (cosine 0.5 with B, B' and E),
    D (dormant), E (cosine 0.5 with C only)."""
    h = torch.zeros(n, 6, dtype=torch.float64)
    h[0:10, 0] = 1.0
    h[10:20, 1] = h[10:20, 2] = 1.0
    h[15:25, 3] = 1.0
    h[20:30, 5] = 1.0
    return h


def test_select_prune_dormant_first_one_of_twins_never_the_orthogonal():
    """Catches: dormant neurons not taken first, similarities not updated after a removal (the
    second twin would follow the first; by hand: after D and B, C's similarities have norm
    0.71 > B''s 0.5), or the orthogonal neuron chosen (argmin instead of argmax)."""
    h = _acts()
    assert D.select_prune(h, 1) == [4]
    assert D.select_prune(h, 2) == [4, 1]                        # one of the twins
    assert D.select_prune(h, 3) == [4, 1, 3]                     # then C, not the other twin
    for k in (1, 2, 3):
        assert 0 not in D.select_prune(h, k)
    maps = h.t().reshape(1, 6, 8, 5)                              # the same as a conv layer's channels
    assert D.select_prune(maps, 3) == [4, 1, 3]


def test_dormant_prune_keeps_outputs_and_cuts_optimizer_rows():
    """Catches: pruning the wrong fan-in row / fan-out column (outputs change), or Adam state
    left at the old shape (the next step crashes) or cut at the wrong rows."""
    torch.manual_seed(0)
    m = N.GrowableMLP(4, [6, 5], 3).double()
    x = torch.rand(30, 4, dtype=torch.float64)                    # inputs >= 0
    y = torch.randint(0, 3, (30,))
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    opt.zero_grad()
    F.cross_entropy(m(x), y).backward()
    opt.step()
    with torch.no_grad():
        m.layers[0].weight.abs_()                                 # every neuron alive on inputs >= 0 ...
        m.layers[0].bias.fill_(0.1)
        m.layers[0].weight[2] = -m.layers[0].weight[2]           # ... but neuron 2: z < 0 on every input
        m.layers[0].bias[2] = -1.0
        before = m(x)
    with torch.no_grad():
        posts = m.forward_all(x)[3]
    assert D.select_prune(posts[0], 1) == [2]
    old_state = opt.state[m.layers[1].weight]["exp_avg"].clone()
    m.prune_neurons(0, [2], opt)
    with torch.no_grad():
        assert float((m(x) - before).abs().max()) <= 1e-13
    assert torch.equal(opt.state[m.layers[1].weight]["exp_avg"], old_state[:, [0, 1, 3, 4, 5]])
    opt.zero_grad()
    F.cross_entropy(m(x), y).backward()
    opt.step()                                                    # shapes agree


def test_dyno_changes_hidden_layers_only_and_refreshes_phi_star_after_change():
    """Catches: the output layer resized, phi* refreshed without a change (then slow drifts
    would never trigger), or phi* left stale after a change."""
    torch.manual_seed(0)
    m = N.GrowableMLP(8, [12, 10], 3)
    x = torch.rand(300, 8)
    y = torch.randint(0, 3, (300,))                              # seeded above
    with torch.no_grad():
        m.layers[0].weight[:4] = -1.0                            # 4 dormant neurons in layer 0
        m.layers[0].bias[:4] = -1.0
    d = D.DYNO(m, torch.optim.Adam(m.parameters(), 1e-3, weight_decay=1e-3), every=5, min_buffer=64)
    d.start(x[:64])
    d.phi_star = [1.0, 0.5]                                       # layer 0 will prune, layer 1 will grow
    h0 = d.buffer.activations(m)[3][0]
    phi0 = N.effective_dimension(h0)
    dormant = set(torch.nonzero(h0.abs().sum(0) == 0).flatten().tolist())
    changes = d.grow_and_prune()
    (l0, p0, g0), (l1, p1, g1) = changes
    assert p0 == int(12 * (0.97 - phi0)) > 0 and set(d.history["evaluations"][0]["widths"]) and p0 <= len(dormant)
    assert m.widths[0] == 12 - p0 + g0 and g1 > 0 and m.head.out_features == 3
    phi = [N.activation_metric(h) for h in d.buffer.activations(m)[3]]
    assert d.phi_star == pytest.approx(phi)
    d.phi_star = [0.2, 0.2]                                       # below both: prune nothing, grow...
    widths = list(m.widths)
    for i in range(12):
        d.step(x[i * 20:(i + 1) * 20], y[i * 20:(i + 1) * 20])
    prev, ev = [0.2, 0.2], d.history["evaluations"][1:]
    assert len(ev) == 3 and any(e["grown"][l] for e in ev for l in range(2))
    for e in ev:
        for l in range(2):
            if not (e["pruned"][l] or e["grown"][l]):
                assert e["phi_star"][l] == prev[l]                 # untouched without a change
            else:
                assert e["phi_star"][l] != prev[l]
        prev = e["phi_star"]
    assert m.head.weight.shape == (3, m.widths[-1]) and m.widths != widths


def test_flops_closed_form():
    """Catches: conv FLOPs without the spatial size, or the head left out."""
    m = N.GrowableCNN((1, 8, 8), [3, 4], 5, dense_widths=[6])
    conv = 2 * (3 * 1 * 9 * 64 + 4 * 3 * 9 * 16)
    assert D.flops(m) == conv + 2 * (4 * 6 + 6 * 5)
    assert D.flops(N.GrowableMLP(10, [7], 2)) == 2 * (10 * 7 + 7 * 2)


def test_dyno_resumes_bit_identically():
    """Catches: a checkpoint without phi*, the buffer, the optimizer state or the reshaping of
    the model to its grown/pruned widths (the checkpoint falls just before a structural change)."""
    x = torch.rand(400, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    y = (x.mean((1, 2, 3)) > 0.5).long()

    def build():
        torch.manual_seed(1)
        m = N.GrowableCNN((1, 6, 6), [4], 2, dense_widths=[8])
        return m, D.DYNO(m, torch.optim.Adam(m.parameters(), 1e-2), every=3, min_buffer=120)
    m, d = build()
    d.start(x[:120])
    for i in range(5):
        d.step(x[i * 20:(i + 1) * 20], y[i * 20:(i + 1) * 20])
    d.phi_star = [0.3, 0.3]                                       # the evaluation at step 6 grows
    state = copy.deepcopy(d.state_dict())
    for i in range(5, 14):
        d.step(x[i * 20:(i + 1) * 20], y[i * 20:(i + 1) * 20])
    m2, d2 = build()
    d2.load_state_dict(state)
    for i in range(5, 14):
        d2.step(x[i * 20:(i + 1) * 20], y[i * 20:(i + 1) * 20])
    assert sum(sum(e["grown"]) for e in d.history["evaluations"] if e["step"] > 5) > 0
    assert m.widths == m2.widths
    for p, q in zip(m.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(p, q)


def test_phi_logged_per_layer_and_warning_only_when_every_layer_is_frozen():
    """Catches: phi not logged (or logged after the changes), a frozen flag that ignores phi*
    (phi* < 1/(1 + delta) lets a full-rank layer grow) and a warning that is silent when no
    layer can move, or raised while one can. phi against the SVD count of Eq. 27."""
    torch.manual_seed(0)
    x = torch.randn(200, 8)
    m = N.GrowableMLP(8, [6, 5], 3)                               # 6, 5 neurons on 8 Gaussian inputs: full rank
    d = D.DYNO(m, torch.optim.Adam(m.parameters(), 1e-3), min_buffer=64)
    d.start(x[:64])
    phi = [N.effective_dimension(h) for h in d.buffer.activations(m)[3]]
    assert phi == [1.0, 1.0]
    with pytest.warns(UserWarning, match="every hidden layer is frozen"):
        d.grow_and_prune()
    e = d.history["evaluations"][-1]
    assert e["phi"] == phi and e["frozen"] == [True, True] and m.widths == [6, 5]
    d.phi_star = [1.0, 0.5]                                       # Eq. 39: floor(5 (1 - 1.03 * 0.5)) = 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d.grow_and_prune()
    e = d.history["evaluations"][-1]
    assert e["frozen"] == [True, False] and e["grown"] == [0, 2] and m.widths == [6, 7]
    with torch.no_grad():
        m.layers[0].weight[:3], m.layers[0].bias[:3] = 0.0, -1.0     # 3 dormant: layer 0 loses rank
    d.buffer.stale()
    d.phi_star = [1.0, 1.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d.grow_and_prune()
    e = d.history["evaluations"][-1]
    assert e["phi"][0] == 0.5 and e["frozen"][0] is False and e["pruned"][0] == math.floor(6 * (0.97 - 0.5))
