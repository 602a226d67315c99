"""Neurogenesis (Maile's thesis Ch. 6, NORTH*): metrics against closed forms, trigger arithmetic,
every initialization against its defining property, optimizer state, presets, resume, errors."""
import copy
import math
import os

import pytest
import torch
import torch.nn.functional as F

import neurogenesis as N
import neurogenesis_init as I
from experiments import thesis_neurogenesis as NE


def _same(a, b, rel=1e-13):
    """Equal in float64 up to summation order (BLAS may add the same nonzero terms differently
    once zero columns are appended): a planted bug moves outputs by ~1e-2."""
    return float((a - b).detach().abs().max()) <= rel * float(b.detach().abs().max())


def _orthonormal(n, m, seed=0):
    q, _ = torch.linalg.qr(torch.randn(n, m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def test_effective_dimension_closed_forms():
    """Catches: dividing H by n instead of sqrt(n) (every sigma tiny -> 0), counting >= eps or
    all singular values, or the fast inertia count (activation_metric) disagreeing with the SVD."""
    n, m = 50, 8
    h = _orthonormal(n, m) * math.sqrt(n)            # H/sqrt(n) has orthonormal rows: all sigma = 1
    assert N.effective_dimension(h) == 1.0 and N.activation_metric(h) == 1.0
    a, b = _orthonormal(n, 3, 1), _orthonormal(m, 3, 2)
    assert N.effective_dimension(a @ b.t() * math.sqrt(n)) == 3 / 8            # rank r -> r / M
    s = torch.tensor([0.9, 0.3, 0.02, 0.0101, 0.0099, 0.005, 0.001, 0.0], dtype=torch.float64)
    h = _orthonormal(n, m, 3) @ torch.diag(s) @ _orthonormal(m, m, 4).t() * math.sqrt(n)
    assert N.effective_dimension(h, 0.01) == 4 / 8 and N.activation_metric(h, 0.01) == 4 / 8
    maps = (_orthonormal(4 * 9, 5, 5) * 6).reshape(4, 3, 3, 5).permute(0, 3, 1, 2)   # conv: n*H*W samples
    assert N.effective_dimension(maps) == 1.0
    with pytest.raises(ValueError, match="more samples than neurons"):
        N.effective_dimension(torch.randn(8, 8))


def test_orthogonality_gap_closed_forms():
    """Catches: Eq. 29 as printed (no identity: identical columns would give 1 - 1 = 0) or the
    n x n matrix built from the wrong side (h^T h instead of h h^T)."""
    n = 10
    v = torch.rand(n, 1, dtype=torch.float64) + 0.1
    assert N.orthogonality_gap(v.repeat(1, 6)) == pytest.approx(1 - math.sqrt(1 - 1 / n), abs=1e-12)
    assert N.orthogonality_gap(_orthonormal(12, n).t() * 3) == pytest.approx(1.0, abs=1e-12)  # h h^T = 9 I_n
    h = torch.rand(n, 7, dtype=torch.float64)
    hh = h @ h.t() / h.pow(2).sum()
    assert N.orthogonality_gap(h) == pytest.approx(float(1 - (hh - torch.eye(n) / n).norm()), abs=1e-12)


def test_select_scores_equal_svd_of_joined_activations():
    """Catches: a wrong inertia sign (count off by one), a lost residual |r| or quadrature error
    in sum(sigma), against torch.linalg.svdvals of [h, a] per candidate; the duplicate of an
    existing neuron must score below a novel direction."""
    g = torch.Generator().manual_seed(0)
    n = 40
    h = torch.relu(torch.randn(n, 6, generator=g, dtype=torch.float64))
    h[:, 5] = 0                                                  # a dormant neuron: rank-deficient h
    cand = torch.cat([torch.relu(torch.randn(n, 5, generator=g, dtype=torch.float64)), h[:, :1],
                      1e-3 * torch.randn(n, 1, generator=g, dtype=torch.float64)], 1)
    got = N.select_scores(h, cand, 0.01)
    for j in range(cand.shape[1]):
        s = torch.linalg.svdvals(torch.cat([h, cand[:, j:j + 1]], 1) / math.sqrt(n))
        assert float(got[j]) == pytest.approx(float((s > 0.01).sum() + s.sum()), abs=1e-6)
    assert got[5] < got[:5].min()                                # duplicate below every novel one


def test_trigger_arithmetic():
    """Catches: min(0, .) as printed (never positive), no positive part, the single floor that
    never grows a full-rank layer of 4 (Sec. 6.3.2), Eq. 32 with the full sum or another
    threshold, grow() past the maximum width."""
    assert N.trigger_count(100, 1.0, 1.0, 0.97) == 3
    assert N.trigger_count(4, 1.0, 1.0, 0.97) == 1                # floor(3.88) = 3 -> 4 - 3
    assert N.trigger_count(100, 0.5, 1.0, 0.97) == 0
    assert N.trigger_count(50, 0.9, 0.5, 0.99) == 45 - 24
    aux = torch.diag(torch.tensor([5.0, 3.0, 1.0, 0.5]))
    norms = torch.tensor([1.0, 1.0, 1.0])                        # threshold (sum / 2) = 1.5
    assert N.gradient_trigger(aux, norms) == 2 and N.gradient_trigger(aux, 2 * norms) == 1
    assert N.gradient_trigger(aux[:2], norms * 0) == 2           # at most M_{l+1} singular values
    m = N.GrowableMLP(6, [4], 2, max_widths=[8])
    assert m.grow(0, 10, "NORTH-Random") == 4 and m.widths == [8]   # capped at the maximum width


def _mlp(seed=0, widths=(5, 4), n_in=6, n_out=3, dtype=torch.float64):
    torch.manual_seed(seed)
    m = N.GrowableMLP(n_in, list(widths), n_out).to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))                    # nonzero biases
    return m


