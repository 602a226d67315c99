"""EquiNAS (Maile's thesis Ch. 4): the D4 subgroups against 2x2 matrices, every layer against the
group action, the relaxation morphism and the [G]-mixed layer against independent computations
(Eqs. 2-12), EquiNAS_E's selection and mutation against hand enumerations, EquiNAS_D's Z step
against one hand-computed Adam step, exact resume, and the experiment drivers on tiny data.
Each test's docstring names the one-line bug it catches."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import equinas as E
from experiments import thesis_equinas as X

PAIRS = [(G, H) for G in E.GROUPS for H in E.GROUPS if G != H and E.is_subgroup(H, G)]
SIZE = {G: len(E.ELEMENTS[G]) for G in E.GROUPS}


def _matrix(g):
    """F^f R^r as an integer 2x2 matrix acting on (column, row) coordinates."""
    R, Fl = torch.tensor([[0, -1], [1, 0]]), torch.tensor([[-1, 0], [0, 1]])
    return torch.linalg.matrix_power(Fl, g // 4) @ torch.linalg.matrix_power(R, g % 4)


def _randomize_bn(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in list(net.bns) + [net.head[1]]:
            bn.running_mean.copy_(torch.rand(bn.running_mean.shape, generator=g) - 0.5)
            bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g) + 0.5)
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=g) + 0.5)
            bn.bias.copy_(torch.rand(bn.bias.shape, generator=g) - 0.5)


def test_d4_axioms_and_subgroups_on_images():
    """Catches mul() composing rotations as r1 + r2 also after a flip (R^r F = F R^-r ignored)."""
    x = torch.randn(2, 3, 5, 5)
    for g, h in itertools.product(range(8), repeat=2):
        assert torch.equal(E.act(E.act(x, h), g), E.act(x, E.mul(g, h)))          # an action
        assert torch.equal(_matrix(E.mul(g, h)), _matrix(g) @ _matrix(h))        # the matrix group
    for g in range(8):
        assert E.mul(g, 0) == E.mul(0, g) == g and E.mul(g, E.inv(g)) == 0
        assert torch.equal(E.act(E.act(x, g), E.inv(g)), x)
    assert all(E.mul(E.mul(a, b), c) == E.mul(a, E.mul(b, c)) for a, b, c in itertools.product(range(8), repeat=3))
    assert len({tuple(_matrix(g).flatten().tolist()) for g in range(8)}) == 8
    for G in E.GROUPS:                                   # closed, and the 12 proper inclusions
        assert all(E.mul(a, b) in E.ELEMENTS[G] for a in E.ELEMENTS[G] for b in E.ELEMENTS[G])
    assert len(PAIRS) == 12 and not E.is_subgroup("D1", "C4") and not E.is_subgroup("C4", "D2")
    for G, H in PAIRS:                                   # right cosets H t partition G
        cosets = [{E.mul(h, t) for h in E.ELEMENTS[H]} for t in E.coset_reps(H, G)]
        assert E.coset_reps(H, G)[0] == 0 and len(cosets) == SIZE[G] // SIZE[H]
        assert set().union(*cosets) == set(E.ELEMENTS[G]) and sum(map(len, cosets)) == SIZE[G]


def test_layers_commute_with_their_group_and_not_with_other_elements():
    """Catches the expanded filter reading psi(h_i h_j) instead of psi(h_i^-1 h_j) (Eq. 2)."""
    torch.manual_seed(0)
    for size in (8, 9):
        x = torch.randn(2, 2, size, size)
        for G in E.GROUPS:
            lift, conv = E.GroupConv2d(G, 2, 3, 3, lifting=True), E.GroupConv2d(G, 3, 2, 3)   # own frame
            y = lift(x)
            assert y.shape == (2, 3 * SIZE[G], size, size)
            for a in E.ELEMENTS[G]:
                assert torch.allclose(lift(E.act(x, a)), E.act_fields(y, a, G), atol=1e-5)
                assert torch.allclose(conv(E.act_fields(y, a, G)), E.act_fields(conv(y), a, G), atol=1e-5)
            m = 8 // SIZE[G]                                                  # in the D4 frame
            lift, conv = E.GroupConv2d(G, 2, m, 3, True, "D4"), E.GroupConv2d(G, m, m, 3, frame="D4")
            y = lift(x)
            for a in range(8):
                d1 = (lift(E.act(x, a)) - E.act_fields(y, a, "D4")).abs().max()
                d2 = (conv(E.act_fields(y, a, "D4")) - E.act_fields(conv(y), a, "D4")).abs().max()
                if a in E.ELEMENTS[G]:
                    assert d1 < 1e-5 and d2 < 1e-5, (G, a)
                else:                                                         # control
                    assert d1 > 1e-2 and d2 > 1e-2, (G, a)


def test_parameter_ratios_at_equal_expanded_width():
    """Catches the backbone scaling only the output fields of a group layer by [D4:G], not its inputs."""
    k, N = 3, 16
    for G in E.GROUPS:                                   # closed form N² k² / |G|
        assert E.GroupConv2d(G, N // SIZE[G], N // SIZE[G], k).psi.numel() == N * N * k * k // SIZE[G]
    counts = {G: E.EquiCNN([G] * 3, fields=2, kernel_size=k).convs[1].psi.numel() for G in E.GROUPS}
    assert [counts[G] // counts["D4"] for G in ("C1", "C2", "C4", "D1", "D2", "D4")] == [8, 4, 2, 4, 2, 1]
    assert counts["D4"] == 32 * 16 * 9 // 8             # layer 1 of 3 is past half way: 32 x 16 channels


def test_relaxation_preserves_every_layer_for_all_12_pairs():
    """Catches Eq. 5 without the spatial action of the representative t on the relaxed filter."""
    torch.manual_seed(1)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    for G, H in PAIRS:
        lift, conv = E.GroupConv2d(G, 1, 2, 3, lifting=True).double(), E.GroupConv2d(G, 2, 2, 3).double()
        y = lift(x)
        rl, rc = E.relax(lift, H), E.relax(conv, H)
        idx = SIZE[G] // SIZE[H]
        assert (rl.group, rc.group) == (H, H) and rc.out_fields == 2 * idx
        assert rl.psi.numel() == idx * lift.psi.numel() and rc.psi.numel() == idx * conv.psi.numel()
        assert torch.allclose(rl(x), y, atol=1e-12) and torch.allclose(rc(y), conv(y), atol=1e-12)
        again = E.relax(rc, "C1")                                             # twice, down to C1
        assert torch.allclose(again(y), conv(y), atol=1e-12)
        assert again.psi.numel() == SIZE[G] * conv.psi.numel() // 1


def test_relaxation_preserves_whole_networks_for_all_12_pairs():
    """Catches relax_network copying the first Linear's weights without dividing by [G:G']."""
    torch.manual_seed(2)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    for G, H in PAIRS:
        net = E.EquiCNN([G] * 3, fields=1, kernel_size=3, hidden=8).double().eval()
        _randomize_bn(net)
        out = net(x)
        relaxed = net
        for i in reversed(range(3)):                     # every layer, the last one first
            relaxed = E.relax_network(relaxed, i, H).eval()
            assert relaxed.groups()[i] == H
            assert torch.allclose(relaxed(x), out, atol=1e-10), (G, H, i)
        assert relaxed.num_params() > net.num_params()
        rebuilt = E.EquiCNN.from_spec(relaxed.spec()).double().eval()        # spec keeps the reps
        rebuilt.load_state_dict(relaxed.state_dict())
        assert torch.allclose(rebuilt(x), out, atol=1e-10)


def test_bad_input_raises_one_line_value_errors():
    """Catches relax() accepting a non-subgroup (e.g. D1 is not in C4)."""
    with pytest.raises(ValueError, match="unknown group 'C3'; choose from C1, D1"):
        E.GroupConv2d("C3", 1, 1, 3)
    with pytest.raises(ValueError, match="kernel_size 4 is even"):
        E.GroupConv2d("C4", 1, 1, 4)
    with pytest.raises(ValueError, match="D1 is not a subgroup of C4; choose from C4, C2, C1"):
        E.relax(E.GroupConv2d("C4", 1, 1, 3), "D1")
    with pytest.raises(ValueError, match="relax\\(\\) takes a GroupConv2d or FieldBatchNorm"):
        E.relax(E.MixedGroupConv2d(1, 1, 3), "C1")
    with pytest.raises(ValueError, match="unknown group 'D8'"):
        E.MixedGroupConv2d(1, 1, 3, groups=("C1", "D8"))
    with pytest.raises(ValueError, match="multiples of \\[D4:C4\\] = 2"):
        E.GroupConv2d("C4", 1, 1, 3, frame="D4")


def _normalized_single(mixed, i):
    """An independent GroupConv2d holding candidate i's weight-normalized kernel."""
    layer = mixed.layers[i]
    single = E.GroupConv2d(layer.group, layer.in_fields, layer.out_fields, layer.kernel_size,
                           layer.lifting, layer.frame, layer.reps)
    with torch.no_grad():
        single.psi.copy_(layer.psi * mixed.norms[i] / layer.psi.norm())
    return single


