"""Neurogenesis: when and where to add neurons (Maile's thesis, Ch. 6: NORTH*).

Source: K. Maile, "Dynamic Architectural Optimization of Artificial Neural Networks", Sec. 6.1-6.3
(Algorithm 4, Eqs. 27-32, 35, Tables 7-8). A strategy is a TRIGGER (when, where, how many) and an
INITIALIZATION (how); after every gradient step each hidden layer l gets TRIGGER(f, l) new neurons.
This file holds the metrics, the triggers, the buffer, the growable networks and Algorithm 4's
controller; the initializations (Sec. 6.2.2) are neurogenesis_init.py, which GrowableNet.grow
calls (its relu0, as_samples, select_scores, INITS, new_neurons are importable from here too).

Activations h are (samples, neurons), the transpose of the thesis's H_l; convolution maps
(n, M, H, W) count as n*H*W samples of M channels (Sec. 6.2.3). Hidden layers count from 0.
Growing keeps the Parameter objects (their .data is replaced) so an optimizer keeps working; its
per-element state is cut or extended with zeros alongside. Grow and prune between steps, when no
autograd graph on the old parameters is alive (its gradient accumulators keep the old shapes).
Read as meant, not as printed (each at its function; the authors' code agrees): the positive
part of Eqs. 28, 31, 35 with the threshold floored first (trigger_count); Eq. 29 with its
identity; Eq. 30 divided by sqrt(columns); half of Eq. 32's sum (gradient_trigger); Eq. 35's
running maximum over earlier evaluations. Only torch and neurogenesis_init are imported.
"""
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from neurogenesis_init import INITS, as_samples, new_neurons, relu0, select_scores  # noqa: F401 (re-exported)

STRATEGIES = ("NORTH-Select", "NORTH-Pre", "NORTH-Random", "NORTH-Weight", "GradMax", "Firefly", "NeST")
TRIGGERS = {"NORTH-Select": "act", "NORTH-Pre": "act", "NORTH-Random": "act", "NORTH-Weight": "weight",
            "GradMax": "grad", "Firefly": "grad", "NeST": "grad"}                     # Table 7
SCHEDULES = ("Linear", "Batched")                                                     # Sec. 6.3.3 presets
DENSE_ONLY = ("NORTH-Pre", "GradMax", "Firefly", "NeST")                              # Sec. 6.2.3


def check_strategy(strategy):
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown neurogenesis strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")


# ----------------------------------------------------------------------------------------
# Orthogonality metrics (Eqs. 27, 29, 30)
# ----------------------------------------------------------------------------------------

def effective_dimension(h, eps=0.01):
    """Eq. 27: phi_ED = |{sigma in SVD(H / sqrt(n)) : sigma > eps}| / M for activations h (n, M);
    needs n > M."""
    h = as_samples(h)
    n, m = h.shape
    if n <= m:
        raise ValueError(f"effective dimension needs more samples than neurons (Eq. 27: n > M); got "
                         f"{n} samples for {m} neurons: use a buffer larger than the layer")
    return int((torch.linalg.svdvals(h.double() / math.sqrt(n)) > eps).sum()) / m


def orthogonality_gap(h):
    """Eq. 29 with its identity: 1 - ||H^T H / ||H||_F^2 - I_n / n||_F (H^T H is h h^T, n x n),
    computed from h^T h: ||A - I/n||^2 = ||h^T h||^2 / ||h||^4 - 1/n."""
    h = as_samples(h).double()
    gap2 = (h.t() @ h).pow(2).sum() / h.pow(2).sum() ** 2 - 1.0 / h.shape[0]
    return float(1 - gap2.clamp_min(0).sqrt())


def _positive_count(a):
    """Positive eigenvalues of a symmetric matrix, by Sylvester's inertia of its Bunch-Kaufman
    LDL^T (1x1 and 2x2 blocks): a fraction of eigvalsh's cost."""
    ld, piv, _ = torch.linalg.ldl_factor_ex(a)
    d, off, piv = ld.diagonal().tolist(), ld.diagonal(-1).tolist() + [0.0], piv.tolist()
    k = count = 0
    while k < len(piv):
        if piv[k] > 0:
            count, k = count + (d[k] > 0), k + 1
        else:                                                  # 2x2 block: det < 0 -> one of each sign
            det = d[k] * d[k + 1] - off[k] ** 2
            count, k = count + (1 if det < 0 else 2 * (d[k] + d[k + 1] > 0)), k + 2
    return count