def _data(n=60, n_in=6, n_out=3, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, n_in, generator=g, dtype=dtype), torch.randint(0, n_out, (n,), generator=g)


def _new_rows_grads(m, l, k, x, y):
    m.zero_grad()
    F.cross_entropy(m(x), y).backward()
    return m.layers[l].weight.grad[-k:], m.next_of(l).weight.grad[:, -k:]


@pytest.mark.parametrize("strategy", ["NORTH-Select", "NORTH-Pre", "NORTH-Random", "NORTH-Weight", "GradMax"])
@pytest.mark.parametrize("layer", [0, 1])
def test_growth_keeps_mlp_outputs_exactly(strategy, layer):
    """Catches: a nonzero new fan-out (NORTH*) or fan-in/bias (GradMax), fan-out columns put in
    the wrong place, or the next layer's weights disturbed; and the dead-neuron bug: after a
    zero-fan-out growth the new fan-in gradient is exactly 0 while the fan-out gradient is not."""
    m, (x, y) = _mlp(widths=(5, 3), n_in=8), _data(n_in=8)  # ker W has room for 2 (NORTH-Weight)
    with torch.no_grad():
        before = m(x)
    added = m.grow(layer, 2, strategy, x=x, y=y, candidates=20)
    assert added == 2 and m.widths[layer] == [5, 3][layer] + 2
    assert _same(m(x), before)
    g_in, g_out = _new_rows_grads(m, layer, 2, x, y)
    if strategy == "GradMax":
        assert (g_in.norm(dim=1) > 0).all() and not m.layers[layer].weight[-2:].any()
    else:
        assert not g_in.any() and (g_out.norm(dim=0) > 0).all()
        norms = m.layers[layer].weight[-2:].norm(dim=1)           # rescaled to the mean fan-in norm
        assert torch.allclose(norms, m.layers[layer].weight[:-2].norm(dim=1).mean().expand(2), rtol=1e-9)


