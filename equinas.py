"""Equivariance-aware NAS (Maile's thesis, Ch. 4): group convolutions over the subgroups of D4, the
equivariance relaxation morphism, the [G]-mixed layer, EquiNAS_E and EquiNAS_D.

Source: K. Maile, "Dynamic Architectural Optimization of Artificial Neural Networks", Sec. 4.2-4.5
(Eqs. 2-12, Algorithms 1-2, Sec. 4.5 backbone and hyperparameters); the authors' code
(k8lion/equiNAS) where the text is silent.

Groups act on images by 90° rotations and a left-right flip. Element g in 0..7 is the map F^f R^r,
g = 4 f + r: rotate by r·90° (torch.rot90, counter-clockwise), then flip if f. GROUPS lists the
subgroups used by the thesis as element sets (ELEMENTS). A G-feature map has `fields` of |G|
channels each, field-major: (B, fields·|G|, H, W) viewed as (B, fields, |G|, H, W).

Frames. A layer of group H can lay its channels out in the field-major order of a larger group F
(its *frame*): H-field j of frame field b is the right coset H·t_j (t_j in `reps`), and the
channel of (b, u) for u = h t_j holds H-field (b, j) at h (Eq. 4). Relaxed layers keep their
parent's frame, so a relaxed network reads and writes the same tensors; all layers of a network
use the D4 frame, so any group can follow any other and [G]-mixed layers sum their filters.
"""
import copy
import math
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F

GROUPS = ("C1", "D1", "C2", "D2", "C4", "D4")
ELEMENTS = {"C1": (0,), "D1": (0, 4), "C2": (0, 2), "D2": (0, 2, 4, 6), "C4": (0, 1, 2, 3),
            "D4": tuple(range(8))}


# --- The group D4 and its subgroups (Sec. 4.2.1) -------------------------------------------------

def mul(g, h):
    """The product g h of F^f1 R^r1 and F^f2 R^r2 = F^(f1+f2) R^((-1)^f2 r1 + r2) (R^r F = F R^-r)."""
    r1, f1, r2, f2 = g % 4, g // 4, h % 4, h // 4
    return 4 * (f1 ^ f2) + ((r2 - r1) if f2 else (r1 + r2)) % 4


def inv(g):
    """g^-1: flips are involutions, R^r -> R^-r."""
    return g if g >= 4 else (-g) % 4


def act(x, g):
    """Element g on images (..., H, W): rotate by (g % 4)·90°, then flip left-right if g >= 4."""
    x = torch.rot90(x, g % 4, dims=(-2, -1))
    return x.flip(-1) if g >= 4 else x


