"""Fidelity tests: each test pins one detail of DARTS /
BioNAS / EG-NAS that a single-line slip would silently change, checked against an independent
computation -- a hand count, a closed form, torch's own SGD, or a number from the original
code or paper, written out literally here (never read back from the code under test).

Every test's docstring names the planted bug(s) it guards ("Guards: ..."):
    1 auxiliary head after the first reduction instead of after cell 2*layers//3
    2 search ops / preprocessing built with affine BatchNorm
    3 the alpha split equal to the weight split
    4 drop-path never applied in retraining (cell, network, and the per-epoch ramp)
    5 auxiliary loss weight 0 (DARTS: 0.4)
    6 retraining without input normalization
    7 the unrolled (second-order) virtual step without weight decay
    8 a non-affine stem BatchNorm (and NetworkEval's ops / preprocessing non-affine)
    9 DARTS_V2's parameter count (3,349,342 in the original DARTS code)
   10 every preset's defaults against the source scripts / paper tables
   11 auxiliary weight and drop-path ramp through the real retraining loop (train.main)
"""
import copy
import gzip
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import darts
import genotypes
from harness import options
from harness import retrain
from harness import search
import train
from darts import Genotype
from harness.data import DATASETS
from conftest import cells_read_by_auxiliary_head, make_fake_mnist

# a 2-node genotype (nodes=2 networks): identities and parameterized ops in both cells
G_TINY = Genotype(normal=[("sep_conv_3x3", 0), ("skip_connect", 1),
                          ("dil_conv_3x3", 0), ("sep_conv_3x3", 2)], normal_concat=[2, 3],
                  reduce=[("max_pool_3x3", 0), ("skip_connect", 1),
                          ("avg_pool_3x3", 2), ("sep_conv_3x3", 0)], reduce_concat=[2, 3])
# Non-identity ops per cell of G_TINY, counted by hand: normal: sep, dil, sep (skip_connect at
# stride 1 is the identity) = 3; reduce: max_pool, skip_connect on input 1 at stride 2
# (FactorizedReduce), avg_pool, sep = 4. A 3-layer network is normal, reduce, reduce.
G_TINY_DROPPED_EDGES_3_LAYERS = 3 + 4 + 4

# DARTS genotypes.py, DARTS_V2 (all ops backprop, plain DARTS names)
DARTS_V2 = genotypes.DARTS_V2     # the published cell, written out in genotypes.py
DARTS_PRIMITIVES = ['none', 'max_pool_3x3', 'avg_pool_3x3', 'skip_connect', 'sep_conv_3x3',
                    'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5']   # DARTS genotypes.py

# CIFAR-10 statistics of DARTS's utils._data_transforms_cifar10 (CIFAR_MEAN / CIFAR_STD,
# rounded to 4 digits) and Fashion-MNIST's usual (0.2860, 0.3530)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)


def _bns(module):
    return [(n, m) for n, m in module.named_modules() if isinstance(m, nn.BatchNorm2d)]


# ============================================================================ 1: auxiliary head

@pytest.mark.parametrize("layers, aux_cell, first_reduction",
                         [(3, 2, 1), (5, 3, 1), (6, 4, 2), (8, 5, 2)])
def test_auxiliary_head_reads_the_cell_two_thirds_deep(layers, aux_cell, first_reduction):
    """Guards: 1 (auxiliary head after the first reduction, cell layers//3, instead of after
    cell 2*layers//3 as in DARTS's NetworkCIFAR). aux_cell = 2*layers//3 worked out by hand;
    the head's input must be exactly that cell's output (forward hooks), with the channels of
    the second reduction: multiplier 2 x C 4 x 4 = 32."""
    torch.manual_seed(0)
    net = darts.NetworkEval(4, 10, layers, G_TINY, auxiliary=True, in_channels=1).train()
    read, head_input = cells_read_by_auxiliary_head(net, torch.rand(2, 1, 16, 16))
    assert read == [aux_cell], f"the auxiliary head reads the output of cell(s) {read}; " \
        f"DARTS puts it after cell 2*{layers}//3 = {aux_cell} (first reduction: {first_reduction})"
    assert head_input.shape[1] == 32 and net.auxiliary_head.features[0].in_channels == 32


# ============================================================================ 2, 8: affine BN