def rank_count(mat, eps=0.01):
    """|{sigma(mat) > eps}| from the smaller Gram matrix: positive eigenvalues of G - eps^2 I."""
    mat = mat.float()
    g = (mat.t() @ mat if mat.shape[0] >= mat.shape[1] else mat @ mat.t()).double()
    return _positive_count(g - eps ** 2 * torch.eye(len(g), dtype=g.dtype, device=g.device))


def activation_metric(h, eps=0.01, metric="ED"):
    """phi_a of a layer's activations: Eq. 27 (ED, by rank_count) or Eq. 29 (OG)."""
    if metric == "OG":
        return orthogonality_gap(h)
    h = as_samples(h)
    if h.shape[0] <= h.shape[1]:
        effective_dimension(h, eps)                            # raises the one-line error
    return rank_count(h / math.sqrt(h.shape[0]), eps) / h.shape[1]


def weight_metric(layer, eps=0.01):
    """Eq. 30: phi_w = |{sigma(W / sqrt(cols)) > eps}| / M, W = [weights | bias] flattened to
    M x ((M_{l-1} + 1) k^2) (Sec. 6.2.3)."""
    w = layer.weight.detach().flatten(1)
    if layer.bias is not None:
        w = torch.cat([w, layer.bias.detach()[:, None]], 1)
    return rank_count(w / math.sqrt(w.shape[1]), eps) / w.shape[0]

# ----------------------------------------------------------------------------------------
# Growable networks (Sec. 6.1.1, 6.2.3)
# ----------------------------------------------------------------------------------------

def _edit(t, dim, keep=None, new=None, optimizer=None):
    """Keep the slices `keep` of tensor t along dim, append `new`; t's optimizer state of t's
    shape (Adam's exp_avg, exp_avg_sq, momentum) follows, with zeros for the new slices."""
    def cut(x, fill):
        x = x if keep is None else x.index_select(dim, keep)
        return x if fill is None else torch.cat([x, fill.to(x)], dim)
    state = optimizer.state.get(t, {}) if optimizer is not None else {}
    for key, v in state.items():
        if torch.is_tensor(v) and v.shape == t.shape:
            state[key] = cut(v, None if new is None else torch.zeros_like(new))
    t.data = cut(t.data, new)
    t.grad = None


