"""Tests of ops.py and darts.py against independent computations: shapes worked out by hand,
ops recomputed with torch.nn.functional from their weights, DARTS's discretization rule applied
by hand, exact (double-backward) second derivatives, Adam's closed-form first steps, and
the expectation of drop-path. (train.py's end-to-end test is in tests/test_train.py.)"""
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import darts
import ops
import rules
from darts import Genotype

DARTS_PRIMITIVES = ['none', 'max_pool_3x3', 'avg_pool_3x3', 'skip_connect', 'sep_conv_3x3',
                    'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5']   # DARTS genotypes.py
ALL_CANDIDATES = ops.search_space(rules=rules.RULES, skip_rules=rules.RULES)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The supernets here run thousands of tiny kernels: on a shared 2-core machine, intra-op
    threads only spin (a step is ~20x slower with 2 threads under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _rule_of(name):
    return ops.parse_candidate(name)[1]


def _expected_rule_convs(name, stride):
    """Number of convolutions in candidate `name`, counted by hand from the DARTS ops."""
    op = ops.parse_candidate(name)[0]
    return {"none": 0, "max_pool_3x3": 0, "avg_pool_3x3": 0,
            "skip_connect": 0 if stride == 1 else 2,          # Identity / FactorizedReduce
            "sep_conv_3x3": 4, "sep_conv_5x5": 4,              # 2 x (depthwise + pointwise)
            "dil_conv_3x3": 2, "dil_conv_5x5": 2}[op]


def _smooth(net):
    """Swap every ReLU for SiLU: a C^inf network on which finite differences converge."""
    for m in list(net.modules()):
        for n, c in list(m.named_children()):
            if isinstance(c, nn.ReLU):
                setattr(m, n, nn.SiLU())
    return net


def _cat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


# ----------------------------------------------------------------------------- ops.py

def test_search_space_sizes_and_darts_space():
    assert len(ops.search_space()) == 22                       # BioNAS-DARTS (Sec. 3.1)
    assert len(ops.search_space(zero=False)) == 21             # BioNAS-EG
    assert "none" not in ops.search_space(zero=False)
    assert ops.search_space(rules=("bp",), skip_rules=("bp",)) == DARTS_PRIMITIVES
    default = ops.search_space()
    assert len(set(default)) == 22
    for r in ("fa", "usf", "brsf", "frsf"):
        for op in ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"):
            assert f"{op}_{r}" in default
    assert {c for c in default if c.startswith("skip")} == \
        {"skip_connect_usf", "skip_connect_brsf", "skip_connect_frsf"}
    # with every rule: 1 none + 2 pools + 6 skips + 4 conv ops x 6 rules
    assert len(ALL_CANDIDATES) == 1 + 2 + 6 + 24
    assert "sep_conv_3x3_hebbian" in ALL_CANDIDATES and "sep_conv_3x3" in ALL_CANDIDATES


@pytest.mark.parametrize("name", ["sep_conv_7x7_fa", "sep_conv_3x3_foo", "max_pool_3x3_fa",
                                  "conv_3x3", "", "skip_connect_"])
def test_parse_candidate_unknown_names(name):
    with pytest.raises(ValueError) as e:
        ops.parse_candidate(name)
    msg = str(e.value)
    assert repr(name) in msg
    for valid in ("none", "max_pool_3x3", "sep_conv_3x3", "dil_conv_5x5", "skip_connect",
                  "usf", "brsf", "frsf", "hebbian"):
        assert valid in msg


def test_parse_candidate_and_names():
    assert ops.parse_candidate("sep_conv_3x3_usf") == ("sep_conv_3x3", "usf")
    assert ops.parse_candidate("skip_connect_frsf") == ("skip_connect", "frsf")
    assert ops.parse_candidate("dil_conv_5x5_hebbian") == ("dil_conv_5x5", "hebbian")
    assert ops.parse_candidate("sep_conv_3x3") == ("sep_conv_3x3", "bp")
    assert ops.parse_candidate("avg_pool_3x3") == ("avg_pool_3x3", None)
    assert ops.parse_candidate("none") == ("none", None)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [7, 8])
