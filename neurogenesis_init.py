"""How to add neurons (Maile's thesis, Sec. 6.2.2): the initializations of new neurons.

Source: K. Maile, "Dynamic Architectural Optimization of Artificial Neural Networks", Sec. 6.2.2
(Eqs. 33-34), Sec. 6.3.1, Table 7; GradMax (Evci et al. 2022, the thesis's [142]), Firefly
(Wu et al. 2020, [110]), NeST (Dai et al. 2019, [68]). neurogenesis.py decides when and where
(metrics, triggers, buffer, growable networks, Algorithm 4) and asks new_neurons() how: k new
neurons for hidden layer l as (fan_in (k, *weight.shape[1:]), fan_out (next.out, k, ...) or
None = zeros, bias (k) or None = zeros), chosen from c candidates with the generator g.

  NORTH-Random  Xavier-uniform fan-ins
  NORTH-Select  the k of c random fan-ins whose activations add the most to the layer's effective
                dimension (select_scores: count of sigma > eps, then sum(sigma) as tie-breaker)
  NORTH-Pre     NORTH-Select over Eq. 33's candidates, whose pre-activations on the buffer are
                orthogonal to the layer's
  NORTH-Weight  Eq. 34: fan-ins in the kernel of W_l
  GradMax       zero fan-in, fan-outs from the auxiliary gradient's top singular vectors
  Firefly       split existing neurons or add near-silent new ones; keep the steepest
  NeST          fan-in and fan-out from the large entries of the auxiliary gradient

NORTH* zero the fan-out, so the outputs stay exactly as they were, and rescale fan-ins to the
mean existing fan-in norm (Sec. 6.3.1). GradMax keeps the outputs too by a zero fan-in and bias
(relu0's sigma'(0) = 1 lets such a neuron learn); Firefly moves them by O(eps), NeST on purpose.
Read as meant (the authors' code agrees): Eq. 33 in augmented notation, so a NORTH-Pre neuron
gets the solved bias; other new neurons get bias 0 and Firefly's splits keep theirs.

The network is read through its interface only (model.layers, .kinds, .norms, .next_of(l),
.mean_norms(l), and torch.func.functional_call for Firefly), and activations come as arguments
(acts: a forward_all on the buffer; aux: the auxiliary gradient), so only torch is imported:
neurogenesis.py imports this file, never the reverse. relu0 and as_samples live here because a
candidate's activations must be computed exactly as the network computes its own.
"""
import math

import torch
import torch.nn.functional as F


def relu0(z):
    """ReLU with sigma'(0) = 1 (Sec. 6.3.1): z * 1[z >= 0]. A neuron with zero fan-in still learns."""
    return z * (z >= 0).to(z.dtype)


def as_samples(h):
    """(n, M) or (n, M, H, W) -> (samples, M): a channel's map gives H*W samples (Sec. 6.2.3)."""
    return h.movedim(1, -1).reshape(-1, h.shape[1]) if h.dim() > 2 else h


# ----------------------------------------------------------------------------------------
# NORTH-Select's score
# ----------------------------------------------------------------------------------------

def select_scores(h, cand, eps=0.01):
    """NORTH-Select's score of each candidate column a of `cand` (N x C) beside activations h
    (N x M): |{sigma > eps}| + sum(sigma) of [h, a] / sqrt(N) (Sec. 6.2.2: the ED count, the sum
    of singular values as tie-breaker), without an SVD per candidate. With h/sqrt(N) = U S V^T
    and a/sqrt(N) = U c + r, the squared singular values are the eigenvalues of D + z z^T,
    D = diag(S^2, 0), z = (c, |r|). Count: one more than |{s > eps}| iff 1 + sum z^2/(D - eps^2)
    < 0 (inertia). Sum: sum(s) + (2/pi) int_0^inf t^2 z^T (D+t^2)^-2 z / (1 + z^T (D+t^2)^-1 z)
    dt, trapezoidal in log t (error ~exp(-pi^2 / step))."""
    n, h = h.shape[0], h.detach()
    a = cand.detach().float() / math.sqrt(n)
    u, s, _ = torch.linalg.svd(h.float() / math.sqrt(n), full_matrices=False)
    c = u.t() @ a
    r2 = (a - u @ c).pow(2).sum(0).double()
    d = torch.cat([s.double() ** 2, s.new_zeros(1, dtype=torch.float64)])
    w = torch.cat([c.double() ** 2, r2[None]])                         # (M + 1) x C
    count = int((d > eps ** 2).sum()) + ((1 + (w / (d - eps ** 2)[:, None]).sum(0)) < 0).double()
    scale = max(float(d.max()), float(w.sum(0).max()), 1e-24) ** 0.5
    t = torch.exp(torch.arange(math.log(scale) - 18.5, math.log(scale) + 14, 0.25, dtype=torch.float64,
                               device=d.device))
    rinv = 1 / (d[:, None] + t[None] ** 2)                             # (M + 1) x Q
    gain = t ** 3 * (w.t() @ rinv ** 2) / (1 + w.t() @ rinv)           # C x Q
    return count + float(s.double().sum()) + 2 / math.pi * 0.25 * gain.sum(1)