class GrowableNet(nn.Module):
    """Hidden layers that grow and shrink: 3x3 convolutions (no bias) + BatchNorm + ReLU + 2x2
    max-pooling (channels are neurons, Sec. 6.2.3), global average pooling, dense layers; a dense
    head that never changes width. ReLU with sigma'(0) = 1, Xavier-uniform weights, zero biases
    (Table 8). in_shape: (features,) or (channels, height, width)."""

    def __init__(self, in_shape, conv_widths=(), dense_widths=(), out_features=10, max_widths=None):
        super().__init__()
        self.in_shape, self.kinds = tuple(in_shape), ["conv"] * len(conv_widths) + ["dense"] * len(dense_widths)
        if conv_widths and len(self.in_shape) != 3:
            raise ValueError(f"convolutions need in_shape (channels, height, width), got {in_shape}")
        self.layers, self.norms, self.sizes = nn.ModuleList(), nn.ModuleList(), []
        c, size = (self.in_shape[0] if conv_widths else math.prod(self.in_shape)), self.in_shape[-1]
        for w in conv_widths:
            self.layers.append(nn.Conv2d(c, w, 3, padding=1, bias=False))
            self.norms.append(nn.BatchNorm2d(w))
            self.sizes.append(size)
            c, size = w, size // 2 if size >= 2 else size
        for w in dense_widths:
            self.layers.append(nn.Linear(c, w))
            c = w
        self.head = nn.Linear(c, out_features)
        for m in [*self.layers, self.head]:
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        self.max_widths = None if max_widths is None else _per_layer(max_widths, len(self.layers))
        for l, (w, mx) in enumerate(zip(self.widths, self.max_widths or self.widths)):
            if not 1 <= w <= mx:
                raise ValueError(f"layer {l} starts with {w} neurons, outside 1..{mx} (its maximum); "
                                 f"raise max_widths or start narrower")

    @property
    def widths(self):
        return [m.weight.shape[0] for m in self.layers]

    def next_of(self, l):
        return self.layers[l + 1] if l + 1 < len(self.layers) else self.head

    def mean_norms(self, l):
        """(mean fan-in norm, mean fan-out norm) of layer l's neurons (Sec. 6.3.1 rescaling)."""
        w_in = self.layers[l].weight.detach().flatten(1).norm(dim=1)
        w_out = self.next_of(l).weight.detach().transpose(0, 1).flatten(1).norm(dim=1)
        return float(w_in.mean()), float(w_out.mean())

    def between(self, l, h):
        """What layer l + 1 receives from layer l's post-activation h (pooling, flattening)."""
        if self.kinds[l] == "conv":
            h = F.max_pool2d(h, 2) if self.sizes[l] >= 2 else h
            if l + 1 == len(self.layers) or self.kinds[l + 1] == "dense":
                h = h.mean((2, 3))
        return h

    def forward_all(self, x, batch_stats=False):
        """(logits, inputs, pre-activations, post-activations): inputs[l] enters layer l's weights,
        pre[l] is its (batch-normalized) pre-activation, post[l] = relu0(pre[l]); pre ends with the
        logits. batch_stats: BatchNorm with this data's statistics, running stats untouched."""
        x = x.reshape(len(x), *self.in_shape) if self.kinds and self.kinds[0] == "conv" else x.reshape(len(x), -1)
        ins, pres, posts = [], [], []
        for l, layer in enumerate(self.layers):
            ins.append(x)
            z = layer(x)
            if self.kinds[l] == "conv":
                bn = self.norms[l]
                z = F.batch_norm(z, None, None, bn.weight, bn.bias, True, 0.0, bn.eps) if batch_stats else bn(z)
            pres.append(z)
            posts.append(relu0(z))
            x = self.between(l, posts[-1])
        out = self.head(x)
        return out, ins, pres + [out], posts

    def forward(self, x):
        return self.forward_all(x)[0]

    def grow_neurons(self, l, fan_in, fan_out=None, bias=None, optimizer=None):
        """Append k neurons to layer l: fan_in (k, *weight.shape[1:]), fan_out (next.out, k, ...) and
        bias (k) default to 0; BatchNorm grows with weight 1, bias 0, running mean 0, var 1."""
        layer, nxt, k = self.layers[l], self.next_of(l), len(fan_in)
        if self.max_widths is not None and self.widths[l] + k > self.max_widths[l]:
            raise ValueError(f"layer {l} would have {self.widths[l] + k} neurons, above its maximum "
                             f"{self.max_widths[l]}; grow fewer or raise max_widths")
        zeros = layer.weight.new_zeros(k)
        _edit(layer.weight, 0, new=fan_in, optimizer=optimizer)
        if layer.bias is not None:
            _edit(layer.bias, 0, new=zeros if bias is None else bias, optimizer=optimizer)
        if self.kinds[l] == "conv":
            bn = self.norms[l]
            for t, v in ((bn.weight, 1.0), (bn.bias, 0.0), (bn.running_mean, 0.0), (bn.running_var, 1.0)):
                _edit(t, 0, new=zeros + v, optimizer=optimizer)
            bn.num_features += k
        shape = list(nxt.weight.shape)
        shape[1] = k
        _edit(nxt.weight, 1, new=nxt.weight.new_zeros(shape) if fan_out is None else fan_out, optimizer=optimizer)
        self._sync_shapes()

    def prune_neurons(self, l, idx, optimizer=None):
        """Remove layer l's neurons idx: fan-in rows, BatchNorm entries, fan-out columns, their state."""
        drop, m = set(int(i) for i in idx), self.widths[l]
        if len(drop) >= m:
            raise ValueError(f"cannot prune all {m} neurons of layer {l}; keep at least one")
        keep = torch.tensor([i for i in range(m) if i not in drop], device=self.layers[l].weight.device)
        layer = self.layers[l]
        tensors = [layer.weight] + ([layer.bias] if layer.bias is not None else [])
        if self.kinds[l] == "conv":
            bn = self.norms[l]
            tensors += [bn.weight, bn.bias, bn.running_mean, bn.running_var]
            bn.num_features = len(keep)
        for t in tensors:
            _edit(t, 0, keep=keep, optimizer=optimizer)
        _edit(self.next_of(l).weight, 1, keep=keep, optimizer=optimizer)
        self._sync_shapes()

    def set_widths(self, widths):
        """Reshape every hidden layer to `widths` (zeros, to be loaded next): for resume."""
        for l, w in enumerate(widths):
            m, weight = self.widths[l], self.layers[l].weight
            if w > m:
                self.grow_neurons(l, weight.new_zeros(w - m, *weight.shape[1:]))
            elif w < m:
                self.prune_neurons(l, range(w, m))

    def _sync_shapes(self):
        for m in [*self.layers, self.head]:
            out_, in_ = m.weight.shape[:2]
            if isinstance(m, nn.Linear):
                m.out_features, m.in_features = out_, in_
            else:
                m.out_channels, m.in_channels = out_, in_

    def grow(self, layer, k, strategy, optimizer=None, x=None, y=None, loss_fn=F.cross_entropy,
             candidates=None, generator=None, acts=None, aux=None):
        """Add up to k neurons to hidden layer `layer` by `strategy`'s initialization (Table 7,
        Sec. 6.2.2: neurogenesis_init.new_neurons), at most to max_widths. x: what the
        initialization looks at (the buffer for NORTH-Select/Pre; a labelled batch x, y for
        GradMax, NeST, Firefly), or acts / aux: the buffer's forward_all / the auxiliary gradient,
        precomputed. candidates: 1000 (dense) or
        100 (conv) + k. NORTH* and GradMax keep the outputs unchanged; Firefly moves them by
        O(eps), NeST on purpose. Returns the number added (NORTH-Weight, GradMax: rank bounds)."""
        check_strategy(strategy)
        if self.kinds[layer] == "conv" and strategy in DENSE_ONLY:
            raise ValueError(f"{strategy} is implemented for dense layers only (Sec. 6.2.3 runs NORTH-Select, "
                             f"-Random, -Weight on convolutions); use one of those for layer {layer}")
        k = min(k, self.max_widths[layer] - self.widths[layer]) if self.max_widths is not None else k
        if k <= 0:
            return 0
        c = (candidates if candidates is not None else 100 if self.kinds[layer] == "conv" else 1000) + k
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        if strategy in ("NORTH-Select", "NORTH-Pre"):
            if acts is None:
                with torch.no_grad():
                    acts = self.forward_all(_need(x, strategy), batch_stats=True)
            h = as_samples(acts[3][layer])
            if h.shape[0] <= h.shape[1]:
                effective_dimension(h)                         # Eq. 27 needs n > M: the one-line error
        if strategy in ("GradMax", "NeST") and aux is None:
            aux = auxiliary_gradient(self, layer, _need(x, strategy), _need(y, strategy), loss_fn)
        grown = 0 if aux is None else self.layers[layer].weight.shape[1] + 1 - aux.shape[1]
        if grown > 0:                        # inputs added since the gradient was taken: zero columns
            aux = torch.cat([aux[:, :-1], aux.new_zeros(len(aux), grown), aux[:, -1:]], 1)
        if strategy == "Firefly":
            x, y = _need(x, strategy), _need(y, strategy)
        new = new_neurons(self, layer, k, strategy, acts, aux, c, g, x, y, loss_fn)
        if len(new[0]):
            self.grow_neurons(layer, *new, optimizer=optimizer)
        return len(new[0])