def test_every_candidate_shape_and_backward(stride, size):
    C = 4
    out_size = size if stride == 1 else math.ceil(size / 2)    # 7 -> 4, 8 -> 4
    for name in ALL_CANDIDATES:
        torch.manual_seed(0)
        op = ops.make_op(name, C, stride)
        x = torch.randn(2, C, size, size, requires_grad=True)
        y = op(x)
        assert y.shape == (2, C, out_size, out_size), (name, stride, size)
        if y.requires_grad:                                     # rule backward keeps x's shape
            gx, = torch.autograd.grad(y.square().sum(), x)
            assert gx.shape == x.shape and torch.isfinite(gx).all(), name


@pytest.mark.parametrize("stride", [1, 2])
def test_every_conv_in_a_ruled_op_carries_its_rule(stride):
    for name in ALL_CANDIDATES:
        op = ops.make_op(name, 4, stride)
        found = rules.layer_rules(op)
        convs = [m for m in op.modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == len(found) == _expected_rule_convs(name, stride), name
        rule = _rule_of(name)
        assert all(r == rule for r in found.values()), (name, found)
    fr = ops.make_op("skip_connect_frsf", 4, 2)            # FactorizedReduce's two 1x1 convs
    assert isinstance(fr.conv_1, rules.RuleConv2d) and fr.conv_1.rule == "frsf"
    assert isinstance(fr.conv_2, rules.RuleConv2d) and fr.conv_2.rule == "frsf"
    for name in DARTS_PRIMITIVES:                           # plain names are backprop
        assert set(rules.layer_rules(ops.make_op(name, 4, 2)).values()) <= {"bp"}


def _bn(z):
    """BatchNorm without affine in training mode, by hand (biased variance, eps 1e-5)."""
    m = z.mean(dim=(0, 2, 3), keepdim=True)
    v = z.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    return (z - m) / torch.sqrt(v + 1e-5)


def _dil(x, block, stride, padding, dilation):
    """ReLU -> dilated depthwise -> pointwise -> BN, from the block's weights."""
    dw, pw = block.op[1].weight, block.op[2].weight
    z = F.conv2d(F.relu(x), dw, None, stride, padding, dilation, groups=x.shape[1])
    return _bn(F.conv2d(z, pw))


def _by_hand(name, op, x, stride):
    """Candidate `name` recomputed from the functional definitions and op's weights."""
    kind = ops.parse_candidate(name)[0]
    if kind == "none":
        return torch.zeros_like(x[:, :, ::stride, ::stride])
    if kind == "max_pool_3x3":
        return _bn(F.max_pool2d(x, 3, stride, 1))
    if kind == "avg_pool_3x3":
        return _bn(F.avg_pool2d(x, 3, stride, 1, count_include_pad=False))
    if kind == "skip_connect":
        if stride == 1:
            return x
        r = F.relu(x)
        return _bn(torch.cat([F.conv2d(r, op.conv_1.weight, stride=2),
                              F.conv2d(r[:, :, 1:, 1:], op.conv_2.weight, stride=2)], 1))
    if kind.startswith("sep_conv"):
        p = 1 if kind.endswith("3x3") else 2
        return _dil(_dil(x, op.op[0], stride, p, 1), op.op[1], 1, p, 1)
    p = 2 if kind.endswith("3x3") else 4                        # dil_conv
    return _dil(x, op, stride, p, 2)


@pytest.mark.parametrize("stride", [1, 2])
def test_mixed_op_is_weighted_sum_eq7(stride):
    cands = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect_usf", "sep_conv_3x3_fa",
             "sep_conv_5x5_hebbian", "dil_conv_3x3_brsf", "dil_conv_5x5_frsf"]
    torch.manual_seed(0)
    mixed = ops.MixedOp(4, stride, cands).double()
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    w = F.softmax(torch.randn(len(cands), dtype=torch.float64), 0)
    expected = sum(w[i] * _by_hand(n, mixed.ops[i][0] if "pool" in n else mixed.ops[i], x, stride)
                   for i, n in enumerate(cands))
    torch.testing.assert_close(mixed(x, w), expected, rtol=1e-9, atol=1e-9)
    one_hot = torch.zeros(len(cands), dtype=torch.float64)
    one_hot[4] = 1.0                                               # picks sep_conv_3x3_fa alone
    torch.testing.assert_close(mixed(x, one_hot), _by_hand(cands[4], mixed.ops[4], x, stride))