def test_search_network_batchnorms_are_affine_only_in_the_stem():
    """Guards: 2 (search ops or the cells' preprocessing built with affine=True; DARTS's
    model_search.py builds every MixedOp candidate and the preprocessing with affine=False)
    and 8 (a non-affine stem BN: DARTS's stem BN is affine in the supernet too).
    BN count worked out by hand for C=4, 3 layers (normal, reduce, reduce), 2 nodes (5 edges,
    4 of them at stride 2 in a reduction cell), the 8 DARTS candidates: per edge max_pool+BN 1,
    avg_pool+BN 1, sep_conv 2 x 2, dil_conv 1 x 2, skip_connect 0 (identity) or 1
    (FactorizedReduce) -> 8 at stride 1, 9 at stride 2; plus 2 preprocessing BNs per cell:
    normal 2 + 5*8 = 42, reduction 2 + 4*9 + 8 = 46 -> 42 + 46 + 46 = 134."""
    torch.manual_seed(0)
    net = darts.Network(4, 10, 3, DARTS_PRIMITIVES, steps=2, multiplier=2, in_channels=1)
    cell_bns = _bns(net.cells)
    assert len(cell_bns) == 134
    affine = [n for n, m in cell_bns if m.affine]
    assert not affine, f"{len(affine)} affine BNs in the search cells, e.g. {affine[:3]}"
    # the only parameters inside the cells are convolution kernels (no BN gamma/beta)
    assert all(p.dim() == 4 for p in net.cells.parameters())
    stem_bn = net.stem[1]
    assert isinstance(stem_bn, nn.BatchNorm2d) and stem_bn.affine, "stem BN must be affine"
    assert stem_bn.weight.shape == (12,) and stem_bn.bias.shape == (12,)     # 3 * C
    assert [n for n, _ in _bns(net)] == ["stem.1"] + [f"cells.{n}" for n, _ in cell_bns]


def test_eval_network_batchnorms_are_all_affine():
    """Guards: 8 (a non-affine stem BN; NetworkEval's ops and preprocessing non-affine --
    DARTS's model.py builds them with affine=True). BN count by hand for G_TINY, 3 layers:
    normal cell: 2 preprocessing + sep 2 + dil 1 + sep 2 = 7; reduction cell: 2 + skip at
    stride 2 (FactorizedReduce) 1 + sep 2 = 5 (pools carry no BN in NetworkEval); stem 1;
    auxiliary head 2 -> 1 + 7 + 5 + 5 + 2 = 20, every one with gamma and beta."""
    torch.manual_seed(0)
    net = darts.NetworkEval(4, 10, 3, G_TINY, auxiliary=True, in_channels=1)
    bns = _bns(net)
    assert len(bns) == 20
    non_affine = [n for n, m in bns if not m.affine]
    assert not non_affine, f"non-affine BNs in NetworkEval: {non_affine}"
    assert net.stem[1].weight.shape == (12,)


# ============================================================================ 3: search split

def _write_idx(path, array):
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def _indexed_fmnist(root, n=300):
    """Fashion-MNIST-format files whose image i carries i in pixels (0, 0) and (0, 1) and whose
    label is i % 10."""
    raw = os.path.join(root, "FashionMNIST", "raw")
    os.makedirs(raw)
    rng = np.random.default_rng(0)
    for split, m in (("train", n), ("t10k", 20)):
        x = rng.integers(0, 256, (m, 28, 28))
        x[:, 0, 0], x[:, 0, 1] = np.arange(m) % 256, np.arange(m) // 256
        _write_idx(os.path.join(raw, f"{split}-images-idx3-ubyte.gz"), x)
        _write_idx(os.path.join(raw, f"{split}-labels-idx1-ubyte.gz"), np.arange(m) % 10)


def _ids(x):
    return (x[:, 0, 0, 0].long() + 256 * x[:, 0, 0, 1].long()).tolist()