def _per_layer(v, n):
    v = list(v) if isinstance(v, (list, tuple)) else [v] * n
    if len(v) != n:
        raise ValueError(f"{len(v)} values given for {n} hidden layers")
    return [int(x) for x in v]


def _need(v, strategy):
    if v is None:
        raise ValueError(f"{strategy} needs data to look at: pass x (and y for the gradient-based ones)")
    return v


def GrowableMLP(in_features, widths, out_features, max_widths=None):
    """An MLP (any number of hidden layers) of growable dense layers (Sec. 6.3.2-6.3.3)."""
    return GrowableNet((in_features,), (), widths, out_features, max_widths)


def GrowableCNN(in_shape, widths, out_features, dense_widths=(), max_widths=None):
    """A small CNN: growable conv+BN+ReLU+pool blocks, global average pooling, dense layers."""
    return GrowableNet(in_shape, widths, dense_widths, out_features, max_widths)


# ----------------------------------------------------------------------------------------
# The auxiliary gradient (Sec. 6.2.1), triggers (Eqs. 28, 31, 32, 35) and Algorithm 4
# ----------------------------------------------------------------------------------------

def auxiliary_gradient(model, l, x, y, loss_fn=F.cross_entropy):
    """(dL/dZ_{l+1}) [H_{l-1}; 1]^T (Sec. 6.2.1, [142]): the gradient of a zero bridge from layer
    l's input (plus a ones row, the bias) to layer l + 1's pre-activation, (M_{l+1}, M_{l-1} + 1)."""
    _, ins, pres, _ = model.forward_all(x)
    pres[l + 1].retain_grad()
    loss_fn(pres[-1], y).backward()
    model.zero_grad(set_to_none=True)
    return aux_from(pres[l + 1].grad, ins[l])