@pytest.mark.parametrize("strategy", ["NORTH-Select", "NORTH-Random", "NORTH-Weight"])
def test_growth_keeps_cnn_outputs_exactly(strategy):
    """Catches: BatchNorm grown with the wrong entries (weight 0, var 0 -> NaN, mean != 0) or
    the fan-out placed in the wrong input channel of the next conv / the dense layer after the
    global average pooling, in training (batch statistics) and evaluation mode."""
    torch.manual_seed(0)
    m = N.GrowableCNN((2, 8, 8), [3, 4], 3, dense_widths=[5]).double()
    x = torch.rand(12, 2 * 8 * 8, dtype=torch.float64)       # 12 samples: more than dense layer 2's 9
    m.train()
    with torch.no_grad():
        m(x)                                                      # running statistics move
    for train in (True, False):
        for layer in (0, 1, 2):
            m.train(train)
            with torch.no_grad():
                before = m(x)
            m.grow(layer, 2, strategy, x=x, candidates=10)
            assert _same(m(x), before), (train, layer)
    bn = m.norms[0]
    assert bn.weight[-2:].tolist() == [1, 1] and bn.bias[-2:].tolist() == [0, 0]
    assert bn.running_mean[-2:].tolist() == [0, 0] and bn.running_var[-2:].tolist() == [1, 1]
    assert m.widths == [7, 8, 9]


def test_gradmax_fan_in_gradient_norms_are_top_singular_values(monkeypatch):
    """Catches: the auxiliary gradient taken without its bias column or of the wrong layer, the
    fan-out not the top left singular vectors, or a plain ReLU (sigma'(0) = 0: a zero-fan-in
    neuron gets no gradient). Independent: the gradient of an explicit zero bridge."""
    m, (x, y) = _mlp(), _data()

    def bridge_singular_values():
        bridge = torch.zeros(m.head.weight.shape[0], 5 + 1, dtype=torch.float64, requires_grad=True)
        _, ins, pres, posts = m.forward_all(x)
        h = torch.cat([ins[1], torch.ones(len(x), 1, dtype=torch.float64)], 1)
        logits = m.head(posts[1]) + h @ bridge.t()                # bridge from layer 0's output to the logits
        F.cross_entropy(logits, y).backward()
        m.zero_grad(set_to_none=True)
        return torch.linalg.svdvals(bridge.grad.detach())
    sv = bridge_singular_values()
    scale = m.mean_norms(1)[1]
    m.grow(1, 2, "GradMax", x=x, y=y)
    g_in = _new_rows_grads(m, 1, 2, x, y)[0]
    g_bias = m.layers[1].bias.grad[-2:]
    got = torch.sqrt(g_in.pow(2).sum(1) + g_bias.pow(2))
    assert torch.allclose(got, scale * sv[:2], rtol=1e-9)


def test_north_weight_rows_orthogonal_to_w_and_rank_bound():
    """Catches: projecting onto the row space instead of the kernel, or growing past the rank
    bound (at most fan-in - rank(W) new neurons, Sec. 6.3.2)."""
    m = _mlp(widths=(5, 4))
    w_old = m.layers[0].weight.detach().clone()
    assert m.grow(0, 4, "NORTH-Weight") == 1                      # 6 inputs, rank 5: one direction left
    new = m.layers[0].weight[-1:]
    new = new.detach()
    assert float((new @ w_old.t()).abs().max()) < 1e-12 * float(new.norm() * w_old.norm())
    assert m.grow(0, 1, "NORTH-Weight") == 0


def test_north_pre_preactivations_orthogonal_on_buffer():
    """Catches: the kernel of Z_l taken from the wrong side (row space), the pseudo-inverse of H
    instead of H^T, or the bias column dropped (then the bias terms break orthogonality)."""
    m, (x, y) = _mlp(), _data(n=80)
    m.grow(1, 3, "NORTH-Pre", x=x, candidates=20)
    _, ins, pres, _ = m.forward_all(x)
    z = pres[1].detach()
    old, new = z[:, :4], z[:, 4:]
    cos = (old / old.norm(dim=0)).t() @ (new / new.norm(dim=0))
    assert float(cos.abs().max()) < 1e-9 and float(new.norm()) > 0