@pytest.mark.parametrize("extra, n_all, n_weight, n_alpha", [
    ([], 300, 150, 150),                                     # default portion 1/2
    (["--subset", "201", "--train_portion", "0.3"], 201, 60, 141),   # floor(201 * 0.3) = 60
    (["--train_portion", "0.8"], 300, 240, 60),
    (["--subset", "220", "--schedule", "cs10"], 220, 200, 20),      # 10/11 of 220
])
def test_search_split_is_a_disjoint_partition(tmp_path, extra, n_all, n_weight, n_alpha):
    """Guards: 3 (the alpha split equal to, or overlapping, the weight split). The images
    encode their index: the weight and alpha parts must be disjoint, of sizes
    floor(n * portion) and the rest (by hand), their union the (subset of the) training set
    with no image twice, and every label the one of its image."""
    root = str(tmp_path / "data")
    _indexed_fmnist(root)
    args = options.build_parser().parse_args(
        ["--search", "darts", "--dataset", "fashion-mnist", "--data", root] + extra)
    options.apply_defaults(args, "search")
    (xw, yw), (xa, ya) = search.split_search_data(args)
    iw, ia = _ids(xw), _ids(xa)
    assert (len(iw), len(ia)) == (n_weight, n_alpha)
    assert not set(iw) & set(ia), f"{len(set(iw) & set(ia))} images in both parts"
    assert len(set(iw)) == len(iw) and len(set(ia)) == len(ia)
    union = set(iw) | set(ia)
    assert len(union) == n_all and union <= set(range(300))
    if n_all == 300:
        assert union == set(range(300))
    assert yw.tolist() == [i % 10 for i in iw] and ya.tolist() == [i % 10 for i in ia]


# ============================================================================ 4: drop-path