# ----------------------------------------------------------------------------------------
# Initializations: each returns (fan_in, fan_out or None = 0, bias or None = 0)
# ----------------------------------------------------------------------------------------

def _xavier(model, l, k, g):
    w = model.layers[l].weight
    bound = math.sqrt(6.0 / (w[0].numel() + w.shape[0] * w[0, 0].numel()))
    return ((torch.rand(k, *w.shape[1:], generator=g, dtype=torch.float64) * 2 - 1) * bound).to(w)


def _scaled_in(model, l, fan_in, bias=None):
    """Fan-ins (and a solved bias with them) rescaled to the mean existing fan-in norm."""
    target, norms = model.mean_norms(l)[0], fan_in.flatten(1).norm(dim=1).clamp_min(1e-30)
    scale = (target / norms if target > 0 else torch.ones_like(norms)).reshape(-1, *[1] * (fan_in.dim() - 1))
    return fan_in * scale if bias is None else (fan_in * scale, bias * scale.flatten())


def _scaled_out(model, l, v):
    """Fan-out columns v (next.out x k) rescaled to the mean existing fan-out norm."""
    target = model.mean_norms(l)[1]
    return v * (target / v.norm(dim=0).clamp_min(1e-30)) if target > 0 else v


def _candidate_acts(model, l, fan_in, bias, ins):
    """Post-activations (samples x C) of candidate neurons on layer l's buffer inputs."""
    x = ins[l].float()
    if model.kinds[l] == "conv":
        z = F.conv2d(x, fan_in.float(), padding=1)
        return as_samples(relu0(F.batch_norm(z, None, None, None, None, True, 0.0, model.norms[l].eps)))
    z = x @ fan_in.float().t()
    return relu0(z if bias is None else z + bias.float())


def _select(model, l, k, fan_in, bias, acts, chunk=256):
    """The k candidates that each score highest with the layer's activations (select_scores);
    acts[3][l] needs more samples than neurons (GrowableNet.grow checks)."""
    h = as_samples(acts[3][l])
    scores = torch.cat([select_scores(h, _candidate_acts(model, l, fan_in[i:i + chunk],
                                                         None if bias is None else bias[i:i + chunk], acts[1]))
                        for i in range(0, len(fan_in), chunk)])
    top = scores.argsort(descending=True)[:k].to(fan_in.device)
    return fan_in[top], None, None if bias is None else bias[top]


def _pre_candidates(model, l, c, acts, g):
    """Eq. 33: w = (H_{l-1}^T)^+ V_Z a with the inputs augmented by ones. V_Z a, a random vector
    of the kernel of the pre-activations Z_l, is drawn as (I - Q Q^T) r (Q a basis of Z_l's
    columns, r ~ N(0, I): the same law)."""
    x, z = acts[1][l].double(), acts[2][l].double()
    x = torch.cat([x, x.new_ones(len(x), 1)], 1)
    q, _ = torch.linalg.qr(z)
    r = torch.randn(len(z), c, generator=g, dtype=torch.float64).to(z.device)
    wb = torch.linalg.pinv(x) @ (r - q @ (q.t() @ r))
    w = model.layers[l].weight
    return _scaled_in(model, l, wb[:-1].t().to(w), wb[-1].to(w))


def _weight_init(model, l, k, g):
    """Eq. 34: Xavier-uniform fan-ins projected onto ker W_l (bias 0, so orthogonal to [W_l | b]
    too); at most dim ker W_l of them: NORTH-Weight cannot pass the rank bound."""
    w = model.layers[l].weight.detach()
    flat = w.flatten(1).double()
    _, s, vh = torch.linalg.svd(flat, full_matrices=False)
    rank = int((s > s.max() * max(flat.shape) * torch.finfo(w.dtype).eps).sum())
    k = min(k, flat.shape[1] - rank)
    cand = _xavier(model, l, k, g).flatten(1).double()
    cand = cand - (cand @ vh[:rank].t()) @ vh[:rank]
    return _scaled_in(model, l, cand.reshape(k, *w.shape[1:]).to(w)) if k > 0 else w[:0]