def test_select_prefers_novel_direction_over_duplicate():
    """Catches: Select ranking ascending (keeps the worst candidate) or by fan-in norm only."""
    m = N.GrowableMLP(3, [2], 2).double()
    with torch.no_grad():
        m.layers[0].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
        m.layers[0].bias.zero_()
    x = torch.rand(30, 3, dtype=torch.float64) + 0.1
    acts = m.forward_all(x, batch_stats=True)
    dup, novel = torch.tensor([[1.0, 0, 0]]), torch.tensor([[0, 0, 1.0]])
    for cands in (torch.cat([dup, novel]), torch.cat([novel, dup])):
        chosen = I._select(m, 0, 1, cands.double(), None, acts)[0]
        assert torch.equal(chosen, novel.double())


def test_adam_state_grow_then_step_equals_step_then_grow():
    """Catches: optimizer state not grown (shape error), grown with nonzero moments, or cut in
    the wrong place: the old entries must update exactly as if nothing had been added."""
    m, (x, y) = _mlp(), _data()
    a, b = copy.deepcopy(m), copy.deepcopy(m)
    oa, ob = torch.optim.Adam(a.parameters(), 1e-2), torch.optim.Adam(b.parameters(), 1e-2)

    def step(net, opt):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    for _ in range(3):
        step(a, oa), step(b, ob)
    a.grow(0, 2, "NORTH-Random", oa, generator=torch.Generator().manual_seed(5))
    step(a, oa)
    step(b, ob)
    b.grow(0, 2, "NORTH-Random", ob, generator=torch.Generator().manual_seed(5))
    old = {"layers.0.weight": (slice(0, 5),), "layers.0.bias": (slice(0, 5),),
           "layers.1.weight": (slice(None), slice(0, 5))}
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        idx = old.get(name, (slice(None),))
        assert _same(pa[idx], pb[idx]), name
        for key in ("exp_avg", "exp_avg_sq"):
            assert _same(oa.state[pa][key][idx], ob.state[pb][key][idx]), (name, key)
    assert not ob.state[b.layers[1].weight]["exp_avg"][:, 5:].any()            # new entries start at 0


def test_firefly_and_nest_are_function_changing_as_described():
    """Catches: Firefly splits without halving the fan-out (an O(1) jump instead of O(eps)), and
    NeST's fan-out sign dropped (the new neuron's bridge w_out w_in^T must follow -G)."""
    m, (x, y) = _mlp(), _data()
    with torch.no_grad():
        before = m(x)
    m.grow(0, 3, "Firefly", x=x, y=y, candidates=12)
    change = float((m(x) - before).detach().abs().max())
    assert 0 < change < 1e-3 * float(before.abs().max())
    m = _mlp()
    aux = N.auxiliary_gradient(m, 0, x, y)
    g = aux[:, :-1]
    o, i = divmod(int(g.abs().argmax()), g.shape[1])
    fan_in, fan_out, bias = I._nest(m, 0, 1, aux, torch.Generator().manual_seed(0), quantile=0.99)
    assert fan_in[0].nonzero().flatten().tolist() == [i] and fan_out[:, 0].nonzero().flatten().tolist() == [o]
    assert float(fan_out[o, 0] * fan_in[0, i]) * float(g[o, i]) < 0 and bias is None    # one pair: -G's sign