def aux_from(grad_z_next, inputs):
    x = inputs.detach().flatten(1)
    return grad_z_next.t() @ torch.cat([x, x.new_ones(len(x), 1)], 1)


def trigger_count(m, phi, baseline, gamma):
    """Eqs. 28 / 31 / 35 as meant: max(0, floor(M phi - floor(gamma baseline M))). Printed:
    min(0, floor(M (phi - gamma baseline))), never positive (the code takes the positive part);
    and with that single floor a full-rank layer (phi = baseline = 1) grows only once 0.03 M >= 1,
    never from Sec. 6.3.2's initial width 4, while the code floors the threshold first (1 neuron
    at M = 4; 3 at M = 100 either way). 1e-9 guards the floors against rounding."""
    return max(0, math.floor(m * phi - math.floor(gamma * baseline * m + 1e-9) + 1e-9))


def gradient_trigger(aux, neuron_grad_norms):
    """Eq. 32: how many singular values of the auxiliary gradient exceed half of
    sum_m ||dL/dw_m^in|| + ||dL/dw_m^out|| (the authors' code; the printed full sum is rarely
    exceeded from Table 8's initial widths, though Fig. 28 shows these strategies growing). At
    most M_{l+1} by construction (GradMax's limit)."""
    a = aux.double()
    sq = torch.linalg.eigvalsh(a @ a.t() if a.shape[0] <= a.shape[1] else a.t() @ a)  # squared singular values
    return int((sq > (float(neuron_grad_norms.sum()) / 2) ** 2).sum())


def neuron_grad_norms(model, l):
    """||dL/dw_m^in|| + ||dL/dw_m^out|| of layer l's neurons, from the last backward's .grad."""
    layer, nxt = model.layers[l], model.next_of(l)
    g_in = layer.weight.grad.flatten(1).pow(2).sum(1) + (layer.bias.grad.pow(2) if layer.bias is not None else 0)
    return g_in.sqrt() + nxt.weight.grad.transpose(0, 1).flatten(1).norm(dim=1)