def _gradmax(model, l, k, aux):
    """GradMax [142]: zero fan-in and bias, fan-outs the top-k left singular vectors of the
    auxiliary gradient (at most M_{l+1}), rescaled to the mean fan-out norm."""
    u, _, _ = torch.linalg.svd(aux.double(), full_matrices=False)
    w, k = model.layers[l].weight, min(k, u.shape[1])
    return w.new_zeros(k, *w.shape[1:]), _scaled_out(model, l, u[:, :k].to(w)), None


def _nest(model, l, k, aux, g, quantile=0.4):
    """NeST [68] for k neurons (thesis): each bridge entry with |G_oi| above the 0.4-quantile (the
    authors' code) adds sqrt|G_oi| times a random sign s to fan-in i and -s sign(G_oi) sqrt|G_oi|
    to fan-out o, so that the pair's product follows -G (NeST's descent; the code drops this
    sign); signs per neuron and pair, bias 0, both rescaled to the mean norms."""
    w, gm = model.layers[l].weight, aux[:, :-1].double()
    root = gm.abs().sqrt() * (gm.abs() > torch.quantile(gm.abs().flatten(), quantile))
    fan_in, fan_out = [], []
    for _ in range(k):
        sign = torch.randint(0, 2, gm.shape, generator=g).to(gm) * 2 - 1
        fan_in.append((sign * root).sum(0))
        fan_out.append(-(sign * gm.sign() * root).sum(1))
    return (_scaled_in(model, l, torch.stack(fan_in).to(w)),
            _scaled_out(model, l, torch.stack(fan_out, 1).to(w)), None)