def test_buffer_appends_new_neurons_like_a_fresh_forward():
    """Catches: the appended activations of new neurons computed from the wrong rows, without
    their bias or without BatchNorm's batch statistics, or placed in a full ring at the wrong rows."""
    torch.manual_seed(0)
    cnn = N.GrowableCNN((1, 6, 6), [3, 4], 2, dense_widths=[5]).double()
    for m, x in ((N.GrowableMLP(5, [4, 3], 2).double(), torch.randn(30, 5, dtype=torch.float64)),
                 (cnn, torch.rand(9, 36, dtype=torch.float64))):
        buf = N.Buffer(8)
        buf.push(x[:5])
        buf.push(x[5:])                                           # the ring wraps around
        buf.activations(m)
        for l in range(len(m.widths)):
            m.grow(l, 2, "NORTH-Random")
            with torch.no_grad():                                 # new neurons' bias / BN (zero fan-out: harmless)
                for t in ([m.layers[l].bias] if m.kinds[l] == "dense" else [m.norms[l].weight, m.norms[l].bias]):
                    t[-2:] = torch.randn(2, dtype=torch.float64)
            buf.grown(m, l, 2)
            fresh = m.forward_all(buf.x[:buf.n], batch_stats=True)[3][l]
            assert _same(buf.activations(m)[3][l], fresh, 1e-12)


def test_gradient_inits_after_the_layer_below_grew_in_the_same_step():
    """Catches: NeST / GradMax using an auxiliary gradient taken before the layer below grew
    (Algorithm 4 grows layer 0, then layer 1, from one backward): the fan-in would have the old
    width (a shape error); the new inputs get zero columns."""
    m, (x, y) = _mlp(), _data()
    aux = N.auxiliary_gradient(m, 1, x, y)                        # (3, 5 + 1): before layer 0 grows
    m.grow(0, 3, "NORTH-Random")
    for strategy in ("NeST", "GradMax"):
        assert m.grow(1, 1, strategy, aux=aux) == 1
    assert not m.layers[1].weight[-2:, 5:8].any()                 # nothing from the unseen inputs


def test_presets_follow_linear_and_batched_schedules():
    """Catches: Linear adding more than one neuron per step or growing after 75% of training,
    Batched not in 8 equal stages of (final - initial) / 8 (Sec. 6.3.3; 20 steps, 75% = 15)."""
    x, y = _data(n=40, dtype=torch.float32)
    for schedule, final, expect in (("Linear", 16, lambda t: min(16, math.ceil(4 + 12 * t / 15 - 1e-9))),
                                    ("Batched", 20, lambda t: 4 + 2 * math.floor(8 * min(t, 15) / 15))):
        m = N.GrowableMLP(6, [4], 3)
        ng = N.Neurogenesis(m, torch.optim.Adam(m.parameters()), "NORTH-Random", schedule=schedule,
                            final_widths=[final], total_steps=20, max_widths=[64])
        widths = []
        for t in range(1, 21):
            ng.step(x, y)
            widths.append(m.widths[0])
        assert widths == [expect(t) for t in range(1, 21)], schedule


def test_controller_caps_at_max_width_and_resumes_bit_identically():
    """Catches: a trigger growing past max_widths, and a resume that loses the buffer, baselines,
    optimizer state, random state or the reshaping of the model (growth continues after it)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 10, generator=g)
    y = (x[:, 0] > 0).long()

    def build():
        torch.manual_seed(3)
        m = N.GrowableMLP(10, [4, 4], 2, max_widths=[60, 12])
        return m, N.Neurogenesis(m, torch.optim.Adam(m.parameters(), 1e-2), "NORTH-Select", candidates=8,
                                 buffer_size=200)
    m, ng = build()
    ng.start(x[:200])
    for t in range(6):
        ng.step(x[t * 20:(t + 1) * 20], y[t * 20:(t + 1) * 20])
    state = copy.deepcopy(ng.state_dict())
    for t in range(6, 30):
        ng.step(x[t * 20:(t + 1) * 20], y[t * 20:(t + 1) * 20])
    m2, ng2 = build()
    ng2.load_state_dict(state)
    for t in range(6, 30):
        ng2.step(x[t * 20:(t + 1) * 20], y[t * 20:(t + 1) * 20])
    assert sum(k for step, _, k in ng.history["events"] if step > 6) > 0     # growth after the checkpoint
    assert m.widths == m2.widths and m.widths[1] == 12 and m.widths[0] <= 60
    for p, q in zip(m.parameters(), m2.parameters()):
        assert torch.equal(p, q)


def test_conv_trigger_uses_running_maximum():
    """Catches: Eq. 35's baseline left at the initial value (or updated before use) on conv layers."""
    torch.manual_seed(0)
    m = N.GrowableCNN((1, 6, 6), [3], 2, max_widths=[3])
    ng = N.Neurogenesis(m, torch.optim.Adam(m.parameters()), "NORTH-Random", buffer_size=8)
    ng.baselines = [0.2]
    x = torch.rand(8, 36)
    ng.buffer.push(x)
    phi = N.activation_metric(ng.buffer.activations(m)[3][0])
    assert ng._how_many(0, ng.buffer.activations(m), None, None) == N.trigger_count(3, phi, 0.2, 0.97)
    assert ng.baselines == [max(0.2, phi)]