G_NO_IDENTITY = Genotype(normal=[("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
                                 ("max_pool_3x3", 0), ("sep_conv_3x3", 2)], normal_concat=[2, 3],
                         reduce=[("max_pool_3x3", 0), ("avg_pool_3x3", 1),
                                 ("sep_conv_3x3", 2), ("max_pool_3x3", 1)], reduce_concat=[2, 3])


def test_drop_path_near_one_leaves_only_the_classifier_bias():
    """Guards: 4 (drop-path never applied: EvalCell or NetworkEval ignoring
    model.drop_path_prob in training mode). With no identity edge, drop_path_prob = 1 - 1e-7
    zeroes every edge output (a sample survives with probability 1e-7 per edge), so every
    cell outputs 0 and the logits of every sample are exactly the classifier's bias (global
    pooling of 0, then W 0 + b). In eval mode (or with p = 0) the same network does not."""
    torch.manual_seed(0)
    net = darts.NetworkEval(4, 10, 3, G_NO_IDENTITY, auxiliary=False, in_channels=1)
    with torch.no_grad():
        net.classifier.bias.copy_(torch.arange(10.0))
    x = torch.rand(6, 1, 16, 16)
    bias = torch.arange(10.0).expand(6, 10)
    net.train()
    net.drop_path_prob = 1 - 1e-7
    torch.manual_seed(1)
    assert torch.equal(net(x), bias), "training-mode logits with p ~ 1 are not the bias alone"
    net.drop_path_prob = 0.0
    assert (net(x) - bias).abs().max() > 1e-4
    net.eval()
    net.drop_path_prob = 1 - 1e-7
    assert (net(x) - bias).abs().max() > 1e-4                # no drop-path in eval mode


def test_drop_path_zeroes_or_rescales_whole_samples_in_a_cell():
    """Guards: 4 (drop-path never applied, or applied without the 1/(1-p) rescaling). Node 2
    of G_NO_IDENTITY's normal cell is drop(sep(pre0(s0))) + drop(dil(pre1(s1))): with p = 0.5
    each sample is one of 0, 2a, 2b, 2a + 2b, a and b the two edge outputs recomputed here
    from the cell's own modules; with 16 samples more than one case occurs."""
    torch.manual_seed(0)
    cell = darts.NetworkEval(4, 10, 3, G_NO_IDENTITY, auxiliary=False, in_channels=1).cells[0]
    assert not cell.reduction
    cell.train()
    s0, s1 = torch.randn(16, 12, 8, 8), torch.randn(16, 12, 8, 8)
    with torch.no_grad():
        a = cell.ops[0](cell.preprocess0(s0))
        b = cell.ops[1](cell.preprocess1(s1))
        torch.manual_seed(3)
        node2 = cell(s0, s1, 0.5)[:, :4]
    cases = []
    for i in range(16):
        options_i = [torch.zeros_like(a[i]), 2 * a[i], 2 * b[i], 2 * a[i] + 2 * b[i]]
        match = [k for k, o in enumerate(options_i)
                 if torch.allclose(node2[i], o, rtol=1e-5, atol=1e-5)]
        assert len(match) == 1, f"sample {i}: node 2 is none of 0, 2a, 2b, 2a+2b"
        cases.append(match[0])
    assert len(set(cases)) > 1, f"every sample in case {cases[0]}: no random drop"


# ============================================================================ 6: normalization

@pytest.mark.parametrize("dataset, c_in, mean, std", [
    ("cifar10", 3, CIFAR10_MEAN, CIFAR10_STD), ("fashion-mnist", 1, FMNIST_MEAN, FMNIST_STD)])
def test_retrained_network_normalizes_its_input(dataset, c_in, mean, std):
    """Guards: 6 (retraining without normalization). retrain.build_eval_model's network must
    map x in [0, 1] to the logits that the same weights, normalization removed, give for
    (x - mean) / std, with the dataset's published mean / std (written out above; data.DATASETS
    must hold them)."""
    assert np.allclose(DATASETS[dataset][2], mean, atol=1e-4)
    assert np.allclose(DATASETS[dataset][3], std, atol=1e-4)
    args = options.build_parser().parse_args(
        ["--train", "--dataset", dataset, "--init_channels", "4", "--layers", "3"])
    options.apply_defaults(args, "train")
    torch.manual_seed(0)
    model = retrain.build_eval_model(args, G_TINY).eval()
    bare = copy.deepcopy(model)
    bare.normalize = nn.Identity()
    x = torch.rand(4, c_in, 16, 16)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        got, want, raw = model(x), bare((x - m) / s), bare(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=lambda m: (
        f"{dataset}: the network's logits for x are not those of the same weights on "
        f"(x - mean) / std -- is the input normalized?\n{m}"))
    assert (raw - want).abs().max() > 1e-3              # the normalization matters here


# ============================================================================ 7: unrolled step

CANDS = ["max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"]


def _hand_grads(net, x, y):
    """grad_w CE(net(x), y) by torch.autograd on a copy of the network."""
    c = copy.deepcopy(net)
    ws = c.weights()
    gs = torch.autograd.grad(F.cross_entropy(c(x), y), ws, allow_unused=True)
    return [torch.zeros_like(w) if g is None else g for w, g in zip(ws, gs)]


@pytest.mark.slow
@pytest.mark.parametrize("nesterov", [False, True])
def test_unrolled_step_is_the_sgd_step_with_weight_decay(nesterov):
    """Guards: 7 (the unrolled, second-order virtual step without weight decay, or without
    momentum). darts.Architect._unrolled_model must hold, per weight, with d = grad + wd * w
    (grad by torch.autograd on a copy, wd = 0.05 so that a missing term shows):
        heavy ball (DARTS):  w - eta * (m * buf + d)
        nesterov=True:       w - eta * (d + m * (m * buf + d))
    where, before the optimizer's first step, buf = 0 (w - eta d; Nesterov w - eta (1 + m) d)
    with buf = g0 + wd * w0 after one real torch.optim.SGD step (hand-computed and checked
    against the optimizer's state); and it must equal the step a real torch SGD with lr eta
    takes from the same state."""
    torch.manual_seed(0)
    net = darts.Network(4, 10, 3, CANDS, steps=2, multiplier=2, in_channels=1).double()
    m, wd, eta = 0.9, 0.05, 0.5
    x0, y0 = torch.rand(8, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (8,))
    x, y = torch.rand(8, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (8,))
    opt = torch.optim.SGD(net.weights(), lr=0.05, momentum=m, weight_decay=wd,
                          nesterov=nesterov)
    arch = darts.Architect(net, momentum=m, weight_decay=wd, nesterov=nesterov)

    def torch_sgd_step(state):
        c = copy.deepcopy(net)
        o = torch.optim.SGD(c.weights(), lr=eta, momentum=m, weight_decay=wd, nesterov=nesterov)
        if state is not None:             # (load_state_dict shares the buffers' tensors)
            o.load_state_dict(copy.deepcopy(state))
            for g in o.param_groups:
                g["lr"] = eta
        o.zero_grad()
        F.cross_entropy(c(x), y).backward()
        o.step()
        return [w.detach() for w in c.weights()]

    # 1) no momentum buffer yet (the optimizer has taken no step)
    w = [p.detach().clone() for p in net.weights()]
    g = _hand_grads(net, x, y)
    sgd = torch_sgd_step(None)
    names = [n for n, _ in net.named_parameters() if not n.startswith(("alphas_", "betas_"))]

    def close(a, b, what, name):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=lambda m: (
            f"{what} of {name} is not the hand-computed w' ({case}, nesterov={nesterov}):\n{m}"))

    case = "no momentum buffer"
    got = [p.detach() for p in arch._unrolled_model(x, y, eta, opt).weights()]
    for name, wi, gi, si, ui in zip(names, w, g, sgd, got):
        d = gi + wd * wi                   # torch's first step: buf = d
        want = wi - eta * (d + m * d) if nesterov else wi - eta * d
        close(ui, want, "Architect._unrolled_model", name)
        close(si, want, "torch.optim.SGD's step", name)
    # 2) after one real SGD step: buf = g0 + wd * w0
    w0 = [p.detach().clone() for p in net.weights()]
    g0 = _hand_grads(net, x0, y0)
    opt.zero_grad()
    F.cross_entropy(net(x0), y0).backward()
    opt.step()
    bufs = [gi + wd * wi for gi, wi in zip(g0, w0)]
    for p, b in zip(net.weights(), bufs):
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], b, rtol=0, atol=1e-10)
    w = [p.detach().clone() for p in net.weights()]
    g = _hand_grads(net, x, y)
    sgd = torch_sgd_step(opt.state_dict())
    case = "after one SGD step (momentum buffer)"
    got = [p.detach() for p in arch._unrolled_model(x, y, eta, opt).weights()]
    for name, wi, gi, bi, si, ui in zip(names, w, g, bufs, sgd, got):
        d = gi + wd * wi
        want = wi - eta * (d + m * (m * bi + d)) if nesterov else wi - eta * (m * bi + d)
        close(ui, want, "Architect._unrolled_model", name)
        close(si, want, "torch.optim.SGD's step", name)