class Buffer:
    """FIFO (a ring) of the latest `size` inputs (Table 8: 1024 generated data, 1568 MNIST, 128
    CNNs) and each hidden layer's post-activations on them. These come from the training forward
    passes (up to size / batch steps old, like the GPU runs' mini-batch activations); new neurons'
    columns are appended as they grow; all are recomputed through the current network after
    another structural change or a load, or at every evaluation with refresh="always" (the
    authors' CPU code). The order of the samples is irrelevant to every metric."""

    def __init__(self, size, refresh="change"):
        if refresh not in ("change", "always"):
            raise ValueError(f"refresh must be 'change' or 'always', got {refresh!r}")
        self.size, self.refresh, self.x, self.posts, self.n, self.head = int(size), refresh, None, None, 0, 0

    def __len__(self):
        return self.n

    def push(self, x, posts=None):
        x = x.detach()[-self.size:]
        if self.x is None or len(self.x) != self.size:             # first push, or the size changed
            old, self.x = (x[:0] if self.x is None else self.x[:self.n]), x.new_zeros(self.size, *x.shape[1:])
            self.n = min(len(old), self.size)
            self.x[:self.n], self.head, self.posts = old[len(old) - self.n:], self.n % self.size, None
        idx = (self.head + torch.arange(len(x), device=x.device)) % self.size
        self.x[idx] = x
        if posts is not None and self.posts is not None:
            for a, p in zip(self.posts, posts):
                a[idx] = p.detach()[-self.size:]
        else:
            self.posts = None
        self.head, self.n = (self.head + len(x)) % self.size, min(self.n + len(x), self.size)

    def stale(self):
        self.posts = None

    def _ins(self, model):
        x = self.x[:self.n].reshape(self.n, *(model.in_shape if model.kinds[0] == "conv" else (-1,)))
        return [x] + [model.between(l, p[:self.n]) for l, p in enumerate(self.posts[:-1])]

    @torch.no_grad()
    def activations(self, model, pre=False):
        """(None, inputs, pre-activations (dense layers, if pre), post-activations) on the buffer,
        like GrowableNet.forward_all."""
        if self.refresh == "always" or self.posts is None or [p.shape[1] for p in self.posts] != model.widths:
            posts = model.forward_all(self.x[:self.n], batch_stats=True)[3]
            self.posts = [torch.cat([p, p.new_zeros(self.size - self.n, *p.shape[1:])]) for p in posts]
        ins = self._ins(model)
        pres = [F.linear(i, m.weight, m.bias) if k == "dense" and pre else None
                for i, m, k in zip(ins, model.layers, model.kinds)]
        return None, ins, pres, [p[:self.n] for p in self.posts]

    @torch.no_grad()
    def grown(self, model, l, k):
        """Append the post-activations of layer l's k newest neurons (with zero fan-out nothing
        downstream changes)."""
        if self.posts is None or self.posts[l].shape[1] + k != model.widths[l]:
            return self.stale()
        layer, x = model.layers[l], self._ins(model)[l]
        if model.kinds[l] == "conv":
            bn = model.norms[l]
            z = F.batch_norm(F.conv2d(x, layer.weight[-k:], padding=1), None, None, bn.weight[-k:], bn.bias[-k:],
                             True, 0.0, bn.eps)
        else:
            z = F.linear(x, layer.weight[-k:], layer.bias[-k:])
        z = torch.cat([relu0(z), z.new_zeros(self.size - self.n, *z.shape[1:])])
        self.posts[l] = torch.cat([self.posts[l], z], 1)

    def state_dict(self):
        return dict(size=self.size, x=self.x, posts=self.posts, n=self.n, head=self.head)

    def load_state_dict(self, s):
        self.size, self.x, self.posts, self.n, self.head = s["size"], s["x"], s["posts"], s["n"], s["head"]


