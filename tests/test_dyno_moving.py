"""The Ch. 7 movable-layer experiment's source: Net2Wider keeps the function and makes the layer
rank-deficient as stated, so DYNO's Eq. 38 can prune it from phi* = 1."""
import torch

import dyno as D
import neurogenesis as N
from experiments import thesis_dyno as TD


def test_widen_keeps_outputs_and_halves_phi_then_dyno_prunes_a_twin_of_each_pair():
    """Catches: copies whose fan-outs are not divided (outputs doubled), BatchNorm statistics
    not copied (train or eval outputs move), or a widened layer that is not rank-deficient; and
    a DYNO that cannot prune it from phi* = 1 (Eq. 38: floor(16 (0.97 - 0.5)) = 7), or that
    prunes an original and its copy instead of one of each pair (select_prune)."""
    torch.manual_seed(0)
    m = N.GrowableCNN((1, 8, 8), [4, 8], 3, dense_widths=[6]).double()
    x = torch.rand(40, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        for bn in m.norms:
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
    m.eval()
    before_eval = m(x)
    m.train()
    before_train = m.forward_all(x, batch_stats=True)[0]
    phi = TD.layer_phi(m, x)[1][0]
    TD.widen(m, 1, 2)
    assert m.widths == [4, 16, 6]
    m.eval()
    assert torch.allclose(m(x), before_eval, rtol=1e-12, atol=1e-12)
    m.train()
    assert torch.allclose(m.forward_all(x, batch_stats=True)[0], before_train, rtol=1e-12, atol=1e-12)
    h = m.forward_all(x, batch_stats=True)[3][1]
    assert TD.layer_phi(m, x)[1][0] == phi / 2 == N.effective_dimension(h)
    d = D.DYNO(m.float(), torch.optim.Adam(m.parameters(), 1e-3), min_buffer=40)
    d.start(x.float())
    d.grow_and_prune()
    assert d.history["evaluations"][0]["pruned"][1] == 7 and m.widths[1] == 9
    w = m.layers[1].weight.detach().flatten(1)
    assert torch.linalg.matrix_rank(w) == 8                       # one of each of 7 pairs gone, all 8 kept