# ============================================================================ 9: DARTS_V2 size

def test_darts_v2_parameter_count_is_the_original_codes():
    """Guards: 9 (any change to NetworkEval's parameters: a missing affine BN (8), an extra
    or missing op, a wrong channel count). The original DARTS code's NetworkCIFAR(36, 10, 20,
    DARTS_V2) has 3,349,342 parameters without the auxiliary head (count_parameters_in_MB
    3.349342). With the head DARTS still counts 3.349342 MB (it leaves out 'auxiliary'
    parameters); the head itself, by hand: 1x1 conv 576*128 + BN 2*128 + 2x2 conv
    128*768*4 + BN 2*768 + linear 768*10 + 10 = 476,426, reading 576 = 4 * 4 * 36 channels."""
    net = darts.NetworkEval(36, 10, 20, DARTS_V2, auxiliary=False)
    assert sum(p.numel() for p in net.parameters()) == 3_349_342
    aux = darts.NetworkEval(36, 10, 20, DARTS_V2, auxiliary=True)
    assert sum(p.numel() for n, p in aux.named_parameters() if "auxiliary" not in n) == 3_349_342
    assert aux.auxiliary_head.features[0].in_channels == 576
    head = 576 * 128 + 2 * 128 + 128 * 768 * 4 + 2 * 768 + 768 * 10 + 10
    assert head == 476_426
    assert sum(p.numel() for p in aux.parameters()) == 3_349_342 + head


# ============================================================================ 10: presets

def _defaults(argv, mode, dataset=None):
    args = options.build_parser().parse_args(argv)
    if dataset:
        args.dataset = dataset
    return options.apply_defaults(args, mode)


def _mismatches(args, expected):
    return {k: (getattr(args, k, "<missing>"), v) for k, v in expected.items()
            if getattr(args, k, "<missing>") != v or
            type(getattr(args, k, None)) is bool and type(v) is not bool}