class Neurogenesis:
    """Algorithm 4 on a GrowableNet and its optimizer: step(x, y) is a gradient step, then each
    hidden layer gets TRIGGER(f, l) neurons by INITIALIZATION(f, l) (Table 7), up to max_widths.
    schedule: None (the strategy's trigger), "Linear" / "Batched" (Sec. 6.3.3: initial widths to
    final_widths during the first grow_until of total_steps, with the strategy's initialization)
    or "static". Defaults: Table 8, Sec. 6.3.1; buffer 2 x the largest maximum width (128 for
    CNNs). start(x) fills the buffer with the first training inputs and takes the baselines
    phi(f_0). A layer at its maximum width is not evaluated (no metric in history["metric"]):
    nothing could be added. Checkpoint: state_dict(); to resume, build the model (initial widths)
    and optimizer as at the start, then load_state_dict() (it reshapes the model before loading)."""

    def __init__(self, model, optimizer, strategy="NORTH-Select", max_widths=None, schedule=None,
                 buffer_size=None, gamma_a=0.97, gamma_w=0.99, eps=0.01, candidates=None, metric="ED",
                 final_widths=None, total_steps=None, grow_until=0.75, every=1, refresh="change",
                 loss_fn=F.cross_entropy, seed=0):
        check_strategy(strategy)
        if schedule not in (None, "static") + SCHEDULES or metric not in ("ED", "OG"):
            raise ValueError(f"unknown schedule {schedule!r} or metric {metric!r}; choose a schedule from None "
                             f"(dynamic), static, Linear, Batched and a metric from ED (Eq. 27), OG (Eq. 29)")
        n = len(model.widths)
        self.model, self.optimizer, self.strategy, self.schedule = model, optimizer, strategy, schedule
        self.trigger, self.growing = "preset" if schedule in SCHEDULES else TRIGGERS[strategy], schedule != "static"
        self.max_widths = _per_layer(max_widths if max_widths is not None else model.max_widths or model.widths, n)
        if schedule in SCHEDULES:
            if final_widths is None or not total_steps:
                raise ValueError(f"schedule {schedule} needs final_widths and total_steps")
            self.final_widths = _per_layer(final_widths, n)
            self.max_widths = [max(a, b) for a, b in zip(self.max_widths, self.final_widths)]
        for l, (w, mx) in enumerate(zip(model.widths, self.max_widths)):
            if w > mx:
                raise ValueError(f"layer {l} has {w} neurons, above its maximum width {mx}; raise max_widths")
            if self.growing and model.kinds[l] == "conv" and strategy in DENSE_ONLY:
                raise ValueError(f"{strategy} is implemented for dense layers only; on a CNN use "
                                 f"NORTH-Select, NORTH-Random or NORTH-Weight")
        model.max_widths = model.max_widths or list(self.max_widths)
        self.gamma_a, self.gamma_w, self.eps, self.metric, self.every = gamma_a, gamma_w, eps, metric, every
        self.candidates, self.total_steps, self.grow_until, self.loss_fn = candidates, total_steps, grow_until, loss_fn
        self.initial_widths, self.buffer = list(model.widths), None
        if self.growing and (self.trigger == "act" or strategy in ("NORTH-Select", "NORTH-Pre")):
            self.buffer = Buffer(buffer_size or (128 if "conv" in model.kinds else 2 * max(self.max_widths)), refresh)
            for l, mx in enumerate(self.max_widths):
                per = model.sizes[l] ** 2 if model.kinds[l] == "conv" else 1
                if self.buffer.size * per <= mx:
                    raise ValueError(f"a buffer of {self.buffer.size} inputs gives {self.buffer.size * per} samples, "
                                     f"not more than layer {l}'s maximum width {mx} (Eq. 27 needs n > M); use a "
                                     f"buffer of at least {mx // per + 1} inputs")
        self.baselines, self.steps, self.generator = None, 0, torch.Generator().manual_seed(seed)
        self.history = dict(widths=[[0] + model.widths], events=[], metric=[])
        self.seconds = dict(step=0.0, trigger=0.0, init=0.0)

    def start(self, x):
        """Fill the buffer with x (the first training inputs); baselines phi(f_0) per layer."""
        if self.buffer is not None:
            self.buffer.push(x)
        if self.trigger == "weight":
            self.baselines = [weight_metric(layer, self.eps) for layer in self.model.layers]
        elif self.trigger == "act" and self.growing:
            posts = self.buffer.activations(self.model)[3]
            self.baselines = [activation_metric(h, self.eps, self.metric) for h in posts]

    def step(self, x, y):
        """One iteration of Algorithm 4; returns the training loss."""
        m, t0 = self.model, time.perf_counter()
        m.train()
        self.optimizer.zero_grad(set_to_none=True)
        need_aux = self.growing and (self.trigger == "grad" or self.strategy in ("GradMax", "NeST"))
        out, ins, pres, posts = m.forward_all(x)
        if need_aux:
            for z in pres[1:]:
                z.retain_grad()
        loss_t = self.loss_fn(out, y)
        loss_t.backward()
        loss, aux, norms = float(loss_t.detach()), None, None
        if need_aux:                        # Eq. 32 and GradMax / NeST reuse this step's backward
            aux = [aux_from(pres[l + 1].grad, ins[l]) for l in range(len(m.layers))]
            norms = [neuron_grad_norms(m, l) for l in range(len(m.layers))]
        self.optimizer.step()
        self.steps += 1
        if self.buffer is not None:
            self.buffer.push(x, [p.detach() for p in posts])
        del out, ins, pres, posts, loss_t                    # no graph may outlive a reshaped parameter
        self.seconds["step"] += time.perf_counter() - t0
        if self.growing and self.steps % self.every == 0:
            self._neurogenesis(x, y, aux, norms)
        self.history["widths"].append([self.steps] + m.widths)
        return loss

    def _how_many(self, l, acts, aux, norms):
        m, width = self.model, self.model.widths[l]
        if self.trigger == "preset":
            w0, wf = self.initial_widths[l], self.final_widths[l]
            p = self.steps / (self.total_steps * self.grow_until)
            if self.schedule == "Linear":
                return int(width < (wf - w0) * p + w0 and width < wf)
            stage, k = math.floor(math.floor(8 * min(p, 1.0)) * (wf - w0) / 8) + w0, (wf - w0) // 8
            return k if width < stage and width + k <= wf else 0
        if self.trigger == "grad":
            return gradient_trigger(aux[l], norms[l])
        phi = weight_metric(m.layers[l], self.eps) if self.trigger == "weight" else \
            activation_metric(acts[3][l], self.eps, self.metric)
        base = self.baselines[l]
        if self.trigger == "act" and m.kinds[l] == "conv":          # Eq. 35: running maximum
            self.baselines[l] = max(base, phi)
        self.history["metric"].append((self.steps, l, phi))
        return trigger_count(width, phi, base, self.gamma_a if self.trigger == "act" else self.gamma_w)

    def _neurogenesis(self, x, y, aux, norms):
        m, acts = self.model, None
        if self.baselines is None and self.trigger in ("act", "weight"):
            raise ValueError("call start(x) with the first training inputs before step(): it takes phi(f_0)")
        for l in range(len(m.layers)):
            if m.widths[l] >= self.max_widths[l]:
                continue                       # full, and Neurogenesis never prunes: no trigger to evaluate
            t0 = time.perf_counter()
            if acts is None and self.trigger == "act":
                acts = self.buffer.activations(m)
            k = min(self._how_many(l, acts, aux, norms), self.max_widths[l] - m.widths[l])
            t1 = time.perf_counter()
            self.seconds["trigger"] += t1 - t0
            if k <= 0:
                continue
            if (acts is None or self.strategy == "NORTH-Pre") and self.strategy in ("NORTH-Select", "NORTH-Pre"):
                acts = self.buffer.activations(m, pre=self.strategy == "NORTH-Pre")
            added = m.grow(l, k, self.strategy, self.optimizer, x=x, y=y, loss_fn=self.loss_fn, acts=acts,
                           candidates=self.candidates, generator=self.generator, aux=None if aux is None else aux[l])
            self.history["events"].append((self.steps, l, added))
            if self.buffer is not None:                       # NORTH* and presets keep the function
                self.buffer.grown(m, l, added)
            acts = None
            self.seconds["init"] += time.perf_counter() - t1

    def state_dict(self):
        return dict(strategy=self.strategy, schedule=self.schedule, widths=self.model.widths,
                    initial_widths=self.initial_widths, model=self.model.state_dict(),
                    optimizer=self.optimizer.state_dict(), baselines=self.baselines, steps=self.steps,
                    buffer=None if self.buffer is None else self.buffer.state_dict(),
                    generator=self.generator.get_state(), history=self.history, seconds=self.seconds)

    def load_state_dict(self, s):
        if (s["strategy"], s["schedule"]) != (self.strategy, self.schedule):
            raise ValueError(f"checkpoint is of {s['strategy']} (schedule {s['schedule']}), not {self.strategy} "
                             f"(schedule {self.schedule}); resume with the same strategy")
        self.model.set_widths(s["widths"])
        self.model.load_state_dict(s["model"])
        self.optimizer.load_state_dict(s["optimizer"])
        if self.buffer is not None:
            self.buffer.load_state_dict(s["buffer"])
        self.initial_widths, self.baselines, self.steps = s["initial_widths"], s["baselines"], s["steps"]
        self.generator.set_state(s["generator"])
        self.history, self.seconds = s["history"], s["seconds"]