# ----------------------------------------------------------------------------- Network

def test_network_alpha_parameters_and_partition():
    torch.manual_seed(0)
    cands = ops.search_space()
    net = darts.Network(4, 10, 5, cands, in_channels=1)
    assert net.alphas_normal.shape == (14, 22) and net.alphas_reduce.shape == (14, 22)
    a = torch.cat([net.alphas_normal.flatten(), net.alphas_reduce.flatten()]).detach()
    assert 0.85e-3 < a.std().item() < 1.15e-3 and abs(a.mean().item()) < 2e-4   # 1e-3 N(0,1)
    ids_arch = {id(p) for p in net.arch_parameters()}
    ids_w = {id(p) for p in net.weights()}
    assert ids_arch == {id(net.alphas_normal), id(net.alphas_reduce)}
    assert not ids_arch & ids_w
    assert ids_arch | ids_w == {id(p) for p in net.parameters()}
    assert len(net.weights()) == len(list(net.parameters())) - 2
    assert [c.reduction for c in net.cells] == [False, True, False, True, False]  # 1/3, 2/3
    for i, cell in enumerate(net.cells):                   # each candidate keeps its rule
        assert len(cell.edges) == 14
        for e, edge in enumerate(cell.edges):
            for k, name in enumerate(cands):
                stride = 2 if cell.reduction and e in (0, 1, 2, 3, 5, 6, 9, 10) else 1  # from s0, s1
                found = rules.layer_rules(edge.ops[k])
                assert len(found) == _expected_rule_convs(name, stride), (i, e, name)
                assert set(found.values()) <= {_rule_of(name)}


def test_network_forward_with_external_weights():
    torch.manual_seed(0)
    cands = ops.search_space(rules=("bp",), skip_rules=("bp",))
    net = darts.Network(4, 10, 3, cands, steps=2, multiplier=2, in_channels=1).double().eval()
    with torch.no_grad():
        net.alphas_normal.normal_()
        net.alphas_reduce.normal_()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    logits = net(x)
    assert logits.shape == (2, 10)
    wn = F.softmax(net.alphas_normal.detach().clone(), -1)     # Eq. 7 by hand
    wr = F.softmax(net.alphas_reduce.detach().clone(), -1)
    torch.testing.assert_close(net(x, wn, wr), logits, rtol=1e-12, atol=1e-12)
    one_hot = torch.zeros_like(wn)
    one_hot[:, cands.index("sep_conv_3x3")] = 1.0
    assert (net(x, one_hot, wr) - logits).abs().max() > 1e-6
    assert (net(x, wn, one_hot) - logits).abs().max() > 1e-6


# ----------------------------------------------------------------------------- genotypes

# rows of a 14-edge cell: node 2 <- rows 0-1, node 3 <- rows 2-4, node 4 <- 5-8, node 5 <- 9-13
NORMAL_SPEC = {0: {"none": 0.9, "sep_conv_3x3_usf": 0.3},
               1: {"skip_connect_frsf": 0.5},
               2: {"dil_conv_5x5_brsf": 0.2},
               3: {"max_pool_3x3": 0.25},
               4: {"none": 0.95, "avg_pool_3x3": 0.05},
               5: {"sep_conv_5x5_fa": 0.1},
               6: {"dil_conv_3x3_frsf": 0.4},
               7: {"sep_conv_3x3_brsf": 0.6},
               8: {"avg_pool_3x3": 0.15},
               9: {"skip_connect_usf": 0.3},
               10: {"sep_conv_3x3_fa": 0.05},
               11: {"max_pool_3x3": 0.2},
               12: {"sep_conv_5x5_frsf": 0.7},
               13: {"none": 0.99, "dil_conv_3x3_fa": 0.35}}
NORMAL_GENE = [("skip_connect_frsf", 1), ("sep_conv_3x3_usf", 0),
               ("max_pool_3x3", 1), ("dil_conv_5x5_brsf", 0),
               ("sep_conv_3x3_brsf", 2), ("dil_conv_3x3_frsf", 1),
               ("sep_conv_5x5_frsf", 3), ("dil_conv_3x3_fa", 4)]
