"""EquiNAS (Maile's thesis Ch. 4) against the setup of Sec. 4.5 rather than the equations: where the
backbone pools, that EquiNAS_D takes its Z steps, that the networks learn, that z follows a
group the data favours, the thesis's evaluation protocol (running BatchNorm statistics), its
untrained priors and Table 3's aggregate, its scale preset, the rotMNIST files and --equinas's
flags. Each test's docstring names the bug it catches."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import equinas as E
import train
from conftest import make_fake_mnist
from experiments import thesis_equinas as X
from harness import data, rotmnist


def _conv_input_sizes(net, size):
    sizes = []
    hooks = [c.register_forward_pre_hook(lambda m, a: sizes.append(a[0].shape[-1])) for c in net.convs]
    net.eval()(torch.zeros(2, 1, size, size))
    for h in hooks:
        h.remove()
    return sizes


def test_backbone_pools_after_layers_3_5_7_only():
    """Catches average pooling after every layer (or after the odd 0-based ones) instead of after
    every other layer from the third (Sec. 4.5; the authors' 28 -> 14 -> 7 -> 4 on MNIST)."""
    net = E.EquiCNN(["C4"] * 8, fields=1, kernel_size=3, hidden=8)
    # layer l (1-based) reads the map after the pools that follow layers 3, 5 and 7
    assert _conv_input_sizes(net, 28) == [28, 28, 28, 14, 14, 7, 7, 4]
    assert _conv_input_sizes(net, 16) == [16, 16, 16, 8, 8, 4, 4, 2]


def test_search_differentiable_takes_one_adam_z_step_per_psi_step():
    """Catches EquiNAS_D without Z steps (z_lr not passed on to fit, or no Z optimizer): after
    exactly one step on one full batch, Adam's first step moves every alpha by z_lr (its update
    is -lr · m / sqrt(v) = -lr · sign(grad)), whatever the Psi learning rate."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 12, 12, generator=g), torch.arange(16) % 3
    for z_lr in (0.01, 0.03):
        net, st = E.search_differentiable(x, y, epochs=1, lr=0.0, z_lr=z_lr, batch_size=16, layers=3,
                                          fields=1, kernel_size=3, hidden=8)
        assert st["step"] == 1
        for a in net.alphas():
            assert torch.allclose(a.abs(), torch.full_like(a, z_lr), rtol=1e-3), (z_lr, a)
        assert all(abs(sum(z) - 1) < 1e-5 for z in net.z())


def _rotated_shapes(n, seed, size=16):
    """An easy rotated two-class task: a bar (class 0) or a plus (class 1), each turned by its own
    angle in [0, 2π) (bilinear), plus noise of std 0.1."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(2, (n,), generator=g)
    x, c = torch.zeros(n, 1, size, size), size // 2
    x[y == 0, 0, c - 1:c + 1, c - 5:c + 5] = 1
    x[y == 1, 0, c - 4:c + 4, c - 1:c + 1] = 1
    x[y == 1, 0, c - 1:c + 1, c - 4:c + 4] = 1
    a = torch.rand(n, generator=g) * 2 * math.pi
    theta = torch.stack([torch.stack([a.cos(), -a.sin(), 0 * a], 1),
                         torch.stack([a.sin(), a.cos(), 0 * a], 1)], 1)
    x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
    return x + 0.1 * torch.randn(x.shape, generator=g), y


@pytest.mark.parametrize("seed", [0, 1])
def test_c4_equicnn_learns_an_easy_rotated_task(seed):
    """Catches a backbone that cannot learn (a broken head, group pooling or optimizer wiring):
    a 4-layer C4 EquiCNN, 64 Adam steps, under 10% test error with running BatchNorm statistics
    (chance: 50%; measured: 0% on seeds 0-2)."""
    x, y = _rotated_shapes(512, seed)
    xt, yt = _rotated_shapes(256, 100 + seed)
    spec = {"arch": ["C4"] * 4, "config": dict(fields=1, kernel_size=3, in_channels=1, classes=2, hidden=8)}
    net, _ = E.fit(spec, x, y, 4, "adam", 0.01, batch_size=32, seed=seed)
    assert 1 - E.accuracy(net, xt, yt) < 0.10


@pytest.mark.parametrize("target", ["C4", "D2"])
def test_z_moves_to_the_group_whose_filter_produced_the_data(target):
    """Catches a [G]-mixed layer whose z does not follow the data (a Z gradient of the wrong sign,
    z ignored for some group): with the filters fixed, the targets are the output of the mixed
    layer's own `target` component, so Eq. 12's loss is least at z = one-hot on it; 40 Adam Z
    steps (lr 0.1) must put most of z there (init: 1/6)."""
    torch.manual_seed(1)
    layer = E.MixedGroupConv2d(2, 2, 3)
    x = torch.randn(32, 16, 10, 10)
    with torch.no_grad():
        i = layer.groups.index(target)
        want = F.conv2d(x, layer.layers[i].expanded(layer.kernel(i)), padding=1)
    opt = torch.optim.Adam([layer.alpha], lr=0.1)
    for _ in range(40):
        opt.zero_grad()
        F.mse_loss(layer(x), want).backward()
        opt.step()
    assert layer.z()[i] > 0.6


def test_the_thesis_protocol_is_the_default_and_recalibration_a_named_option(monkeypatch):
    """Catches BatchNorm recalibration switched on by default (the thesis evaluates with running
    statistics) or the bn_images knob not reaching the searches."""
    assert X.SIZES[False]["bn_images"] == X.SIZES[True]["bn_images"] == X.THESIS_SIZES["bn_images"] == 0
    assert X.calibration(torch.zeros(4, 1, 8, 8), 0) is None
    calls = []
    monkeypatch.setattr(X, "recalibrate_bn", lambda net, x: calls.append(len(x)))
    X.calibration(torch.zeros(50, 1, 8, 8), 20)(None)
    assert calls == [20]


def test_recalibrated_error_is_reported_beside_from_a_copy(monkeypatch):
    """Catches the reported-beside recalibration (knob bn_also) evaluating the running statistics
    (recalibration not done), recalibrating the network itself (the thesis's number and the saved
    network change), or ignoring bn_also: a trained C4 network whose running statistics are
    corrupted errs at chance; its recalibrated copy is back under 10%; the network is untouched."""
    x, y = _rotated_shapes(512, 0)
    xt, yt = _rotated_shapes(256, 100)
    spec = {"arch": ["C4"] * 4, "config": dict(fields=1, kernel_size=3, in_channels=1, classes=2, hidden=8)}
    net, _ = E.fit(spec, x, y, 4, "adam", 0.01, batch_size=32, seed=0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (E.FieldBatchNorm, torch.nn.BatchNorm1d)):
                m.running_mean += 50.0
    before = {k: v.clone() for k, v in net.state_dict().items()}
    d = dict(train=(x, y), test=(xt, yt))
    sz = dict(X.SIZES[False], bn_also=400)
    assert 1 - E.accuracy(net, xt, yt) > 0.3
    assert X._recalibrated_error(net, d, sz) < 10.0
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    seen, real = [], X.recalibrate_bn
    monkeypatch.setattr(X, "recalibrate_bn", lambda n, imgs: (seen.append(len(imgs)), real(n, imgs)))
    X._recalibrated_error(net, d, sz)
    assert seen == [400]
    assert X._recalibrated_error(net, d, dict(sz, bn_also=0)) is None
    assert X._recalibrated_error(net, d, dict(sz, bn_images=100)) is None     # net itself is recalibrated


def test_thesis_preset_is_sec_4_5():
    """Catches a thesis-scale preset that is not Sec. 4.5's: all 12,000 / 50,000 rotMNIST images,
    16 D4 fields, 8 layers, k = 5, 50 generations, parent size 5, 100 EquiNAS_D epochs."""
    sz = X.size_knobs(False, {"thesis": 1})
    assert (sz["n_train"], sz["n_test"], sz["fields"]) == (12000, 50000, 16)
    assert (sz["layers"], sz["kernel_size"], sz["hidden"]) == (8, 5, 64)
    assert (sz["generations"], sz["parent_size"], sz["epochs_d"], sz["bn_images"]) == (50, 5, 100, 0)
    assert X.size_knobs(True, {"fields": 3})["fields"] == 3


def test_pool_input_averages_2x2_blocks_after_the_rotation():
    """Catches the knob pool_input pooling before the rotation or the normalization taken from the
    unpooled images."""
    x = torch.rand(20, 1, 8, 8)
    data = (x, torch.arange(20) % 2, x[:10], torch.arange(10) % 2)
    shift = lambda v, s: torch.roll(v, 1, -1)                # noqa: E731  (does not commute with pooling)
    d = X.prepare(data, 20, 10, shift, pool=2)
    xtr = torch.cat([d["valid"][0], d["train"][0]])           # the first 10% are validation
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    want = torch.roll(x[perm], 1, -1).reshape(20, 1, 4, 2, 4, 2).mean((3, 5))
    assert torch.allclose(xtr, want, atol=1e-6)
    assert d["mean"] == pytest.approx(float(d["train"][0].mean()), abs=1e-6)


def test_untrained_prior_is_the_prior_network_relaxed_at_init():
    """Catches an untrained-prior baseline that is not the prior group's network (another init)
    or not relaxed (the prior's parameter count): C1 (prior: D4) computes the seed's all-D4
    network's function with the parameters of a C1 network of the same width."""
    cfg = dict(layers=3, fields=1, kernel_size=3, in_channels=1, classes=4, hidden=8)
    spec, state = X.prior_network("C1", "D4", seed=3, **cfg)
    net = E.EquiCNN.from_spec(spec)
    net.load_state_dict(state)
    torch.manual_seed(3)
    d4 = E.EquiCNN(["D4"] * 3, **{k: v for k, v in cfg.items() if k != "layers"})
    x = torch.randn(4, 1, 12, 12)
    assert torch.allclose(net.eval()(x), d4.eval()(x), atol=1e-5)
    assert net.groups() == ["C1"] * 3
    c1 = E.EquiCNN(["C1"] * 3, **{k: v for k, v in cfg.items() if k != "layers"})
    assert net.num_params() == c1.num_params()


def test_table3_headline_is_the_population_mean_and_priors_are_rows(tmp_path):
    """Catches Table 3's EquiNAS_E row being the best member (the thesis aggregates the final
    population) and the untrained-prior rows missing."""
    d = X.prepare((torch.rand(80, 1, 12, 12), torch.arange(80) % 3, torch.rand(30, 1, 12, 12),
                   torch.arange(30) % 3), 60, 30)
    sz = X.size_knobs(True, dict(fields=1, layers=2, kernel_size=3, hidden=8, generations=1,
                                 parent_size=3))
    rows, extras = X.experiment_table3(d, sz, [0], str(tmp_path), log=lambda *a: None)
    e = next(r for r in rows if r["method"] == "EquiNAS_E")
    pop = extras[0]["population"]
    assert len(pop) >= 2
    assert e["test_error"] == pytest.approx(sum(p[3] for p in pop) / len(pop), abs=0.01)
    assert e["best_test_error"] == max(pop, key=lambda p: p[2])[3]
    assert e["test_error_recal"] == pytest.approx(sum(p[4] for p in pop) / len(pop), abs=0.01)
    assert {r["method"] for r in rows} >= set(X.PRIORS)


def _write_amat(path, images, labels):
    np.savetxt(path, np.concatenate([images.reshape(len(images), -1), labels[:, None]], 1), fmt="%.6g")


def test_rotmnist_reader_matches_the_authors_layout(tmp_path):
    """Catches transposed images (row r, column c must be value 28 r + c, as the authors'
    reshape), labels as floats, a single file accepted, or the wrong normalization constants."""
    d = tmp_path / "mnist_rotation_new"
    d.mkdir()
    rng = np.random.default_rng(0)
    imgs = [rng.random((n, 784)).round(4) for n in (6, 4)]
    labs = [np.arange(n) % 10 for n in (6, 4)]
    _write_amat(d / rotmnist.FILES[0], imgs[0], labs[0])
    with pytest.raises(SystemExit, match="holds only"):
        rotmnist.find_files(str(tmp_path))
    _write_amat(d / rotmnist.FILES[1], imgs[1], labs[1])
    xtr, ytr, xte, yte = data.load_dataset("rotmnist", str(tmp_path))
    assert xtr.shape == (6, 1, 28, 28) and xte.shape == (4, 1, 28, 28) and ytr.dtype == torch.int64
    assert xtr[2, 0, 5, 7].item() == pytest.approx(imgs[0][2, 5 * 28 + 7], abs=1e-6)
    assert ytr.tolist() == labs[0].tolist() and yte.tolist() == labs[1].tolist()
    assert rotmnist.NORM == (0.12996, 0.29698) and rotmnist.SIZES == (12000, 50000)


def test_equinas_cli_honours_sizes_and_reads_rotmnist(tmp_path, monkeypatch):
    """Catches --equinas refusing or ignoring --sizes, rotating rotMNIST again, or normalizing it
    by anything but the authors' constants."""
    d = tmp_path / "rot"
    d.mkdir()
    rng = np.random.default_rng(1)
    for f, n in zip(rotmnist.FILES, (40, 20)):
        _write_amat(d / f, rng.random((n, 784)).round(3), np.arange(n) % 10)
    seen = {}
    search = E.search_differentiable
    monkeypatch.setattr(E, "search_differentiable",
                        lambda *a, **k: seen.update(k, x=a[0]) or search(*a, **k))
    monkeypatch.setattr(X, "rotate_images", lambda *a, **k: pytest.fail("rotMNIST rotated again"))
    train.main(["--equinas", "differentiable", "--dataset", "rotmnist", "--data", str(d), "--epochs", "1",
                "--sizes", "n_train=30,n_test=10,fields=2,layers=2,kernel_size=3,hidden=8",
                "--save", str(tmp_path / "runs"), "--run_name", "r"])
    assert (seen["fields"], seen["layers"], seen["kernel_size"], seen["hidden"]) == (2, 2, 3, 8)
    assert (seen["mean"], seen["std"]) == rotmnist.NORM and len(seen["x"]) == 27       # 10% held out
    out = json.loads((tmp_path / "runs" / "r" / "result.json").read_text())
    assert len(out["groups"]) == 2


def test_equinas_cli_rejects_unknown_size_knobs_and_rotmnist_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST", str(tmp_path / "nowhere"))
    make_fake_mnist(str(tmp_path / "d"))
    with pytest.raises(SystemExit, match="unknown knob"):
        train.main(["--equinas", "evolutionary", "--data", str(tmp_path / "d"), "--sizes", "feilds=2",
                    "--save", str(tmp_path / "runs")])
    with pytest.raises(SystemExit, match="rotmnist"):
        train.main(["--neurogenesis", "static", "--dataset", "rotmnist", "--save", str(tmp_path / "runs")])