def test_generated_data_rank_is_n_f():
    """Catches: the dependent features drawn independently (rank 64) or labels from a single feature."""
    for n_f in (2, 8, 32):
        xtr, ytr, xte, yte = NE.generated_data(n_f, seed=1)
        x = torch.cat([xtr, xte])
        assert x.shape == (5000, 64) and len(xte) == 500
        assert int(torch.linalg.matrix_rank(x.double(), rtol=1e-5)) == n_f
        s = x.sum(1)
        agree = float(((s > s.mean()).long() == torch.cat([ytr, yte])).float().mean())
        assert 0.8 < agree < 1.0 and 0.3 < float(torch.cat([ytr, yte]).float().mean()) < 0.7


def test_bad_input_gives_one_line_errors():
    """Catches: silent acceptance of an unknown strategy, a width above the maximum, a buffer
    not larger than a layer, or a dense-only strategy on a convolution."""
    m = N.GrowableMLP(6, [4], 2, max_widths=[8])
    opt = torch.optim.Adam(m.parameters())
    with pytest.raises(ValueError, match="unknown neurogenesis strategy 'NORTH-Magic'"):
        N.Neurogenesis(m, opt, "NORTH-Magic")
    with pytest.raises(ValueError, match="above its maximum 8"):
        m.grow_neurons(0, torch.zeros(5, 6))
    with pytest.raises(ValueError, match="outside 1..3"):
        N.GrowableMLP(6, [4], 2, max_widths=[3])
    with pytest.raises(ValueError, match="buffer of 8 inputs"):
        N.Neurogenesis(m, opt, "NORTH-Select", buffer_size=8)
    with pytest.raises(ValueError, match="dense layers only"):
        N.GrowableCNN((1, 6, 6), [3], 2).grow(0, 1, "GradMax", x=torch.rand(4, 36), y=torch.zeros(4).long())