def test_search_presets_are_the_sources_values():
    """Guards: 10 (a preset value drifting from its source). Values written out from:
    --search darts (preset "authors"): the BioNAS authors' released train_search.py (DARTS's);
    --preset table4: BioNAS App. A.1 Table 4; --search egnas: EG-NAS's train_search.py.
    Shown as {flag: (got, expected)}."""
    authors = dict(batch_size=64, learning_rate=0.025, learning_rate_min=0.001, momentum=0.9,
                   nesterov=False, weight_decay=3e-4, epochs=50, init_channels=16, layers=8,
                   nodes=4, grad_clip=5.0, arch_learning_rate=3e-4, arch_weight_decay=1e-3,
                   partial_channels=1, supernet="darts")
    assert _mismatches(_defaults(["--search", "darts"], "search", "cifar10"), authors) == {}
    assert _mismatches(_defaults(["--search", "darts", "--preset", "authors"], "search",
                                 "cifar10"), authors) == {}
    table4 = dict(batch_size=256, learning_rate=0.1, learning_rate_min=0.0, nesterov=True,
                  weight_decay=3e-4, epochs=50, init_channels=16, layers=5, nodes=4)
    assert _mismatches(_defaults(["--search", "darts", "--preset", "table4"], "search",
                                 "cifar10"), table4) == {}
    egnas = dict(batch_size=256, learning_rate=0.1, learning_rate_min=0.0, momentum=0.9,
                 nesterov=False, weight_decay=3e-4, epochs=50, init_channels=16, layers=8,
                 warm_start_epochs=15, samples=3, population_size=50, eta=0.4, xi=0.1,
                 partial_channels=4, supernet="eg-nas")
    assert _mismatches(_defaults(["--search", "egnas"], "search", "cifar10"), egnas) == {}


def test_quick_search_preset_fuses_and_moves_alpha_but_the_paper_presets_do_not():
    """The quick preset: the fused supernet and Adam 3e-2 for alpha (measured: alpha
    within 3% of uniform at DARTS's 3e-4); the paper presets keep DARTS's 3e-4, unfused."""
    quick = _defaults(["--search", "darts", "--quick"], "search")
    assert quick.fused is True and quick.arch_learning_rate == 3e-2
    assert _defaults(["--search", "darts", "--quick", "--no-fused"], "search").fused is False
    assert _defaults(["--search", "darts", "--quick", "--arch_learning_rate", "1e-3"],
                     "search").arch_learning_rate == 1e-3
    assert _defaults(["--search", "darts", "--quick", "--crb"], "search").fused is False
    assert _defaults(["--search", "egnas", "--quick"], "search").fused is False
    for argv in (["--search", "darts"], ["--search", "darts", "--preset", "table4"]):
        full = _defaults(argv, "search", "cifar10")
        assert full.fused is False and full.arch_learning_rate == 3e-4


def test_retrain_and_resnet_defaults_are_the_sources_values(tmp_path):
    """Guards: 10 (and 5: the auxiliary weight's default). Retraining: DARTS's train.py /
    BioNAS Sec. 3.4 (cosine to 0: DARTS's CosineAnnealingLR without eta_min); drop-path 0.2,
    0.3 for a BioNAS-EG genotype (its genotype.json says "search": "egnas"). ResNet
    baselines: Biotorch (batch 128, lr 0.1, wd 1e-4, 250 epochs, multistep, 5000 held out)."""
    darts_train = dict(batch_size=96, learning_rate=0.025, learning_rate_min=0.0, momentum=0.9,
                       weight_decay=3e-4, epochs=600, init_channels=36, layers=20,
                       auxiliary=True, auxiliary_weight=0.4, cutout=16, drop_path_prob=0.2,
                       grad_clip=5.0, nesterov=False)
    assert _mismatches(_defaults(["--train"], "train", "cifar10"), darts_train) == {}
    for method, p in (("darts", 0.2), ("egnas", 0.3)):
        path = tmp_path / f"{method}.json"
        path.write_text(json.dumps(dict(G_TINY._asdict(), search=method)))
        got = _defaults(["--train", "--genotype", str(path)], "train", "cifar10")
        assert _mismatches(got, dict(darts_train, drop_path_prob=p)) == {}, method
    resnet = dict(batch_size=128, learning_rate=0.1, weight_decay=1e-4, epochs=250,
                  lr_schedule="multistep", holdout=5000)
    for model in ("resnet20", "resnet56"):
        assert _mismatches(_defaults(["--train", "--model", model], "train", "cifar10"),
                           resnet) == {}, model


# ============================================================================ 4, 5, 11: the loop

def _fake_args(tmp_path, *extra):
    """tiny_args of tests/test_train.py, always on the generated 96 + 48 images (fast)."""
    root = str(tmp_path / "data")
    make_fake_mnist(root)
    return ["--dataset", "fashion-mnist", "--data", root, "--save", str(tmp_path / "runs"),
            "--subset", "64", "--batch_size", "16", "--init_channels", "4", "--layers", "3",
            "--report_freq", "1", "--seed", "5", *extra]


