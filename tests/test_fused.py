"""Fused supernet: fused.FusedNetwork computes the rule variants of one
operation as one convolution with concatenated weights and feedback. It must be the same
mathematics as the plain supernet: same logits, weight gradients, alpha gradients and genotype,
with the random draws of brsf included (both nets see the same generator state)."""
import pytest
import torch
import torch.nn.functional as F

import fused
import ops
from harness.search import make_supernet


def _pair(partial, supernet, C):
    cands = ops.search_space()
    kw = dict(steps=2, multiplier=2, in_channels=1, partial_channels=partial, supernet=supernet)
    torch.manual_seed(0)
    plain = make_supernet(C, 10, 3, cands, **kw)
    fused_net = make_supernet(C, 10, 3, cands, fused=True, **kw)
    fused_net.load_state_dict({k: v for k, v in plain.state_dict().items() if ".edges." not in k},
                              strict=False)
    for cp, cf in zip(plain.cells, fused_net.cells):
        for ep, ef in zip(cp.edges, cf.edges):
            fused.copy_unfused(ef, ep)
    with torch.no_grad():
        for a, b in zip(plain.arch_parameters(), fused_net.arch_parameters()):
            b.copy_(torch.randn_like(a))               # a non-uniform alpha: every weight matters
            a.copy_(b)
    return plain, fused_net


def _step(net, x, y):
    """Logits, alpha gradients, then one plain SGD step of the weights (lr 0.1)."""
    torch.manual_seed(5)                               # brsf's draws: same stream for both nets
    net.zero_grad()
    logits = net(x)
    F.cross_entropy(logits, y).backward()
    with torch.no_grad():
        for p in net.weights():
            if p.grad is not None:
                p -= 0.1 * p.grad
    return logits.detach(), [a.grad.clone() for a in net.arch_parameters()]


@pytest.mark.slow
@pytest.mark.parametrize("partial,supernet,C", [(1, "darts", 4), (4, "pc-darts", 8), (4, "eg-nas", 8)])
def test_fused_supernet_equals_the_plain_one(partial, supernet, C):
    """Logits and alpha gradients equal; after one SGD step, the plain net's stepped weights
    loaded into a fused net equal the fused net's stepped weights (so every weight gradient,
    block by block, is equal); same genotype. Catches a rule block computed with another block's
    feedback, a wrong concatenation order, a missing repeat of the input, a BN over the wrong
    channels, or a rule sum that drops a member."""
    plain, fused_net = _pair(partial, supernet, C)
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    lp, gp = _step(plain, x, y)
    lf, gf = _step(fused_net, x, y)
    assert torch.allclose(lp, lf, atol=1e-5, rtol=1e-4)
    for a, b in zip(gp, gf):
        assert a.abs().max() > 0 and torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    assert plain.genotype() == fused_net.genotype()
    check = make_supernet(C, 10, 3, ops.search_space(), steps=2, multiplier=2, in_channels=1,
                          partial_channels=partial, supernet=supernet, fused=True)
    for cp, cc in zip(plain.cells, check.cells):
        for ep, ec in zip(cp.edges, cc.edges):
            fused.copy_unfused(ec, ep)
    stepped = dict(fused_net.named_parameters())
    n = 0
    for name, p in check.named_parameters():
        if ".edges." in name:
            assert torch.allclose(p, stepped[name], atol=1e-6, rtol=1e-4), name
            n += 1
    assert n > 20


def test_fused_refuses_crb():
    with pytest.raises(ValueError, match="CRB"):
        make_supernet(4, 10, 3, ops.search_space(), steps=2, multiplier=2, in_channels=1,
                      activation="crb", fused=True)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_rule_sum_is_the_weighted_sum_of_blocks(fmt):
    """rule_sum(y, w) = sum_r w_r * block r of y, with its gradients for y and w, in both
    memory formats (channels_last by one matrix product with kron(w, I)); the output keeps y's
    format. Catches blocks taken interleaved instead of rule-major, or w applied per channel."""
    y = torch.randn(2, 12, 5, 3, dtype=torch.float64).contiguous(memory_format=fmt)
    w = torch.rand(3, dtype=torch.float64)
    g = torch.randn(2, 4, 5, 3, dtype=torch.float64)
    ys, ws = y.clone().requires_grad_(), w.clone().requires_grad_()
    out = fused.rule_sum(ys, ws)
    out.backward(g)
    ref = sum(w[r] * y[:, 4 * r:4 * r + 4] for r in range(3))
    assert torch.allclose(out, ref, atol=1e-12)
    assert out.is_contiguous(memory_format=fmt)
    gy = torch.cat([w[r] * g for r in range(3)], 1)
    gw = torch.stack([(g * y[:, 4 * r:4 * r + 4]).sum() for r in range(3)])
    assert torch.allclose(ys.grad, gy, atol=1e-12) and torch.allclose(ws.grad, gw, atol=1e-12)
