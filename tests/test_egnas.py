"""Tests of the EG-NAS search part of egnas.py (the CMA-ES is tested in test_cmaes.py)."""
import torch
import torch.nn.functional as F

import darts
import egnas
import ops


def tiny_supernet(seed=0):
    torch.manual_seed(seed)
    cands = ops.search_space(zero=False)
    return darts.Network(2, 3, 3, cands, steps=2, multiplier=2, in_channels=1), cands


def test_compound_fitness_matches_paper_formula():
    model, cands = tiny_supernet()
    model.eval()
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 3, (6,))
    proj = [w.detach() for w in model.mixing_weights()]
    z = torch.randn(2 * 5 * len(cands))
    zz = z.reshape(2, 5, len(cands))
    zn = zz / zz.norm(dim=-1, keepdim=True)
    cos = [(F.cosine_similarity(p, q, dim=-1) + 1) / 2 for p, q in zip(proj, zn)]
    sim = (cos[0].mean() + cos[1].mean()).item() / 2
    with torch.no_grad():
        logits = model(x, F.softmax(zn[0], -1), F.softmax(zn[1], -1))
    ce = F.cross_entropy(logits, y).item()
    acc = 100.0 * (logits.argmax(1) == y).float().mean().item()
    with torch.no_grad():
        f_low, a, _ = egnas.compound_fitness(model, x, y, z.numpy(), proj, acc_alpha=acc + 1,
                                             zeta=2.0, eta=0.4)
        f_high, _, _ = egnas.compound_fitness(model, x, y, z.numpy(), proj, acc_alpha=acc - 1,
                                              zeta=2.0, eta=0.4)
    assert abs(a - acc) < 1e-9
    assert abs(f_low - (2 * ce - 0.4 * sim)) < 1e-5         # Acc(alpha) > Acc(z): minus
    assert abs(f_high - (2 * ce + 0.4 * sim)) < 1e-5        # else: plus (diversity rewarded)


def test_eg_step_moves_alpha_by_xi_times_best_weights():
    model, cands = tiny_supernet(1)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 3, (8,))
    before = [a.detach().clone() for a in model.arch_parameters()]
    s = egnas.EGNASSearcher(model, samples=2, population_size=6, xi=0.1, warm_start_epochs=1,
                            log=lambda m: None)
    s.step(x, y, x, y, 0.1, None, epoch=0)                  # warm start: alpha untouched
    assert all(torch.equal(a, b) for a, b in zip(model.arch_parameters(), before))
    s.step(x, y, x, y, 0.1, None, epoch=1)
    for a, b, w in zip(model.arch_parameters(), before, s.s):
        delta = a.detach() - b
        assert torch.allclose(delta, 0.1 * w, atol=1e-6)
        assert torch.allclose(w.sum(-1), torch.ones(w.shape[0]), atol=1e-5)  # softmax rows
        assert delta.abs().max() > 0
    after = [a.detach().clone() for a in model.arch_parameters()]
    s.step(x, y, x, y, 0.1, None, epoch=1)                  # once per epoch only
    assert all(torch.equal(a, b) for a, b in zip(model.arch_parameters(), after))
    g = model.genotype()
    assert "none" not in cands and all(op != "none" for op, _ in g.normal + g.reduce)