@pytest.mark.slow
def test_retraining_loop_ramps_drop_path_and_weighs_the_auxiliary_loss(tmp_path, monkeypatch):
    """Guards: 4 (drop-path never applied in retraining: the ramp
    model.drop_path_prob = drop_path_prob * epoch / epochs not set, or the cells ignoring it),
    5 (auxiliary loss weight 0) and 11, through train.main on 64 tiny images (4 steps of 16 an
    epoch), 3 epochs, --drop_path_prob 0.3, the auxiliary head on, its weight left at the
    default. Recorded by hooks: every training forward sees p = 0.3 * e / 3 = 0, 0.1, 0.2 (by
    hand) and calls darts.drop_path once per non-identity edge (3 + 4 + 4, by hand) with that
    p (never in eval mode); the loss of each SGD step is, by hand,
    CE(logits) + 0.4 CE(logits_aux), and its gradient on the auxiliary classifier's weight is
    the closed form 0.4 (softmax(z_aux) - onehot(y))^T h / N, h the classifier's input."""
    gpath = tmp_path / "g.json"
    gpath.write_text(json.dumps(dict(G_TINY._asdict(), search="darts")))
    models, forwards, drops, aux, steps = [], [], [], {}, []
    build, drop_path, log_step = retrain.build_eval_model, darts.drop_path, retrain.log_step

    def recording_build(args, genotype):
        model = build(args, genotype)
        model.register_forward_pre_hook(
            lambda mod, inp: forwards.append((mod.training, mod.drop_path_prob)))
        model.auxiliary_head.classifier.register_forward_hook(
            lambda mod, inp, out: aux.update(h=inp[0].detach(), z=out.detach()))
        model.auxiliary_head.classifier.weight.register_hook(    # d loss / dW in the backward
            lambda g: aux.update(g=g.detach().clone()))
        models.append(model)
        return model

    def recording_drop_path(x, p):
        drops.append((len(forwards) - 1, p))
        return drop_path(x, p)

    def checking_log_step(loss, logits, y, *rest):          # after the step's backward
        z, h, n = aux["z"].double(), aux["h"].double(), len(y)
        onehot = F.one_hot(y, 10).double()

        def ce(t):                                            # mean -log softmax(t)[y], by hand
            return (torch.logsumexp(t, 1) - (t * onehot).sum(1)).mean()
        hand = ce(logits.detach().double()) + 0.4 * ce(z)
        g = aux.pop("g")                                      # this step's, never a stale one
        hand_g = 0.4 * (torch.softmax(z, 1) - onehot).T @ h / n
        steps.append((loss.item(), hand.item(), (g.double() - hand_g).abs().max().item(),
                      hand_g.abs().max().item()))
        return log_step(loss, logits, y, *rest)

    monkeypatch.setattr(retrain, "build_eval_model", recording_build)
    monkeypatch.setattr(darts, "drop_path", recording_drop_path)
    monkeypatch.setattr(retrain, "log_step", checking_log_step)
    train.main(_fake_args(tmp_path, "--train", "--genotype", str(gpath), "--epochs", "3",
                          "--auxiliary", "--drop_path_prob", "0.3", "--run_name", "re"))

    train_p = [p for training, p in forwards if training]
    assert len(train_p) == 12, f"{len(train_p)} training forwards, expected 3 epochs x 4 steps"
    hand_p = [0.0] * 4 + [0.1] * 4 + [0.2] * 4               # 0.3 * epoch / 3
    assert train_p == pytest.approx(hand_p, abs=1e-12), f"drop_path_prob seen: {train_p}"
    per_forward = {}
    for k, p in drops:
        assert forwards[k][0], "drop_path called in eval mode"
        assert p == pytest.approx(forwards[k][1], abs=1e-12)
        per_forward[k] = per_forward.get(k, 0) + 1
    expect = {k: G_TINY_DROPPED_EDGES_3_LAYERS for k, (t, p) in enumerate(forwards)
              if t and p > 0}
    assert per_forward == expect, "drop_path calls per training forward (index: calls) " \
        f"{per_forward}, expected {G_TINY_DROPPED_EDGES_3_LAYERS} in each of epochs 2-3"

    assert len(steps) == 12
    for loss, hand, g_err, g_scale in steps:
        assert loss == pytest.approx(hand, rel=1e-5), \
            f"loss {loss:.6f}, CE + 0.4 CE_aux by hand {hand:.6f}"
        assert g_scale > 1e-4 and g_err <= 1e-5 * max(1.0, g_scale), \
            f"auxiliary classifier gradient off the closed form by {g_err:.3g}"