if __name__ == "__main__":
    # Demo (Sec. 6.3.2 in small): MLPs 32 -> [4] -> 2 grow while they learn a task on 32 features
    # of which 8 are independent. Each step adds the neurons of the trigger (Eqs. 28, 31, 32);
    # NORTH-Weight's fan-ins lie in the kernel of W (Eq. 34), so it stops at 32 (the input size).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 8, generator=g)
    x = torch.cat([x, x @ torch.randn(8, 24, generator=g)], 1)
    y = (x.sum(1) > x.sum(1).median()).long()
    print("hidden neurons after 0, 5, 10, 25, 50 steps of 64, and the test accuracy")
    for strategy in ("NORTH-Select", "NORTH-Weight", "GradMax"):
        torch.manual_seed(0)
        net = GrowableMLP(32, [4], 2, max_widths=128)
        ng = Neurogenesis(net, torch.optim.Adam(net.parameters(), 1e-2), strategy, buffer_size=300)
        ng.start(x[:300])
        for i in list(range(0, 1600, 64)) * 2:
            ng.step(x[i:i + 64], y[i:i + 64])
        widths = [w for s, w in ng.history["widths"] if s in (0, 5, 10, 25, 50)]
        acc = (net(x[1600:]).argmax(1) == y[1600:]).float().mean().item()
        print(f"  {strategy:13s} {widths}  {acc:.1%}")