def test_mixed_layer_eq11_equals_eq12_and_one_hot_is_the_single_layer():
    """Catches Eq. 12 summing the expanded filters without the weights z."""
    torch.manual_seed(3)
    for lifting in (True, False):
        mixed = E.MixedGroupConv2d(1 if lifting else 2, 2, 3, lifting=lifting)
        with torch.no_grad():
            mixed.alpha.copy_(torch.randn(6))
            for layer in mixed.layers:                    # trained kernels have other norms
                layer.psi.mul_(torch.rand(()) + 0.5)
        x = torch.randn(2, 1 if lifting else 16, 8, 8)
        z = torch.softmax(mixed.alpha, 0)
        eq11 = sum(z[i] * _normalized_single(mixed, i)(x) for i in range(6))
        assert torch.allclose(mixed(x), eq11, atol=1e-5)
        for i in range(6):                                # one-hot z
            with torch.no_grad():
                mixed.alpha.fill_(-1e9)
                mixed.alpha[i] = 0.0
            assert torch.allclose(mixed(x), _normalized_single(mixed, i)(x), atol=1e-6)


def test_weight_normalized_mixed_layer_ignores_filter_scale():
    """Catches the frozen norm n^G being recomputed from the current kernel (a rescaled kernel
    would then rescale the output)."""
    torch.manual_seed(4)
    mixed = E.MixedGroupConv2d(2, 2, 3)
    with torch.no_grad():
        mixed.alpha.copy_(torch.randn(6))
    x = torch.randn(2, 16, 8, 8)
    before = mixed(x)
    with torch.no_grad():
        for s, layer in zip((3.0, 0.2, 7.0, 0.5, 2.0, 10.0), mixed.layers):
            layer.psi.mul_(s)
    assert torch.allclose(mixed(x), before, atol=1e-5)
    assert "norms" not in dict(mixed.named_parameters())