REDUCE_SPEC = {0: {"max_pool_3x3": 0.8}, 1: {"none": 1.0, "skip_connect_brsf": 0.3},
               2: {"none": 0.9}, 3: {"dil_conv_3x3_usf": 0.45}, 4: {"avg_pool_3x3": 0.5},
               5: {"sep_conv_3x3_frsf": 0.2}, 6: {"none": 0.8}, 7: {"max_pool_3x3": 0.1},
               8: {"dil_conv_5x5_fa": 0.3},
               9: {"sep_conv_5x5_usf": 0.65}, 10: {"skip_connect_frsf": 0.6},
               11: {"none": 0.9}, 12: {"avg_pool_3x3": 0.1}, 13: {"max_pool_3x3": 0.2}}
REDUCE_GENE = [("max_pool_3x3", 0), ("skip_connect_brsf", 1),
               ("avg_pool_3x3", 2), ("dil_conv_3x3_usf", 1),
               ("dil_conv_5x5_fa", 3), ("sep_conv_3x3_frsf", 0),
               ("sep_conv_5x5_usf", 0), ("skip_connect_frsf", 1)]


def _weights(spec, cands, seed):
    g = torch.Generator().manual_seed(seed)
    W = 0.01 * torch.rand(14, len(cands), generator=g)          # background below every pick
    for row, entries in spec.items():
        for name, value in entries.items():
            if name in cands:
                W[row, cands.index(name)] = value
    return W


def test_derive_genotype_hand_made_alpha():
    cands = ops.search_space()
    g = darts.derive_genotype(_weights(NORMAL_SPEC, cands, 0), _weights(REDUCE_SPEC, cands, 1),
                              cands)
    assert g == Genotype(NORMAL_GENE, [2, 3, 4, 5], REDUCE_GENE, [2, 3, 4, 5])
    # row 2 of REDUCE_SPEC had only `none` large: its best real op is background (< 0.01), so
    # node 3 must take rows 3 and 4 (0.45, 0.5), never `none`
    assert all(name != "none" for name, _ in g.normal + g.reduce)


def test_derive_genotype_without_none_and_from_network_alpha():
    cands = ops.search_space(zero=False)                  # BioNAS-EG space: no `none` at all
    g = darts.derive_genotype(_weights(NORMAL_SPEC, cands, 0), _weights(REDUCE_SPEC, cands, 1),
                              cands)
    assert g.normal == NORMAL_GENE and g.reduce == REDUCE_GENE   # none entries were not present
    torch.manual_seed(0)
    net = darts.Network(4, 10, 3, ops.search_space())
    with torch.no_grad():
        net.alphas_normal.normal_()
        net.alphas_reduce.normal_()
    e_n, e_r = net.alphas_normal.detach().exp(), net.alphas_reduce.detach().exp()
    expected = darts.derive_genotype(e_n / e_n.sum(1, keepdim=True),   # softmax by hand
                                     e_r / e_r.sum(1, keepdim=True), net.candidates)
    assert net.genotype() == expected


def test_genotype_json_round_trip(tmp_path):
    g = Genotype(NORMAL_GENE, [2, 3, 4, 5], REDUCE_GENE, [2, 3, 4, 5])
    path = tmp_path / "genotype.json"
    darts.save_genotype(g, path)
    data = json.loads(path.read_text())
    assert data["normal"][0] == ["skip_connect_frsf", 1]       # op names keep their rule
    assert darts.load_genotype(path) == g
    darts_v2 = {"normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1], ["sep_conv_3x3", 0],
                           ["sep_conv_3x3", 1], ["sep_conv_3x3", 1], ["skip_connect", 0],
                           ["skip_connect", 0], ["dil_conv_3x3", 2]],
                "normal_concat": [2, 3, 4, 5],
                "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1], ["skip_connect", 2],
                           ["max_pool_3x3", 1], ["max_pool_3x3", 0], ["skip_connect", 2],
                           ["skip_connect", 2], ["max_pool_3x3", 1]],
                "reduce_concat": [2, 3, 4, 5]}               # DARTS_V2 from DARTS genotypes.py
    path.write_text(json.dumps(darts_v2))
    loaded = darts.load_genotype(path)
    assert loaded.normal[7] == ("dil_conv_3x3", 2) and loaded.reduce[2] == ("skip_connect", 2)