def _firefly(model, l, k, x, y, loss_fn, c, g, eps_ff=1e-4):
    """Firefly [110] without its candidate training: half of c candidates split an existing neuron
    j (fan-ins w_j +- delta, |delta| = eps * mean norm; both keep b_j and get v_j / 2), the rest
    are new (random fan-in at the mean norm, bias 0, fan-out of norm eps * mean fan-out norm);
    all attached at once, the k with the largest fan-in gradient norm on (x, y) are kept."""
    layer, nxt = model.layers[l], model.next_of(l)
    w, b, v = layer.weight.detach().clone(), layer.bias.detach().clone(), nxt.weight.detach().clone()
    n_in, n_out = model.mean_norms(l)
    splits = torch.randperm(len(w), generator=g)[:min(c // 2, len(w))].to(w.device)
    delta = torch.rand(len(splits), w.shape[1], generator=g, dtype=torch.float64).to(w) * 2 - 1
    delta = delta * (eps_ff * n_in / delta.norm(dim=1, keepdim=True).clamp_min(1e-30))
    fresh = _scaled_in(model, l, _xavier(model, l, c - len(splits), g))
    out_new = torch.randn(len(v), c - len(splits), generator=g, dtype=torch.float64).to(v)
    out_new = torch.cat([v[:, splits] / 2, out_new * (eps_ff * n_out / out_new.norm(dim=0).clamp_min(1e-30))], 1)
    cand_in = torch.cat([w[splits] + delta, fresh]).requires_grad_(True)
    cand_b = torch.cat([b[splits], b.new_zeros(len(fresh))])
    w_all, v_all = w.clone(), v.clone()
    w_all[splits] -= delta
    v_all[:, splits] /= 2
    names = {f"layers.{l}.weight": torch.cat([w_all, cand_in]), f"layers.{l}.bias": torch.cat([b, cand_b]),
             ("head" if l + 1 == len(model.layers) else f"layers.{l + 1}") + ".weight": torch.cat([v_all, out_new], 1)}
    loss = loss_fn(torch.func.functional_call(model, names, (x,)), y)
    keep = torch.autograd.grad(loss, cand_in)[0].norm(dim=1).argsort(descending=True)[:k]
    with torch.no_grad():
        kept = keep[keep < len(splits)]
        layer.weight[splits[kept]] -= delta[kept]
        nxt.weight[:, splits[kept]] /= 2
    return cand_in.detach()[keep], out_new[:, keep], cand_b[keep]


INITS = {   # (model, layer, k, buffer activations, auxiliary gradient, candidates, generator); Firefly apart
    "NORTH-Random": lambda m, l, k, acts, aux, c, g: (_scaled_in(m, l, _xavier(m, l, k, g)), None, None),
    "NORTH-Select": lambda m, l, k, acts, aux, c, g: _select(m, l, k, _scaled_in(m, l, _xavier(m, l, c, g)), None,
                                                             acts),
    "NORTH-Pre": lambda m, l, k, acts, aux, c, g: _select(m, l, k, *_pre_candidates(m, l, c, acts, g), acts),
    "NORTH-Weight": lambda m, l, k, acts, aux, c, g: (_weight_init(m, l, k, g), None, None),
    "GradMax": lambda m, l, k, acts, aux, c, g: _gradmax(m, l, k, aux),
    "NeST": lambda m, l, k, acts, aux, c, g: _nest(m, l, k, aux, g)}


def new_neurons(model, l, k, strategy, acts=None, aux=None, c=None, g=None, x=None, y=None,
                loss_fn=F.cross_entropy):
    """(fan_in, fan_out or None, bias or None) of up to k new neurons for hidden layer l by
    `strategy` (Sec. 6.2.2), from c candidates drawn with generator g. acts: forward_all on the
    buffer (NORTH-Select, NORTH-Pre); aux: the auxiliary gradient (GradMax, NeST); x, y, loss_fn:
    a labelled batch (Firefly). NORTH-Weight and GradMax may return fewer (rank bounds)."""
    if strategy == "Firefly":
        return _firefly(model, l, k, x, y, loss_fn, c, g)
    with torch.no_grad():
        return INITS[strategy](model, l, k, acts, aux, c, g)


if __name__ == "__main__":
    # Demo: 3 new neurons for the hidden layer of a 10 -> 6 -> 3 MLP by each initialization: their
    # shapes, how much they change the outputs, the effective dimension of the 9 activations (Eq. 27),
    # the largest |cos| of a new pre-activation with the layer's (Eq. 33) and the largest |W w_new|
    # (Eq. 34). MLP has the interface new_neurons reads (neurogenesis.GrowableNet is the full one).
    import copy

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers, self.head = torch.nn.ModuleList([torch.nn.Linear(10, 6)]), torch.nn.Linear(6, 3)
            self.kinds, self.norms = ["dense"], None

        def next_of(self, l):
            return self.head

        def mean_norms(self, l):
            return (float(self.layers[0].weight.detach().norm(dim=1).mean()),
                    float(self.head.weight.detach().norm(dim=0).mean()))

        def forward(self, x):
            return self.head(relu0(self.layers[0](x)))

    torch.manual_seed(0)
    net, x, y = MLP(), torch.randn(64, 10), torch.randint(0, 3, (64,))
    with torch.no_grad():
        W, b, before = net.layers[0].weight.clone(), net.layers[0].bias.clone(), net(x)
        acts = (None, [x], [x @ W.t() + b], [relu0(x @ W.t() + b)])     # forward_all: (_, in, pre, post)
    logits = net(x)
    grad, = torch.autograd.grad(F.cross_entropy(logits, y), logits)
    aux = grad.t() @ torch.cat([x, x.new_ones(64, 1)], 1)               # the auxiliary gradient, 3 x 11
    shape = lambda t: "0" if t is None else "x".join(map(str, t.shape))   # noqa: E731
    print("strategy      fan-in fan-out bias  output change  ED    max |cos|  max |W w_new|")
    for strategy in ("NORTH-Random", "NORTH-Select", "NORTH-Pre", "NORTH-Weight", "GradMax", "Firefly", "NeST"):
        m = copy.deepcopy(net)                                          # Firefly's splits edit the layer
        w_in, w_out, bias = new_neurons(m, 0, 3, strategy, acts, aux, 100, torch.Generator().manual_seed(0), x, y)
        with torch.no_grad():
            z = x @ w_in.t() + (0 if bias is None else bias)            # the new pre-activations
            change = (m(x) + (0 if w_out is None else relu0(z) @ w_out.t()) - before).abs().max()
            ed = int((torch.linalg.svdvals(torch.cat([acts[3][0], relu0(z)], 1) / math.sqrt(64)) > 0.01).sum())
            cos = (F.normalize(z, dim=0).t() @ F.normalize(acts[2][0], dim=0)).abs().max()
        print(f"{strategy:13s} {shape(w_in):>6s} {shape(w_out):>7s} {shape(bias):>4s} {change:14.1e} {ed:3d}/9"
              f" {cos:10.1e} {(W @ w_in.t()).abs().max():14.1e}")