def test_d4_c4_mixture_is_c4_but_not_d4_equivariant():
    """Catches the mixed layer laying a candidate out in its own frame instead of the D4 frame."""
    torch.manual_seed(5)
    mixed = E.MixedGroupConv2d(2, 2, 3, groups=("D4", "C4"))
    with torch.no_grad():
        mixed.alpha.copy_(torch.tensor([0.3, -0.2]))
    x = torch.randn(2, 16, 9, 9)
    y = mixed(x)
    for a in range(8):
        err = (mixed(E.act_fields(x, a, "D4")) - E.act_fields(y, a, "D4")).abs().max()
        assert (err < 1e-5) if a < 4 else (err > 1e-2), a


def test_network_with_group_pooling_is_invariant():
    """Catches FieldBatchNorm computing batch statistics per channel instead of per field."""
    torch.manual_seed(6)
    x = torch.randn(4, 1, 14, 14)                        # pools 14 -> 7 -> 4: even and odd sizes
    for G in ("C4", "D2", "D4"):
        net = E.EquiCNN([G] * 6, fields=1, kernel_size=3, hidden=8)
        for mode in (net.train, net.eval):
            mode()
            out = net(x)
            for a in range(8):
                err = (net(E.act(x, a)) - out).abs().max()
                assert (err < 1e-4) if a in E.ELEMENTS[G] else (err > 1e-3), (G, a)