def test_train_growing_resumes_from_an_epoch_checkpoint_bit_identically():
    """Catches: a per-epoch state missing the controller's state, or an epoch batch order that
    depends on anything but (seed, epoch): the resumed run must equal the uninterrupted one."""
    xtr, ytr, xte, yte = NE.generated_data(4, samples=600)
    data = (xtr, ytr, xte, yte)
    kw = dict(epochs=3, batch_size=64, max_widths=24, buffer_size=64, candidates=10, seed=2)

    def fresh():
        torch.manual_seed(0)
        return N.GrowableMLP(64, [4, 4], 2, max_widths=24)
    states = {}
    full = fresh()
    r_full = NE.train_growing(full, "NORTH-Select", data, on_epoch=lambda e, s: states.setdefault(e, copy.deepcopy(s)),
                              **kw)
    resumed = fresh()
    r_res = NE.train_growing(resumed, "NORTH-Select", data, state=states[1], **kw)
    assert full.widths == resumed.widths and full.widths != [4, 4]
    assert [e["test_accuracy"] for e in r_full["epochs"]] == [e["test_accuracy"] for e in r_res["epochs"]]
    for p, q in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_public_names_stay_in_neurogenesis_and_initializations_import_only_torch():
    """Catches: a name lost from `neurogenesis` by the split into neurogenesis_init, or a circular
    import (neurogenesis_init importing the project)."""
    for name in ("STRATEGIES", "TRIGGERS", "SCHEDULES", "DENSE_ONLY", "check_strategy", "relu0", "as_samples",
                 "effective_dimension", "orthogonality_gap", "rank_count", "activation_metric", "weight_metric",
                 "select_scores", "GrowableNet", "GrowableMLP", "GrowableCNN", "auxiliary_gradient", "aux_from",
                 "trigger_count", "gradient_trigger", "neuron_grad_norms", "Buffer", "Neurogenesis"):
        assert hasattr(N, name), name
    assert set(I.INITS) | {"Firefly"} == set(N.STRATEGIES)
    with open(I.__file__) as f:
        imports = [line.split()[1] for line in f if line.startswith(("import ", "from "))]
    assert all(m == "math" or m.split(".")[0] == "torch" for m in imports), imports


@pytest.mark.slow
def test_experiment_resumes_skipping_finished_runs_and_continuing_a_checkpointed_one(tmp_path, monkeypatch):
    """An experiment stopped after its first run and in the middle of its second, then called again:
    catches a cache key that ignores the seed (seed 2's run read from seed 1's file), a finished
    run trained again, a run that restarts from epoch 0 instead of its checkpoint, a resumed run
    that differs from the uninterrupted one, and a call with other sizes mixed into the cache."""
    sizes = dict(n_fs=(2,), hidden=(1,), samples=400, epochs_per_layer=3,
                 strategies=("NORTH-Random", "NORTH-Select"), static_width=0)
    quiet = lambda *_: None                                                   # noqa: E731
    ref = NE.run("generated", None, str(tmp_path / "a"), (1, 2), log=quiet, sizes=sizes)
    calls, stop_at, real = [], [("NORTH-Random", 2, 1)], NE.train_growing

    class Interrupt(Exception):
        pass

    def spy(model, strategy, data, seed=1, state=None, on_epoch=None, **kw):
        calls.append((strategy, seed, None if state is None else state["epoch"]))

        def hook(epoch, s):
            on_epoch(epoch, s)                                                 # the checkpoint, then the "kill"
            if (strategy, seed, epoch) in stop_at:
                raise Interrupt
        return real(model, strategy, data, seed=seed, state=state, on_epoch=hook, **kw)
    monkeypatch.setattr(NE, "train_growing", spy)
    out = str(tmp_path / "b")
    with pytest.raises(Interrupt):
        NE.run("generated", None, out, (1, 2), log=quiet, sizes=sizes)
    assert calls == [("NORTH-Random", 1, None), ("NORTH-Random", 2, None)]
    calls.clear()
    rows = NE.run("generated", None, out, (1, 2), log=quiet, sizes=sizes)
    assert calls == [("NORTH-Random", 2, 1), ("NORTH-Select", 1, None), ("NORTH-Select", 2, None)]
    drop = lambda rs: [{k: v for k, v in r.items() if k != "train_seconds"} for r in rs]   # noqa: E731
    assert drop(rows) == drop(ref) and [r["seed"] for r in rows] == [1, 2, 1, 2]
    assert not [f for f in os.listdir(out + "/generated.runs") if f.endswith(".ckpt.pt")]
    calls.clear()
    assert drop(NE.run("generated", None, out, (1, 2), log=quiet, sizes=sizes)) == drop(ref) and not calls
    with pytest.raises(ValueError, match="epochs_per_layer 3 there, 4 now"):
        NE.run("generated", None, out, (1, 2), log=quiet, sizes=dict(sizes, epochs_per_layer=4))