def act_fields(y, g, group):
    """The regular action of g (in `group`) on field-major features (B, C·|G|, H, W):
    (g·f)(u) = act(f(g^-1 u), g)."""
    E = ELEMENTS[check_group(group)]
    src = [E.index(mul(inv(g), u)) for u in E]
    B, C, H, W = y.shape
    return act(y.reshape(B, C // len(E), len(E), H, W)[:, :, src], g).reshape(B, C, H, W)


def check_group(name):
    if name not in ELEMENTS:
        raise ValueError(f"unknown group {name!r}; choose from {', '.join(GROUPS)}")
    return name


def is_subgroup(sub, group):
    return set(ELEMENTS[check_group(sub)]) <= set(ELEMENTS[check_group(group)])


def coset_reps(sub, group):
    """A system R of representatives of the right cosets sub·t of `group`, the identity first
    (Sec. 4.3.1): the first element of `group` (in order) of each coset."""
    reps, seen = [], set()
    for t in ELEMENTS[group]:
        if t not in seen:
            reps.append(t)
            seen |= {mul(h, t) for h in ELEMENTS[sub]}
    return tuple(reps)


def _layout(group, frame, reps):
    """q[p] = j·|H| + i for the frame element u_p = h_i t_j: where the frame's position p of a
    frame field sits in the layer's own field-major order."""
    H = ELEMENTS[group]
    own = {mul(h, t): j * len(H) + i for j, t in enumerate(reps) for i, h in enumerate(H)}
    if len(own) != len(ELEMENTS[frame]) or set(own) != set(ELEMENTS[frame]):
        raise ValueError(f"reps {tuple(reps)} are not representatives of the cosets of {group} in "
                         f"{frame}; pass None for the default {coset_reps(group, frame)}")
    return torch.tensor([own[u] for u in ELEMENTS[frame]])


@lru_cache(maxsize=None)
def _spatial(k):
    """S[g]: act(w, g).flatten() == w.flatten()[S[g]] for k x k filters."""
    grid = torch.arange(k * k).view(k, k)
    return torch.stack([act(grid, g).flatten() for g in range(8)])


# --- Layers: group convolution (Eqs. 2-3), field BatchNorm, relaxation morphism (Eqs. 4-10) ------

class GroupConv2d(nn.Module):
    """Group convolution over `group` (Eq. 2; lifting, Eq. 3) as one conv2d with the expanded filter
    W[(d, g), (c, h)] = act(psi_dc(g^-1 h), g) (Sec. 4.3.1: filter expanded by the group action),
    padding k//2, no bias (a BatchNorm follows). psi: (out_fields, in_fields, |G|, k, k), or
    (out_fields, in_channels, k, k) when lifting. Maps (B, in_fields·|G|, H, W) (lifting:
    (B, in_channels, H, W)) to (B, out_fields·|G|, H, W), field-major in `frame` (default: own).
    Init: normal, std sqrt(2 / fan-in of the expanded filter): every group's expanded filter has
    the same scale, so in a mixed layer z alone weighs them (authors' code: std 1/sqrt(C_out C_in))."""

    def __init__(self, group, in_fields, out_fields, kernel_size, lifting=False, frame=None, reps=None):
        super().__init__()
        frame = frame or check_group(group)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size {kernel_size} is even; exact equivariance needs an odd "
                             f"kernel with padding k//2: use 3, 5 or 7")
        if not is_subgroup(group, frame):
            raise ValueError(f"frame {frame} does not contain {group}; use D4, which contains all")
        self.group, self.frame, self.lifting, self.kernel_size = group, frame, lifting, kernel_size
        self.reps = tuple(reps) if reps is not None else coset_reps(group, frame)
        m, n, k = len(self.reps), len(ELEMENTS[group]), kernel_size
        if out_fields % m or (not lifting and in_fields % m):
            raise ValueError(f"{group} fields ({in_fields} in, {out_fields} out) must be multiples "
                             f"of [{frame}:{group}] = {m} to lay them out in the {frame} frame")
        self.in_fields, self.out_fields = in_fields, out_fields
        shape = (out_fields, in_fields, k, k) if lifting else (out_fields, in_fields, n, k, k)
        fan_in = in_fields * (1 if lifting else n) * k * k
        self.psi = nn.Parameter(torch.randn(shape) * math.sqrt(2.0 / fan_in))
        S, H = _spatial(k), ELEMENTS[group]
        if lifting:                                   # idx[i, y]: act(psi, h_i) at y
            idx = torch.stack([S[h] for h in H])
        else:                                         # idx[i, j, y]: act(psi(h_i^-1 h_j), h_i) at y
            idx = torch.stack([torch.stack([H.index(mul(inv(hi), hj)) * k * k + S[hi] for hj in H])
                               for hi in H])
        self.register_buffer("_gather", idx, persistent=False)
        q = _layout(group, frame, self.reps)
        self.register_buffer("_q", None if torch.equal(q, torch.arange(len(q))) else q, persistent=False)

    def expanded(self, psi=None):
        """The expanded filter (out channels, in channels, k, k) in the frame's order."""
        psi = self.psi if psi is None else psi
        Co, Ci, k, f = psi.shape[0], psi.shape[1], self.kernel_size, len(ELEMENTS[self.frame])
        n = len(ELEMENTS[self.group])
        w = psi.flatten(2)[:, :, self._gather]                     # (Co, Ci, n, [n,] k²)
        if self.lifting:
            w = w.transpose(1, 2).reshape(Co * n // f, f, Ci, k * k)
            if self._q is not None:
                w = w.index_select(1, self._q)
            return w.reshape(Co * n, Ci, k, k)
        w = w.permute(0, 2, 1, 3, 4).reshape(Co * n // f, f, Ci * n // f, f, k * k)
        if self._q is not None:
            w = w.index_select(1, self._q).index_select(3, self._q)
        return w.reshape(Co * n, Ci * n, k, k)

    def forward(self, x):
        return F.conv2d(x, self.expanded(), padding=self.kernel_size // 2)


class FieldBatchNorm(nn.Module):
    """BatchNorm with statistics and affine parameters shared over each field's |G| channels (so it
    commutes with the group action); eval mode uses running statistics (momentum 0.1, unbiased)."""

    def __init__(self, group, fields, frame=None, reps=None, eps=1e-5, momentum=0.1):
        super().__init__()
        frame = frame or check_group(group)
        self.group, self.frame, self.fields, self.eps, self.momentum = group, frame, fields, eps, momentum
        self.reps = tuple(reps) if reps is not None else coset_reps(group, frame)
        q, n, m = _layout(group, frame, self.reps), len(ELEMENTS[group]), len(self.reps)
        field = (torch.arange(fields // m)[:, None] * m + (q // n)[None, :]).flatten()  # of each channel
        self.register_buffer("field", field, persistent=False)
        self.weight, self.bias = nn.Parameter(torch.ones(fields)), nn.Parameter(torch.zeros(fields))
        self.register_buffer("running_mean", torch.zeros(fields))
        self.register_buffer("running_var", torch.ones(fields))

    def _per_field(self, per_channel):
        n = len(ELEMENTS[self.group])
        return per_channel.new_zeros(self.fields).index_add_(0, self.field, per_channel) / n

    def forward(self, x):
        if self.training:
            mean = self._per_field(x.mean((0, 2, 3)))
            var = self._per_field((x - mean[self.field].view(1, -1, 1, 1)).pow(2).mean((0, 2, 3)))
            count = x.numel() // self.fields
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var * count / max(count - 1, 1), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        scale = self.weight / torch.sqrt(var + self.eps)
        shift = self.bias - mean * scale
        return x * scale[self.field].view(1, -1, 1, 1) + shift[self.field].view(1, -1, 1, 1)


def relax(layer, subgroup):
    """The equivariance relaxation morphism G -> G' (Eqs. 4-10) of a GroupConv2d or FieldBatchNorm:
    an equivalent layer over `subgroup` with [G:G'] times the fields and parameters. With R the
    representatives of G'\\G, field (d, t) of the new layer is field d of the old at g' t (Eq. 4)
    and psi~_(d,t),(c,s)(g') = act(psi_dc(t^-1 g' s), t) (Eq. 5; the spatial action of t is the
    filter expansion of Sec. 4.3.1). Eval-mode outputs are identical; a FieldBatchNorm in
    training mode then averages batch statistics over G' instead of G."""
    if not isinstance(layer, (GroupConv2d, FieldBatchNorm)):
        raise ValueError(f"relax() takes a GroupConv2d or FieldBatchNorm, not {type(layer).__name__}")
    G = layer.group
    if not is_subgroup(subgroup, G):
        subs = ", ".join(h for h in reversed(GROUPS) if is_subgroup(h, G))
        raise ValueError(f"cannot relax a {G} layer to {subgroup}: {subgroup} is not a subgroup of "
                         f"{G}; choose from {subs}")
    R = coset_reps(subgroup, G)
    reps = tuple(mul(t2, t1) for t1 in layer.reps for t2 in R)
    m = len(R)
    if isinstance(layer, FieldBatchNorm):
        new = FieldBatchNorm(subgroup, layer.fields * m, layer.frame, reps, layer.eps,
                             layer.momentum).to(layer.weight)
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(new, name).copy_(getattr(layer, name).repeat_interleave(m))
        return new
    psi = layer.psi.detach()
    new = GroupConv2d(subgroup, layer.in_fields * (1 if layer.lifting else m), layer.out_fields * m,
                      layer.kernel_size, layer.lifting, layer.frame, reps).to(psi)
    if layer.lifting:
        w = torch.stack([act(psi, t) for t in R], 1)               # (Co, m, Ci, k, k)
    else:
        E, H2 = ELEMENTS[G], ELEMENTS[subgroup]
        w = torch.stack([act(psi[:, :, [[E.index(mul(mul(inv(t), h), s)) for h in H2] for s in R]], t)
                         for t in R], 1)                          # (Co, m, Ci, m, |G'|, k, k)
    with torch.no_grad():
        new.psi.copy_(w.reshape(new.psi.shape))
    return new


class MixedGroupConv2d(nn.Module):
    """The [G]-mixed layer (Eqs. 11-12): z = softmax(alpha) over `groups`, computed as one conv2d
    with the summed expanded filters sum_G z_G psi~^G (Eq. 12), all laid out in `frame` (their
    common subgroup is C1). Fields count `frame` fields (|frame| channels each), so every group
    gets the same expanded width. normalize: psi^G = v^G n^G / ||v^G||, n^G = ||v^G|| at init,
    frozen (weight normalization, Sec. 4.4.2). l2: {group: coefficient} for penalty() (RPP)."""

    def __init__(self, in_fields, out_fields, kernel_size, groups=GROUPS, lifting=False, frame="D4",
                 normalize=True, l2=None):
        super().__init__()
        f = len(ELEMENTS[check_group(frame)])
        self.groups = tuple(check_group(g) for g in groups)
        self.frame, self.kernel_size, self.lifting = frame, kernel_size, lifting
        self.normalize, self.l2 = normalize, dict(l2 or {})
        self.layers = nn.ModuleList(
            GroupConv2d(g, in_fields if lifting else in_fields * f // len(ELEMENTS[g]),
                        out_fields * f // len(ELEMENTS[g]), kernel_size, lifting, frame)
            for g in self.groups)
        self.alpha = nn.Parameter(torch.zeros(len(self.groups)))
        self.register_buffer("norms", torch.stack([l.psi.detach().norm() for l in self.layers]))

    def z(self):
        return torch.softmax(self.alpha, 0)

    def kernel(self, i):
        psi = self.layers[i].psi
        return psi * (self.norms[i] / psi.norm()) if self.normalize else psi

    def expanded(self):
        z = self.z()
        return sum(z[i] * layer.expanded(self.kernel(i)) for i, layer in enumerate(self.layers))

    def forward(self, x):
        return F.conv2d(x, self.expanded(), padding=self.kernel_size // 2)

    def penalty(self):
        return sum(c * self.layers[self.groups.index(g)].psi.pow(2).sum() for g, c in self.l2.items())


# --- The backbone of Sec. 4.5 --------------------------------------------------------------------

def pool(x):
    """Average pooling that commutes with D4: 2x2 stride 2 on even sizes, 3x3 stride 2 padding 1
    on odd sizes (28 -> 14 -> 7 -> 4, the sizes of the authors' code)."""
    return F.avg_pool2d(x, 2) if x.shape[-1] % 2 == 0 else F.avg_pool2d(x, 3, 2, 1)


RPP = "RPP"     # arch entry: a C1 layer (L2 1e-6) beside an unregularized D4 layer (Sec. 4.5)


class EquiCNN(nn.Module):
    """Sec. 4.5: a lifting layer then group-conv layers, each followed by field BatchNorm and ReLU;
    `fields` D4-frame fields (8 channels each) in the first half, twice as many after; average
    pooling after layers 2, 4, 6 (0-based, every other layer, not the last); global average
    pooling, group pooling over the last layer's fields, Linear-BN-ReLU-Linear.

    arch: one entry per layer: a group name ("C4"), {"group": "C4", "reps": [...]} (a relaxed
    layer), a tuple of group names (a [G]-mixed layer; its BatchNorm and pooling are per channel,
    i.e. over C1, the group of Eq. 12's single filter), or RPP (z fixed at 1/2, 1/2, no weight
    normalization). Default: all D4, 8 layers, 16 fields, k = 5 (the authors' MNIST setting)."""

    def __init__(self, arch=("D4",) * 8, fields=16, kernel_size=5, in_channels=1, classes=10,
                 hidden=64, mean=0.0, std=1.0):
        super().__init__()
        self.config = dict(fields=fields, kernel_size=kernel_size, in_channels=in_channels,
                           classes=classes, hidden=hidden, mean=mean, std=std)
        L, self.convs, self.bns = len(arch), nn.ModuleList(), nn.ModuleList()
        for i, spec in enumerate(arch):
            fin = in_channels if i == 0 else fields * (2 if i - 1 >= L // 2 else 1)
            fout = fields * (2 if i >= L // 2 else 1)
            if isinstance(spec, str) and spec != RPP:
                spec = {"group": spec}
            if isinstance(spec, dict):
                g, reps = check_group(spec["group"]), spec.get("reps")
                m = 8 // len(ELEMENTS[g])
                conv = GroupConv2d(g, fin if i == 0 else fin * m, fout * m, kernel_size, i == 0, "D4", reps)
                bn = FieldBatchNorm(g, fout * m, "D4", conv.reps)
            else:
                rpp = spec == RPP
                conv = MixedGroupConv2d(fin, fout, kernel_size, ("C1", "D4") if rpp else spec, i == 0,
                                        normalize=not rpp, l2={"C1": 1e-6} if rpp else None)
                conv.alpha.requires_grad_(not rpp)
                bn = FieldBatchNorm("C1", fout * 8, "D4")
            self.convs.append(conv)
            self.bns.append(bn)
        self.head = nn.Sequential(nn.Linear(self.bns[-1].fields, hidden), nn.BatchNorm1d(hidden),
                                  nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x):
        x = (x - self.config["mean"]) / self.config["std"]
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            x = F.relu(bn(conv(x)))
            if i % 2 == 0 and 0 < i < len(self.convs) - 1:
                x = pool(x)
        bn = self.bns[-1]                                          # group pooling over its fields
        x = x.mean((2, 3))
        x = x.new_zeros(len(x), bn.fields).index_add_(1, bn.field, x) / len(ELEMENTS[bn.group])
        return self.head(x)

    def arch(self):
        """The arch list that rebuilds this network (with its relaxed layers' representatives)."""
        out = []
        for c in self.convs:
            if isinstance(c, GroupConv2d):
                out.append(c.group if c.reps == coset_reps(c.group, "D4") else
                           {"group": c.group, "reps": list(c.reps)})
            else:
                out.append(RPP if not c.alpha.requires_grad else c.groups)
        return out

    def groups(self):                                # each layer's group (None: mixed)
        return [getattr(c, "group", None) for c in self.convs]

    def spec(self):                                  # what rebuilds it: from_spec(spec())
        return {"arch": self.arch(), "config": dict(self.config)}

    from_spec = classmethod(lambda cls, spec: cls(spec["arch"], **spec["config"]))

    def z(self):                                     # softmax(alpha) of each mixed layer
        return [c.z().tolist() for c in self.convs if isinstance(c, MixedGroupConv2d)]

    def alphas(self):
        return [c.alpha for c in self.convs if isinstance(c, MixedGroupConv2d) and c.alpha.requires_grad]

    def weights(self):
        """Psi: every parameter but the architecture weights alpha."""
        return [p for name, p in self.named_parameters() if not name.endswith(".alpha")]

    def num_params(self):
        return sum(p.numel() for p in self.weights())

    def penalty(self):
        return sum(c.penalty() for c in self.convs if isinstance(c, MixedGroupConv2d))


def relax_network(net, layer, subgroup):
    """A copy of `net` with layer `layer` (and its BatchNorm) relaxed to `subgroup`; relaxing the
    last layer also splits its group pooling, whose first Linear then takes W / [G:G'] for each
    new field (same logits). Eval-mode outputs are identical to net's."""
    new, old_bn = copy.deepcopy(net), net.bns[layer]
    new.convs[layer], new.bns[layer] = relax(net.convs[layer], subgroup), relax(old_bn, subgroup)
    if layer == len(net.convs) - 1:
        m, lin = new.bns[layer].fields // old_bn.fields, new.head[0]
        wide = nn.Linear(new.bns[layer].fields, lin.out_features).to(lin.weight)
        with torch.no_grad():
            wide.weight.copy_(lin.weight.repeat_interleave(m, 1) / m)
            wide.bias.copy_(lin.bias)
        new.head[0] = wide
    return new


# --- Training: resumable mini-batch streams, evaluation ------------------------------------------

def _net(spec, model=None, device=None):
    net = EquiCNN.from_spec(spec).to(device)
    return net if model is None else (net.load_state_dict(model), net)[1]


def as_float(x):
    """uint8 images -> float [0, 1]; float images unchanged."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


@lru_cache(maxsize=4)
def _perm(n, seed, epoch):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def batch_indices(n, batch_size, seed, step):
    """The step-th mini-batch of a stream of epochs, epoch e a permutation drawn from (seed, e),
    the last partial batch dropped: a run resumed at any step sees the same batches."""
    e, i = divmod(step, max(n // batch_size, 1))
    return _perm(n, seed, e)[i * batch_size:(i + 1) * batch_size]


def train_steps(net, x, y, optimizer, start, stop, batch_size=64, seed=0, z_optimizer=None):
    """Steps start..stop-1 of the stream. With z_optimizer (Algorithm 2), each step is a Z step on
    one batch then a Psi step on another, drawn independently from the same training split (the
    Z stream has seed + 1). Returns the mean training loss of the Psi steps."""
    net.train()
    total = 0.0
    for step in range(start, stop):
        if z_optimizer is not None:
            idx = batch_indices(len(x), batch_size, seed + 1, step).to(x.device)
            zs = [p for g in z_optimizer.param_groups for p in g["params"]]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            for p, g in zip(zs, torch.autograd.grad(loss, zs)):
                p.grad = g
            z_optimizer.step()
        idx = batch_indices(len(x), batch_size, seed, step).to(x.device)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x[idx]), y[idx]) + net.penalty()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {float(loss)} at step {step}; lower the learning rate")
        loss.backward()
        optimizer.step()
        total += loss.item()
    return total / max(stop - start, 1)


@torch.no_grad()
def accuracy(net, x, y, batch_size=500):
    net.eval()
    dev = next(net.parameters()).device
    correct = sum(int((net(as_float(x[i:i + batch_size]).to(dev)).argmax(1) == y[i:i + batch_size].to(dev)).sum())
                  for i in range(0, len(x), batch_size))
    return correct / max(len(x), 1)


def fit(spec, train_x, train_y, epochs, optimizer="adam", lr=0.01, z_lr=None, batch_size=64,
        seed=0, valid=None, state=None, on_epoch=None, log=None, device=None, calibrate=None, init=None):
    """Train EquiCNN.from_spec(spec) (initialized from `seed`, or from the state_dict `init`, e.g.
    a relaxed network) for `epochs` (may be fractional), a Z step before every Psi step when
    z_lr is given (Algorithm 2), on `device` (None: train_x's). After every epoch on_epoch(state)
    gets a dict to torch.save; fit(..., state=it) resumes exactly. Returns (net, state);
    state["history"]: per epoch the training loss, z per layer and the accuracy on valid = (x, y)
    (after calibrate(net) if given; None: running BatchNorm statistics, as in the thesis)."""
    device = device or train_x.device
    x, y = as_float(train_x).to(device), train_y.to(device)
    torch.manual_seed(seed)
    net = _net(state["spec"] if state else spec, None if state else init, device)
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"unknown optimizer {optimizer!r}; choose sgd or adam")
    opt = (torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam)(net.weights(), lr=lr)
    zopt = torch.optim.Adam(net.alphas(), lr=z_lr) if z_lr and net.alphas() else None
    state = state or {"spec": net.spec(), "step": 0, "history": [{"epoch": 0.0, "z": net.z()}]}
    if "model" in state:
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        if zopt is not None:
            zopt.load_state_dict(state["zopt"])
    per = max(len(x) // batch_size, 1)
    total = round(epochs * per)
    while state["step"] < total:
        stop = min(total, (state["step"] // per + 1) * per)
        loss = train_steps(net, x, y, opt, state["step"], stop, batch_size, seed, zopt)
        rec = {"epoch": stop / per, "train_loss": loss, "z": net.z()}
        if valid is not None:
            if calibrate:
                calibrate(net)
            rec["valid_acc"] = accuracy(net, valid[0].to(device), valid[1].to(device))
        state.update(step=stop, model=copy.deepcopy(net.state_dict()), opt=copy.deepcopy(opt.state_dict()),
                     zopt=copy.deepcopy(zopt.state_dict()) if zopt else None, history=state["history"] + [rec])
        if log:
            log(f"epoch {rec['epoch']:.2f}: loss {loss:.4f}" +
                (f", valid {100 * rec['valid_acc']:.2f}%" if valid is not None else ""))
        if on_epoch:
            on_epoch(state)
    return net, state


def search_differentiable(train_x, train_y, epochs=100, lr=0.01, z_lr=0.01, batch_size=64, seed=0,
                          groups=GROUPS, layers=8, fields=16, kernel_size=5, hidden=64, mean=0.0,
                          std=1.0, valid=None, state=None, on_epoch=None, log=None, device=None,
                          calibrate=None):
    """EquiNAS_D (Algorithm 2): every layer [G]-mixed over `groups`; alternate a Z step and a Psi
    step on independent batches; separate Adam optimizers (lr 0.01 each, Sec. 4.5), batch 64; no
    discretization: the returned network is the searched one. Checkpoint/resume as in fit()."""
    classes = int(train_y.max()) + 1
    spec = {"arch": [tuple(groups)] * layers,
            "config": dict(fields=fields, kernel_size=kernel_size, in_channels=train_x.shape[1],
                           classes=classes, hidden=hidden, mean=mean, std=std)}
    return fit(spec, train_x, train_y, epochs, "adam", lr, z_lr, batch_size, seed, valid, state,
               on_epoch, log, device, calibrate)


# --- EquiNAS_E (Algorithm 1) ---------------------------------------------------------------------

def pareto_front(acc, params):
    """Indices of the points not dominated in (maximal accuracy, minimal parameter count)."""
    return [i for i in range(len(acc))
            if not any(acc[j] >= acc[i] and params[j] <= params[i] and (acc[j] > acc[i] or params[j] < params[i])
                       for j in range(len(acc)))]


def select(acc, params, size=5):
    """Sec. 4.4.1: the whole Pareto front, then the most accurate others until `size` are kept."""
    front = pareto_front(acc, params)
    rest = sorted((i for i in range(len(acc)) if i not in front), key=lambda i: -acc[i])
    return front + rest[:max(0, size - len(front))]


def children(net):
    """Algorithm 1's mutation: every network that relaxes exactly one layer to a proper subgroup
    while each layer's group stays a subgroup of all preceding layers' groups."""
    gs, out = net.groups(), []
    for i, g in enumerate(gs):
        nxt = gs[i + 1] if i + 1 < len(gs) else "C1"
        out += [relax_network(net, i, h) for h in GROUPS
                if h != g and is_subgroup(h, g) and is_subgroup(nxt, h)]
    return out


def search_evolutionary(train_x, train_y, valid_x, valid_y, generations=50, parent_size=5,
                        epochs_per_generation=0.5, lr=0.1, batch_size=64, seed=0, group="D4",
                        layers=8, fields=16, kernel_size=5, hidden=64, mean=0.0, std=1.0,
                        state=None, on_generation=None, log=None, device=None, calibrate=None):
    """EquiNAS_E (Algorithm 1): one all-`group` network is trained; then every generation adds each
    parent's children (`children`), trains every member (parents included) for
    `epochs_per_generation` with plain SGD (lr 0.1, no momentum: nothing to carry across a
    morphism; all members on the same batches: half-epoch g of the stream for round g) and
    keeps `select` of (validation accuracy, parameter count); calibrate(net), if given, runs
    before each validation (None: running BatchNorm statistics, as in the thesis). On `device`
    (None: train_x's). After every generation on_generation(state) gets a dict to torch.save;
    passing it back as `state` resumes exactly. state["population"]: per member "id", "parent",
    "spec", "model" (state_dict), "valid_acc", "params"; state["history"]: a row per member per round."""
    device = device or train_x.device
    x, y = as_float(train_x).to(device), train_y.to(device)
    vx, vy = as_float(valid_x).to(device), valid_y.to(device)
    per = round(epochs_per_generation * max(len(x) // batch_size, 1))
    if state is None:
        torch.manual_seed(seed)
        cfg = dict(fields=fields, kernel_size=kernel_size, in_channels=x.shape[1],
                   classes=int(train_y.max()) + 1, hidden=hidden, mean=mean, std=std)
        net = EquiCNN([check_group(group)] * layers, **cfg).to(device)
        state = {"round": 0, "next_id": 1, "history": [],
                 "population": [{"id": 0, "parent": None, "spec": net.spec(), "model": net.state_dict()}]}
    while state["round"] <= generations:
        r, members = state["round"], []
        for ind in state["population"]:
            net = _net(ind["spec"], ind["model"], device)
            members.append((ind["id"], ind["parent"], net))
            if r > 0:
                for child in children(net):
                    members.append((state["next_id"], ind["id"], child))
                    state["next_id"] += 1
        accs, counts = [], []
        for _, _, net in members:
            train_steps(net, x, y, torch.optim.SGD(net.parameters(), lr=lr), r * per, (r + 1) * per,
                        batch_size, seed)
            if calibrate:
                calibrate(net)
            accs.append(accuracy(net, vx, vy))
            counts.append(net.num_params())
        keep = select(accs, counts, parent_size)
        for k, (i, parent, net) in enumerate(members):
            state["history"].append({"round": r, "id": i, "parent": parent, "groups": net.groups(),
                                     "params": counts[k], "valid_acc": accs[k], "selected": k in keep})
        state["population"] = [{"id": members[k][0], "parent": members[k][1], "spec": members[k][2].spec(),
                                "model": members[k][2].state_dict(), "valid_acc": accs[k],
                                "params": counts[k]} for k in keep]
        state["round"] = r + 1
        if log:
            best = max(keep, key=lambda k: accs[k])
            log(f"generation {r}: {len(members)} members, kept {len(keep)}; best valid "
                f"{100 * accs[best]:.2f}% {'-'.join(members[best][2].groups())} ({counts[best]:,} params)")
        if on_generation:
            on_generation(state)
    return state


if __name__ == "__main__":
    # Demo: a C4 group convolution commutes with the 90° rotation r (Eq. 2), a plain one does not; a
    # [G]-mixed layer (Eq. 12) has the symmetry its z weighs; a D4 network's logits are D4-invariant.
    torch.manual_seed(0)
    x = torch.randn(2, 1, 9, 9)

    def err(f, g, group=None):                    # max |f(g x) - g f(x)|; None: g on each channel
        gf = act(f(x), g) if group is None else act_fields(f(x), g, group)
        return f"{(f(act(x, g)) - gf).abs().max().item():.1e}"

    lift, conv = GroupConv2d("C4", 1, 3, 3, lifting=True), GroupConv2d("C4", 3, 2, 3)
    print(f"max |f(r x) - r f(x)|: C4 group convolution {err(lambda v: conv(lift(v)), 1, 'C4')}, "
          f"plain convolution {err(nn.Conv2d(1, 4, 3, 1, 1), 1)}")
    mixed = MixedGroupConv2d(1, 2, 3, lifting=True)
    print(f"[G]-mixed layer over {', '.join(GROUPS)}: max |f(g x) - g f(x)| for the rotation and the flip g")
    for alpha in ([0] * 6, [0, 0, 0, 0, 30, 0], [0] * 5 + [30]):               # uniform, on C4, on D4
        mixed.alpha.data = torch.tensor(alpha, dtype=torch.float32)
        print(f"  z = {[round(v, 2) for v in mixed.z().tolist()]}: {err(mixed, 1, 'D4')}, {err(mixed, 4, 'D4')}")
    net, images = EquiCNN(("D4",) * 4, fields=2, kernel_size=3, hidden=16).eval(), torch.rand(2, 1, 28, 28)
    print(f"D4 EquiCNN: max change of the logits under the 8 elements of D4 "
          f"{max((net(act(images, g)) - net(images)).abs().max().item() for g in range(8)):.1e}")