def test_field_batchnorm_is_batchnorm3d_over_the_field_view():
    """Catches the running variance updated with the biased batch variance (no n / (n - 1))."""
    torch.manual_seed(8)
    for G in ("C1", "C4", "D4"):
        n = SIZE[G]
        mine, ref = E.FieldBatchNorm(G, 3), torch.nn.BatchNorm3d(3)
        with torch.no_grad():
            mine.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
            ref.weight.copy_(mine.weight)
        for _ in range(3):
            x = torch.randn(4, 3 * n, 5, 5) * 3 + 1
            assert torch.allclose(mine(x), ref(x.view(4, 3, n, 5, 5)).view_as(x), atol=1e-5)
        assert torch.allclose(mine.running_var, ref.running_var, atol=1e-5)
        assert torch.allclose(mine.running_mean, ref.running_mean, atol=1e-6)
        mine.eval(), ref.eval()
        assert torch.allclose(mine(x), ref(x.view(4, 3, n, 5, 5)).view_as(x), atol=1e-5)


def test_recalibrated_batchnorm_holds_the_statistics_of_the_given_images():
    """Catches recalibrate_bn weighting batch k by 1/k instead of 1/(k + 1) (not an average)."""
    torch.manual_seed(9)
    net = E.EquiCNN(["C4"] * 2, fields=1, kernel_size=3, hidden=8, mean=0.3, std=0.5)
    x = torch.rand(40, 1, 8, 8)
    X.recalibrate_bn(net, x, batch_size=10)
    with torch.no_grad():
        y = net.convs[0]((x - 0.3) / 0.5)                 # 2 C4 fields per D4 frame field
    per_field = torch.zeros(2).index_add_(0, net.bns[0].field, y.mean((0, 2, 3))) / 4
    assert torch.allclose(net.bns[0].running_mean, per_field, atol=1e-6)
    assert all(m.momentum == 0.1 for m in net.modules() if isinstance(m, E.FieldBatchNorm))


def test_rpp_is_half_c1_half_d4_with_l2_on_c1():
    """Catches the RPP penalty put on the D4 kernel instead of the unconstrained C1 kernel."""
    net = E.EquiCNN([E.RPP] * 2, fields=1, kernel_size=3, hidden=8)
    conv = net.convs[1]
    assert conv.groups == ("C1", "D4") and not conv.normalize and net.alphas() == []
    assert torch.allclose(conv.z(), torch.tensor([0.5, 0.5]))
    c1 = sum(c.layers[0].psi.pow(2).sum() for c in net.convs)
    assert torch.allclose(net.penalty(), 1e-6 * c1)
    assert net.arch() == [E.RPP, E.RPP]


def test_pareto_front_and_selection_on_hand_made_points():
    """Catches a dominance test that drops points equal in one objective (>= written as >)."""
    acc = [0.90, 0.95, 0.80, 0.95, 0.85, 0.70, 0.92]
    params = [100, 300, 50, 200, 120, 50, 200]
    # (0.95, 200) dominates (0.95, 300) and (0.92, 200); (0.80, 50) dominates (0.70, 50);
    # (0.90, 100) dominates (0.85, 120)
    assert E.pareto_front(acc, params) == [0, 2, 3]
    assert E.select(acc, params, 5) == [0, 2, 3, 1, 6]    # front, then the most accurate others
    assert E.select(acc, params, 2) == [0, 2, 3]          # the whole front is kept