def _good():
    return {"normal": [list(e) for e in NORMAL_GENE], "normal_concat": [2, 3, 4, 5],
            "reduce": [list(e) for e in REDUCE_GENE], "reduce_concat": [2, 3, 4, 5]}


def _write(tmp_path, data):
    path = tmp_path / "bad.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_load_genotype_malformed(tmp_path):
    with pytest.raises(ValueError, match="not valid JSON"):
        darts.load_genotype(_write(tmp_path, '{"normal": [["sep_conv_3x3", 0]'))
    d = _good()
    del d["reduce_concat"]
    with pytest.raises(ValueError, match="reduce_concat"):
        darts.load_genotype(_write(tmp_path, d))
    d = _good()
    d["reduce"][3] = ["sep_conv_9x9_fa", 1]
    with pytest.raises(ValueError, match="sep_conv_9x9_fa"):
        darts.load_genotype(_write(tmp_path, d))
    d = _good()
    d["normal"][0] = ["sep_conv_3x3_usf", 2]                  # node 2 reading itself
    with pytest.raises(ValueError, match="node 2"):
        darts.load_genotype(_write(tmp_path, d))
    d = _good()
    d["normal"][7] = ["dil_conv_3x3_fa", 6]                   # node 5 reading node 6
    with pytest.raises(ValueError, match="node 6"):
        darts.load_genotype(_write(tmp_path, d))
    d = _good()
    d["normal_concat"] = [2, 3, 4, 9]
    with pytest.raises(ValueError, match="normal_concat"):
        darts.load_genotype(_write(tmp_path, d))
    with pytest.raises(ValueError, match="normal"):
        darts.load_genotype(_write(tmp_path, [1, 2, 3]))      # valid JSON, not an object


def test_load_genotype_non_string_op_name(tmp_path):
    d = _good()
    d["normal"][0] = [3, 0]
    with pytest.raises(ValueError, match="normal edge 0"):
        darts.load_genotype(_write(tmp_path, d))


# ----------------------------------------------------------------------------- Architect

def _tiny(cands, seed=0, smooth=False, dtype=torch.float64, layers=3):
    torch.manual_seed(seed)
    net = darts.Network(4, 10, layers, cands, steps=2, multiplier=2).to(dtype)
    if smooth:
        _smooth(net)
    g = torch.Generator().manual_seed(seed + 1)
    data = [torch.rand(4, 3, 8, 8, generator=g, dtype=dtype),
            torch.randint(0, 10, (4,), generator=g),
            torch.rand(4, 3, 8, 8, generator=g, dtype=dtype),
            torch.randint(0, 10, (4,), generator=g)]
    return net, data


def _snapshot(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@pytest.mark.slow
def test_architect_first_and_second_order_steps_on_bionas_space():
    net, (xt, yt, xv, yv) = _tiny(ops.search_space(), dtype=torch.float32)
    opt = torch.optim.SGD(net.weights(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    for unrolled in (False, True):
        arch = darts.Architect(net, unrolled=unrolled)
        a0 = [a.detach().clone() for a in net.arch_parameters()]
        w0 = [w.detach().clone() for w in net.weights()]
        arch.step(xt, yt, xv, yv, eta=0.1, network_optimizer=opt)
        for a, b in zip(net.arch_parameters(), a0):
            assert torch.isfinite(a).all() and torch.isfinite(a.grad).all()
            assert (a - b).abs().max() > 1e-5                  # Adam moves each entry ~3e-4
        for w, b in zip(net.weights(), w0):                    # alpha step leaves w alone
            torch.testing.assert_close(w.detach(), b, rtol=1e-5, atol=1e-6)
        opt.zero_grad()                                        # then the weight step
        net.loss(xt, yt).backward()
        nn.utils.clip_grad_norm_(net.weights(), 5.0)
        opt.step()
        assert all(torch.isfinite(v).all() for v in net.state_dict().values()
                   if v.is_floating_point())


def test_architect_first_order_gradient_and_adam():
    net, (xt, yt, xv, yv) = _tiny(ops.search_space(rules=("bp",), skip_rules=("bp",)))
    arch = darts.Architect(net)
    alphas = net.arch_parameters()
    moments = [None, None]
    for step in range(2):                     # two steps: Adam's betas matter in the second
        a_old = [a.detach().clone() for a in alphas]
        wn, wr = (F.softmax(a, -1) for a in alphas)
        loss = F.nll_loss(F.log_softmax(net(xv, wn, wr), -1), yv)
        g = torch.autograd.grad(loss, alphas)
        arch.step(xt, yt, xv, yv)
        for i, (a, ao, gi) in enumerate(zip(alphas, a_old, g)):
            torch.testing.assert_close(a.grad, gi, rtol=1e-9, atol=1e-12)
            gd = gi + 1e-3 * ao                                # Adam's L2 weight decay 1e-3
            m0, v0 = moments[i] if step else (0.0, 0.0)
            m, v = 0.5 * m0 + 0.5 * gd, 0.999 * v0 + 0.001 * gd * gd     # betas (0.5, 0.999)
            t = step + 1
            expected = ao - 3e-4 * (m / (1 - 0.5 ** t)) / ((v / (1 - 0.999 ** t)).sqrt() + 1e-8)
            torch.testing.assert_close(a.detach(), expected, rtol=1e-7, atol=1e-12)
            moments[i] = (m, v)


@pytest.mark.parametrize("unrolled", [False, True])
def test_architect_with_only_reduction_cells(unrolled):
    net, (xt, yt, xv, yv) = _tiny(["none", "max_pool_3x3", "skip_connect"], layers=2)
    assert [c.reduction for c in net.cells] == [True, True]      # layers // 3 = 0, 2 * 2 // 3 = 1
    a_n, a_r = (a.detach().clone() for a in net.arch_parameters())
    darts.Architect(net, unrolled=unrolled).step(xt, yt, xv, yv, eta=0.1)
    assert torch.equal(net.alphas_normal.grad, torch.zeros_like(a_n))   # unused: zero gradient
    assert (net.alphas_reduce - a_r).abs().max() > 1e-5


def _exact_hvp(net, vector, x, y):
    """grad_alpha <grad_w L_train(w, alpha), v> by double backward (no finite differences)."""
    gw = torch.autograd.grad(net.loss(x, y), net.weights(), create_graph=True)
    return torch.autograd.grad(sum((g * v).sum() for g, v in zip(gw, vector)),
                               net.arch_parameters())


def test_hessian_vector_product_matches_double_backward():
    cands = ["none", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"]
    # smooth supernet: DARTS's default r = 0.01 is accurate to O(eps^2)
    net, (xt, yt, _, _) = _tiny(cands, smooth=True)
    arch = darts.Architect(net, unrolled=True)
    v = [torch.randn_like(w) for w in net.weights()]
    w0 = [w.detach().clone() for w in net.weights()]
    exact = _cat(_exact_hvp(net, v, xt, yt))
    fd = _cat(arch._hessian_vector_product(v, xt, yt))
    torch.testing.assert_close(fd, exact, rtol=1e-3, atol=1e-3 * exact.abs().max().item())
    for w, b in zip(net.weights(), w0):                        # weights restored
        torch.testing.assert_close(w.detach(), b, rtol=0, atol=1e-14)
    # the real (ReLU, max-pool) supernet: piecewise smooth, so a small r must match
    net, (xt, yt, _, _) = _tiny(cands + ["max_pool_3x3"])
    arch = darts.Architect(net, unrolled=True)
    v = [torch.randn_like(w) for w in net.weights()]
    exact = _cat(_exact_hvp(net, v, xt, yt))
    fd = _cat(arch._hessian_vector_product(v, xt, yt, r=1e-6))
    torch.testing.assert_close(fd, exact, rtol=1e-4, atol=1e-4 * exact.abs().max().item())


def test_second_order_gradient_is_the_exact_unrolled_derivative():
    """DARTS Eq. 7: alpha.grad ~ d/d alpha L_val(w - eta (m buf + grad_w L_train + wd w), alpha),
    computed here exactly with functional_call and create_graph."""
    cands = ["none", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"]
    net, (xt, yt, xv, yv) = _tiny(cands, smooth=True)
    eta, wd, mom = 0.05, 3e-4, 0.9
    opt = torch.optim.SGD(net.weights(), lr=eta, momentum=mom, weight_decay=wd)
    net.loss(xt, yt).backward()                                # create momentum buffers
    opt.step()
    opt.zero_grad(set_to_none=True)
    names = [n for n, _ in net.named_parameters() if not n.startswith("alphas_")]
    weights = net.weights()
    g = torch.autograd.grad(net.loss(xt, yt), weights, create_graph=True)
    unrolled = {n: w - eta * (mom * opt.state[w]["momentum_buffer"] + gi + wd * w)
                for n, w, gi in zip(names, weights, g)}
    unrolled.update(alphas_normal=net.alphas_normal, alphas_reduce=net.alphas_reduce)
    loss_val = F.cross_entropy(torch.func.functional_call(net, unrolled, (xv,)), yv)
    exact = _cat(torch.autograd.grad(loss_val, net.arch_parameters()))
    arch = darts.Architect(net, momentum=mom, weight_decay=wd, unrolled=True)
    arch.step(xt, yt, xv, yv, eta=eta, network_optimizer=opt)
    got = _cat([a.grad for a in net.arch_parameters()])
    torch.testing.assert_close(got, exact, rtol=1e-3, atol=1e-3 * exact.abs().max().item())


def test_hessian_vector_product_brsf_uses_one_feedback_draw():
    cands = ["none", "avg_pool_3x3", "skip_connect_brsf", "sep_conv_3x3_brsf"]
    net, (xt, yt, _, _) = _tiny(cands, smooth=True)
    arch = darts.Architect(net, unrolled=True)
    v = [torch.randn_like(w) for w in net.weights()]
    hvp = {}
    for r in (1e-3, 1e-5):       # central differences of one smooth map agree as r shrinks
        torch.manual_seed(5)     # same draws of brsf's R in both calls
        hvp[r] = _cat(arch._hessian_vector_product(v, xt, yt, r=r))
    torch.testing.assert_close(hvp[1e-3], hvp[1e-5], rtol=1e-3,
                               atol=1e-3 * hvp[1e-5].abs().max().item())


# ----------------------------------------------------------------------------- NetworkEval

GENOTYPE = Genotype(
    normal=[("sep_conv_3x3_usf", 0), ("skip_connect_frsf", 1), ("dil_conv_3x3_fa", 0),
            ("max_pool_3x3", 2), ("sep_conv_5x5_hebbian", 1), ("skip_connect", 3),
            ("avg_pool_3x3", 0), ("dil_conv_5x5_brsf", 4)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("skip_connect_brsf", 0), ("sep_conv_3x3_frsf", 1), ("max_pool_3x3", 0),
            ("dil_conv_5x5_usf", 2), ("skip_connect_usf", 1), ("sep_conv_5x5", 3),
            ("dil_conv_3x3_hebbian", 2), ("avg_pool_3x3", 4)],
    reduce_concat=[2, 3, 4, 5])


def test_network_eval_rules_shapes_and_auxiliary():
    torch.manual_seed(0)
    net = darts.NetworkEval(4, 10, 4, GENOTYPE, auxiliary=True, in_channels=1)
    found = rules.layer_rules(net)
    assert [c.reduction for c in net.cells] == [False, True, True, False]
    for i, cell in enumerate(net.cells):
        edges = GENOTYPE.reduce if cell.reduction else GENOTYPE.normal
        for k, (name, j) in enumerate(edges):
            stride = 2 if cell.reduction and j < 2 else 1
            mine = {n: r for n, r in found.items() if n.startswith(f"cells.{i}.ops.{k}.")}
            assert len(mine) == _expected_rule_convs(name, stride), (i, k, name)
            assert set(mine.values()) <= {_rule_of(name)}, (i, k, name, mine)
    # the reduction cell's skip_connect_brsf on input 0 is a FactorizedReduce with rule brsf
    assert found["cells.1.ops.0.conv_1"] == found["cells.1.ops.0.conv_2"] == "brsf"
    rest = {n: r for n, r in found.items() if ".ops." not in n}  # stem, preprocessing, heads
    assert rest and set(rest.values()) == {"bp"}
    x = torch.rand(3, 1, 16, 16)
    net.train()
    logits = net(x)
    assert logits.shape == (3, 10) and net.logits_aux.shape == (3, 10)
    net.eval()
    assert net(x).shape == (3, 10) and net.logits_aux is None
    noaux = darts.NetworkEval(4, 10, 4, GENOTYPE, auxiliary=False, in_channels=1).train()
    noaux(x)
    assert noaux.logits_aux is None


def test_drop_path_expectation():
    torch.manual_seed(0)
    n, p = 40000, 0.3
    x = torch.ones(n, 2, 3, 3)
    y = darts.drop_path(x, p)
    flat = y.reshape(n, -1)
    zero = (flat == 0).all(1)
    kept = (flat - 1 / (1 - p)).abs().max(1).values < 1e-6
    assert bool((zero | kept).all())                           # whole samples, rescaled
    sd = math.sqrt(p * (1 - p) / n)
    assert abs(zero.float().mean().item() - p) < 5 * sd
    assert abs(y.mean().item() - 1.0) < 5 * sd / (1 - p)        # E[drop_path(x)] = x
    assert darts.drop_path(x, 0.0) is x


def test_drop_path_only_on_non_identity_edges_in_training():
    skip_only = Genotype([("skip_connect", 0), ("skip_connect", 1)] * 4, [2, 3, 4, 5],
                         [("max_pool_3x3", 0), ("max_pool_3x3", 1)] * 4, [2, 3, 4, 5])
    torch.manual_seed(0)
    net = darts.NetworkEval(4, 10, 3, skip_only, auxiliary=False, in_channels=1)
    net.drop_path_prob = 0.5
    cell = net.cells[0]                                        # a normal cell of identities
    assert not cell.reduction
    s = torch.randn(8, 12, 8, 8)                             # the stem's 3 * C channels
    cell.train()
    torch.testing.assert_close(cell(s, s, 0.5), cell(s, s, 0.0))   # Identity is never dropped
    conv = darts.NetworkEval(4, 10, 3, GENOTYPE, auxiliary=False, in_channels=1).cells[0]
    conv.train()
    torch.manual_seed(1)
    a = conv(s, s, 0.5)
    torch.manual_seed(2)
    b = conv(s, s, 0.5)
    assert (a - b).abs().max() > 1e-3                          # other edges are dropped at random
    conv.eval()
    torch.testing.assert_close(conv(s, s, 0.5), conv(s, s, 0.0))   # never in eval mode


def _darts_aux_head(head, x):
    """DARTS AuxiliaryHeadCIFAR: ReLU -> AvgPool(5, 3) -> 1x1 conv -> BN -> ReLU -> 2x2 conv
    -> BN -> ReLU -> linear, with head's weights (eval-mode BN)."""
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in head.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [c.weight.shape[1:] for c in convs] == [(x.shape[1], 1, 1), (128, 2, 2)]

    def bn(z, m):
        return F.batch_norm(z, m.running_mean, m.running_var, m.weight, m.bias, False, 0., m.eps)
    z = F.avg_pool2d(F.relu(x), 5, 3, count_include_pad=False)
    z = F.relu(bn(F.conv2d(z, convs[0].weight), bns[0]))
    z = F.relu(bn(F.conv2d(z, convs[1].weight), bns[1]))
    return F.linear(z.flatten(1), head.classifier.weight, head.classifier.bias)


def test_auxiliary_head_is_darts_head():
    torch.manual_seed(0)
    head = darts.AuxiliaryHead(4, 10).eval()
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(head(x), _darts_aux_head(head, x))


def test_auxiliary_head_any_input_size():
    head = darts.AuxiliaryHead(4, 10).eval()
    for size in (4, 7, 8, 12, 16):
        assert head(torch.randn(2, 4, size, size)).shape == (2, 10)