def test_children_relax_exactly_one_layer_and_compute_the_parents_function():
    """Catches mutation ignoring the next layer's group (children breaking the subgroup chain)."""
    torch.manual_seed(7)
    net = E.EquiCNN(["D4", "D4", "C4"], fields=1, kernel_size=3, hidden=8).eval()
    _randomize_bn(net)
    x = torch.randn(2, 1, 8, 8)
    kids = E.children(net)
    assert sorted(tuple(k.groups()) for k in kids) == sorted([("D4", "C4", "C4"), ("D4", "D4", "C2"),
                                                              ("D4", "D4", "C1")])
    for kid in kids:
        diff = [i for i, (a, b) in enumerate(zip(kid.groups(), net.groups())) if a != b]
        assert len(diff) == 1 and E.is_subgroup(kid.groups()[diff[0]], net.groups()[diff[0]])
        assert all(E.is_subgroup(b, a) for a, b in zip(kid.groups(), kid.groups()[1:]))
        assert torch.allclose(kid.eval()(x), net(x), atol=1e-5)


def _toy(n=96, size=8, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g), torch.randint(classes, (n,), generator=g)


def test_z_step_is_one_adam_step_on_its_own_batch_before_the_psi_step():
    """Catches the Z step drawing the Psi step's batch (seed instead of seed + 1)."""
    x, y = _toy()
    torch.manual_seed(0)
    net = E.EquiCNN([E.GROUPS] * 2, fields=1, kernel_size=3, hidden=8, classes=3)
    ref = E.EquiCNN.from_spec(net.spec())
    ref.load_state_dict(net.state_dict())
    idx = E.batch_indices(len(x), 16, 5 + 1, 0)          # the Z stream of seed 5, step 0
    grads = torch.autograd.grad(F.cross_entropy(ref.train()(x[idx]), y[idx]), ref.alphas())
    zopt = torch.optim.Adam(net.alphas(), lr=0.01)
    E.train_steps(net, x, y, torch.optim.SGD(net.weights(), lr=0.0), 0, 1, 16, 5, zopt)
    for a, g in zip(net.alphas(), grads):                # Adam's first step: -lr · sign(grad)
        assert torch.allclose(a, -0.01 * torch.sign(g), atol=1e-6)
    assert all(torch.equal(p, q) for p, q in zip(net.weights(), ref.weights()))


def test_fit_resumes_exactly(tmp_path):
    """Catches a resume that rebuilds the Adam optimizers without their saved state."""
    x, y = _toy()
    spec = E.EquiCNN([E.GROUPS] * 2, fields=1, kernel_size=3, hidden=8, classes=3).spec()
    saved = []
    net, state = E.fit(spec, x, y, 2, z_lr=0.01, batch_size=16, seed=1, valid=(x[:20], y[:20]),
                       on_epoch=lambda s: torch.save(s, tmp_path / f"e{len(saved)}.pt") or saved.append(1))
    half = torch.load(tmp_path / "e0.pt", weights_only=True)
    assert half["step"] == 6 and len(half["history"]) == 2
    net2, state2 = E.fit(None, x, y, 2, z_lr=0.01, batch_size=16, seed=1, valid=(x[:20], y[:20]), state=half)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))
    assert state2["history"] == state["history"] and state["history"][-1]["z"] != state["history"][0]["z"]


def test_evolutionary_search_resumes_exactly_and_keeps_parents(tmp_path):
    """Catches the generation counter advanced after the checkpoint (a resume repeats a generation)."""
    x, y = _toy(n=64)
    kw = dict(generations=2, parent_size=2, batch_size=16, layers=2, fields=1, kernel_size=3, hidden=8)
    saved = []

    def checkpoint(state):
        torch.save(state, tmp_path / f"g{len(saved)}.pt")
        saved.append(1)
    st = E.search_evolutionary(x[:48], y[:48], x[48:], y[48:], seed=3, on_generation=checkpoint, **kw)
    assert len(saved) == 3 and st["round"] == 3
    rounds = [[h for h in st["history"] if h["round"] == r] for r in range(3)]
    assert [len(r) for r in rounds[:2]] == [1, 1 + 5]    # the D4 net, then it and its 5 children
    assert len(st["population"]) >= 2 and sum(h["selected"] for h in rounds[2]) == len(st["population"])
    resumed = E.search_evolutionary(x[:48], y[:48], x[48:], y[48:], seed=3,
                                    state=torch.load(tmp_path / "g0.pt", weights_only=True), **kw)
    assert resumed["history"] == st["history"]
    for (a, _), (b, _) in zip(X.population(st), X.population(resumed)):
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_rotation_recipe_and_group_augmentation():
    """Catches the rotation turning clockwise (the sign of sin in theta)."""
    x = torch.rand(4, 1, 12, 12)
    for k in (1, 2, 3):
        r = X.rotate_images(x, angles=torch.full((4,), k * math.pi / 2))
        assert torch.allclose(r, torch.rot90(x, k, (-2, -1)), atol=1e-5)
    ones = X.rotate_images(torch.ones(1, 1, 12, 12), angles=torch.tensor([math.pi / 4]))
    assert ones[0, 0, 0, 0] == 0 and ones[0, 0, 6, 6] == pytest.approx(1.0)     # zero padding
    a, b = X.rotate_images(x, seed=5), X.rotate_images(x, seed=5)
    assert torch.equal(a, b) and not torch.equal(a, X.rotate_images(x, seed=6))
    for G in ("D1", "C4", "D4"):
        out, g = X.augment_by_group(x.repeat(10, 1, 1, 1), G, seed=1)
        assert set(g.tolist()) == set(E.ELEMENTS[G])
        assert all(torch.equal(out[i], E.act(x[i % 4], int(g[i]))) for i in range(len(out)))


def test_mixed_layer_cost_reports_both_timings():
    """Catches the ratio computed single / mixed instead of mixed / single."""
    r = X.mixed_layer_cost(fields=1, size=8, batch=2, kernel_size=3, repeats=1)
    assert r["channels"] == 8 and r["ratio"] == r["mixed_s"] / r["single_s"] and r["single_s"] > 0


@pytest.mark.slow
def test_experiment_drivers_write_tables_and_resume(tmp_path):
    """Catches the CSV written with one row per method instead of one per method and seed."""
    g = torch.Generator().manual_seed(0)
    data = ((torch.rand(80, 1, 8, 8, generator=g) * 255).to(torch.uint8), torch.randint(10, (80,), generator=g),
            torch.rand(30, 1, 8, 8, generator=g), torch.randint(10, (30,), generator=g))
    tiny = dict(n_train=60, n_test=30, fields=1, layers=2, kernel_size=3, hidden=8, generations=1,
                parent_size=2, epochs_d=1, fig12_train=40, fig12_epochs=1, cost=((1, 8, 2),), cost_repeats=1)
    for name, n in (("equinas-table3", 16), ("equinas-table4", 10), ("equinas-fig12", 12), ("equinas-cost", 2)):
        rows = X.run(name, data, str(tmp_path), seeds=(0, 1), quick=True, sizes=tiny, log=lambda s: None)
        assert len(rows) == n
        assert all((tmp_path / f"{name}.{ext}").stat().st_size > 0 for ext in ("md", "csv", "png"))
        assert len((tmp_path / f"{name}.csv").read_text().strip().splitlines()) == n + 1
    table3 = (tmp_path / "equinas-table3.md").read_text()
    assert "1.78 ± 0.04" in table3 and "2.96 ± 0.05" in table3          # C1 (prior: C4) beside the thesis
    assert "2.29 ± 0.27" in (tmp_path / "equinas-table4.md").read_text()
    logs = []
    X.run("equinas-table4", data, str(tmp_path), seeds=(0, 1), quick=True, sizes=tiny, log=logs.append)
    assert sum("done earlier" in s for s in logs) == 10
    with pytest.raises(ValueError, match="unknown EquiNAS experiment 'table9'"):
        X.run("table9", data, str(tmp_path))
