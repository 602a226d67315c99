"""DARTS over the op x rule space: supernet, bilevel architect, genotypes, standalone networks.

Liu, Simonyan & Yang, "DARTS: Differentiable Architecture Search", ICLR 2019 (Sec. 2, Eqs. 1-8),
as extended by BioNAS (Hamzaoui & Baghdadi, Sec. 2.2, 3.2, App. A.4.1): every candidate on an
edge is an (operation, learning rule) pair from ops.search_space().

    Network          the supernet of normal and reduction cells with alpha (model_search.py);
                     its variants: MergedSkipsNetwork, CheckpointedNetwork below, PC-DARTS and
                     EG-NAS in pc_darts.py, the fused supernet in fused.py, CRB in darts_prime.py
    Architect        the alpha step, first or second order (architect.py)
    derive_genotype  the discrete cell of alpha (Sec. 2.4); genotype files: genotypes.py,
                     re-exported here (darts.load_genotype, darts.Genotype, ...)
    NetworkEval      the standalone CIFAR network of a genotype, each edge with its rule
    NetworkImageNet  the same cells in DARTS's ImageNet network (model.py, Sec. 3.4)
"""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import ops
from genotypes import (DARTS_V2, Genotype, check_genotype, force_rule,  # noqa: F401
                       load_genotype, random_genotype, random_rules, save_genotype)
from rules import RuleConv2d, RuleLinear


def _stem(in_channels, C, base_rule, stride=1):
    return nn.Sequential(RuleConv2d(in_channels, C, 3, stride, padding=1, bias=False,
                                    rule=base_rule), nn.BatchNorm2d(C))


def _preprocess(C_pp, C_p, C, reduction_prev, base_rule, affine):
    pre0 = ops.FactorizedReduce(C_pp, C, base_rule, affine) if reduction_prev else \
        ops.ReLUConvBN(C_pp, C, 1, 1, 0, base_rule, affine)
    return pre0, ops.ReLUConvBN(C_p, C, 1, 1, 0, base_rule, affine)


def _build_cells(net, C_pp, C_p, C, layers, make_cell, reduction_prev=False):
    """`layers` cells on `net` with reductions (channels doubled) at 1/3 and 2/3 depth;
    make_cell(C_pp, C_p, C, reduction, reduction_prev) builds a cell with a `multiplier`.
    Returns the output width of every cell."""
    net.cells, widths = nn.ModuleList(), []
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction:
            C *= 2
        cell = make_cell(C_pp, C_p, C, reduction, reduction_prev)
        net.cells.append(cell)
        reduction_prev = reduction
        C_pp, C_p = C_p, cell.multiplier * C
        widths.append(C_p)
    return widths


def _build_body(net, in_channels, C, layers, stem_multiplier, base_rule, mean, std, make_cell,
                stem_stride=1):
    """DARTS's CIFAR body on `net`: normalization, stem, then the cells (_build_cells)."""
    net.normalize = ops.Normalize(mean, std) if mean is not None else nn.Identity()
    C_curr = stem_multiplier * C
    net.stem = _stem(in_channels, C_curr, base_rule, stem_stride)
    return _build_cells(net, C_curr, C_curr, C, layers, make_cell)


# ----------------------------------------------------------------------------- search

class SearchCell(nn.Module):
    """DARTS's search cell (model_search.Cell): `steps` intermediate nodes, each the sum of a
    mixed edge from every earlier node; make_edge(C, stride) builds an edge (Network.make_edge)."""

    def __init__(self, steps, multiplier, C_pp, C_p, C, reduction, reduction_prev, make_edge,
                 base_rule="bp"):
        super().__init__()
        self.reduction, self.steps, self.multiplier = reduction, steps, multiplier
        self.preprocess0, self.preprocess1 = _preprocess(C_pp, C_p, C, reduction_prev,
                                                         base_rule, affine=False)
        self.edges = nn.ModuleList(make_edge(C, 2 if reduction and j < 2 else 1)
                                   for i in range(steps) for j in range(2 + i))

    def forward(self, s0, s1, weights, edge_weights=None):
        """weights: a row of mixing weights per edge; edge_weights: one factor per edge
        (PC-DARTS's normalized beta, pc_darts.py), None in DARTS."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for i in range(self.steps):
            s = sum(self.edges[offset + j](h, weights[offset + j]) *
                    (1.0 if edge_weights is None else edge_weights[offset + j])
                    for j, h in enumerate(states))
            offset += len(states)
            states.append(self.node(i, s))
        return torch.cat(states[-self.multiplier:], dim=1)

    def node(self, i, s):
        """Intermediate node i given the sum of its edges: the sum itself in DARTS."""
        return s


class Network(nn.Module):
    """DARTS's supernet (model_search.Network): stem, `layers` search cells (reductions at 1/3
    and 2/3 depth), global pooling, classifier, and alpha for the normal and the reduction cells,
    (14 edges x len(candidates)) each for 4 nodes, initialized 1e-3 * N(0, 1).

    Its variants are subclasses that override the hooks below: pc_darts.PCNetwork and
    pc_darts.EGNASNetwork (make_edge, and PC-DARTS's beta), fused.FusedNetwork (the edge class),
    darts_prime.CRBNetwork (make_cell, initial_alpha, act, prune), MergedSkipsNetwork
    (mixing_weights, genotype) and CheckpointedNetwork (forward_cell) below; harness/search.py
    joins the ones a search asks for."""

    mixed_op = ops.MixedOp                                # the mixed edge of Eq. 2

    def __init__(self, C, num_classes, layers, candidates, steps=4, multiplier=4,
                 stem_multiplier=3, in_channels=3, base_rule="bp", mean=None, std=None,
                 stem_stride=1):
        super().__init__()
        self.C, self.num_classes, self.layers = C, num_classes, layers
        self.candidates, self.steps, self.multiplier = list(candidates), steps, multiplier
        self.base_rule = base_rule
        self.config = dict(C=C, num_classes=num_classes, layers=layers, candidates=self.candidates,
                           steps=steps, multiplier=multiplier, stem_multiplier=stem_multiplier,
                           in_channels=in_channels, base_rule=base_rule, mean=mean, std=std,
                           stem_stride=stem_stride)
        for name in self.candidates:
            ops.parse_candidate(name)                     # fail early on unknown names
        widths = _build_body(self, in_channels, C, layers, stem_multiplier, base_rule, mean, std,
                             self.make_cell, stem_stride)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = RuleLinear(widths[-1], num_classes, rule=base_rule)
        self.initialize_alphas()

    def make_cell(self, C_pp, C_p, C, reduction, reduction_prev):
        return SearchCell(self.steps, self.multiplier, C_pp, C_p, C, reduction, reduction_prev,
                          self.make_edge, self.base_rule)

    def make_edge(self, C, stride):
        return self.mixed_op(C, stride, self.candidates)

    def initialize_alphas(self):
        k, n = sum(2 + i for i in range(self.steps)), len(self.candidates)
        self.alphas_normal = nn.Parameter(self.initial_alpha(k, n))
        self.alphas_reduce = nn.Parameter(self.initial_alpha(k, n))

    def initial_alpha(self, k, n):
        return 1e-3 * torch.randn(k, n)

    def arch_parameters(self):
        return [self.alphas_normal, self.alphas_reduce]

    def weights(self):
        """All parameters except the architecture's."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def act(self, alpha):
        """Mixing weights of alpha, per edge: softmax over its candidates (Eq. 2)."""
        return F.softmax(alpha, dim=-1)

    def mixing_weights(self):
        return self.act(self.alphas_normal), self.act(self.alphas_reduce)

    def edge_weights(self):
        """(normal, reduce) factors per edge: None, every edge counts alike in DARTS."""
        return None, None

    def forward(self, x, weights_normal=None, weights_reduce=None):
        """Logits; mixing weights default to act(alpha) and may be supplied externally (EG-NAS
        evaluates sampled architectures this way)."""
        if weights_normal is None or weights_reduce is None:
            wn, wr = self.mixing_weights()
            weights_normal = wn if weights_normal is None else weights_normal
            weights_reduce = wr if weights_reduce is None else weights_reduce
        en, er = self.edge_weights()
        s0 = s1 = self.stem(self.normalize(x))
        for cell in self.cells:
            w, e = (weights_reduce, er) if cell.reduction else (weights_normal, en)
            s0, s1 = s1, self.forward_cell(cell, s0, s1, w, e)
        return self.classifier(self.global_pooling(s1).flatten(1))

    def forward_cell(self, cell, *inputs):
        return cell(*inputs)

    def loss(self, x, y):
        return F.cross_entropy(self(x), y)

    def genotype(self):
        wn, wr = self.mixing_weights()
        return derive_genotype(wn.detach(), wr.detach(), self.candidates, self.steps,
                               self.multiplier)


class MergedSkipsNetwork(Network):
    """At stride 1 every skip_connect_{rule} is the same identity, so the op x rule space gives
    one operation several alpha entries. This supernet keeps only the first of them on stride-1
    edges (the others' mixing weight is 0 there), as one `skip_connect` candidate."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config["merge_identity_skips"] = True
        # masks of the dropped copies, moved with the model
        self.register_buffer("merged_normal", identity_copies(self.candidates, self.steps, False),
                             persistent=False)
        self.register_buffer("merged_reduce", identity_copies(self.candidates, self.steps, True),
                             persistent=False)

    def mixing_weights(self):
        """act(alpha) with the dropped copies' alpha at -inf: weight 0 (softmax and clamp)."""
        return (self.act(self.alphas_normal.masked_fill(self.merged_normal, float("-inf"))),
                self.act(self.alphas_reduce.masked_fill(self.merged_reduce, float("-inf"))))

    def genotype(self):
        g = super().genotype()

        def plain(edges, reduction):                      # the merged identity is one op
            return [("skip_connect" if ops.parse_candidate(n)[0] == "skip_connect" and
                     not (reduction and j < 2) else n, j) for n, j in edges]
        return g._replace(normal=plain(g.normal, False), reduce=plain(g.reduce, True))


def identity_copies(candidates, steps, reduction):
    """(edges x candidates) bool mask: True at every skip_connect_{rule} but the first on the
    edges where skip_connect is the identity (stride 1: all edges of a normal cell, the edges
    from intermediate nodes of a reduction cell)."""
    skips = [i for i, c in enumerate(candidates) if ops.parse_candidate(c)[0] == "skip_connect"]
    mask, row = torch.zeros(sum(2 + i for i in range(steps)), len(candidates), dtype=torch.bool), 0
    for i in range(steps):
        for j in range(2 + i):
            if not (reduction and j < 2):
                mask[row, skips[1:]] = True
            row += 1
    return mask


class CheckpointedNetwork(Network):
    """Activation checkpointing: each cell's activations are recomputed in backward instead of
    kept (less memory, ~1.3x time). The RNG state is restored for the recomputation, so brsf
    redraws the same feedback."""

    def forward_cell(self, cell, *inputs):
        if not torch.is_grad_enabled():
            return cell(*inputs)
        return checkpoint(cell, *inputs, use_reentrant=False, preserve_rng_state=True)


# ----------------------------------------------------------------------------- architect

def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def _grad(loss, params):
    """autograd.grad with zeros for parameters the loss does not use (e.g. alphas_normal in a
    network of reduction cells only)."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _devices(model):
    return [p.device for p in model.parameters() if p.device.type == "cuda"][:1]


class Architect:
    """The alpha step of the bilevel problem min_a L_val(w*(a), a), s.t. w* = argmin L_train
    (DARTS Eqs. 3-4). First order: grad_a L_val(w, a). Second order (unrolled=True): one
    virtual SGD step w' = w - xi grad_w L_train (Eq. 6), then
    grad_a L_val(w', a) - xi * [grad_a L_train(w+, a) - grad_a L_train(w-, a)] / (2 eps)
    with w+- = w +- eps grad_w' L_val(w', a), eps = 0.01 / ||grad_w' L_val|| (Eqs. 7-8).
    Adam on alpha: lr 3e-4, betas (0.5, 0.999), weight decay 1e-3. `regularizer()` (optional)
    is a term of alpha alone added to the alpha loss (DARTS-PRIME's proximity or ADMM term).
    `reduce(grads)` (optional) averages every gradient of a data loss over the processes of a
    distributed search (run_dir.all_average), so each rank takes the step one process would
    take on the union of the shards: the virtual step, grad_w' L_val (hence eps), both
    finite-difference gradients and grad_a are all whole-batch quantities."""

    def __init__(self, model, momentum=0.9, weight_decay=3e-4, arch_learning_rate=3e-4,
                 arch_weight_decay=1e-3, unrolled=False, regularizer=None, nesterov=False,
                 reduce=None):
        self.model, self.momentum, self.weight_decay = model, momentum, weight_decay
        self.nesterov, self.reduce = nesterov, reduce or (lambda grads: grads)
        self.unrolled, self.regularizer = unrolled, regularizer
        self.optimizer = torch.optim.Adam(model.arch_parameters(), lr=arch_learning_rate,
                                          betas=(0.5, 0.999), weight_decay=arch_weight_decay)

    def step(self, x_train, y_train, x_valid, y_valid, eta=None, network_optimizer=None):
        """One alpha update; `eta` and `network_optimizer` (for its momentum) are needed only
        for the second-order step."""
        self.optimizer.zero_grad()
        if self.unrolled:
            self._backward_step_unrolled(x_train, y_train, x_valid, y_valid, eta,
                                         network_optimizer)
        else:
            alphas = self.model.arch_parameters()
            grads = self.reduce(_grad(self.model.loss(x_valid, y_valid), alphas))
            for a, g in zip(alphas, grads):
                a.grad = g
        if self.regularizer is not None:
            alphas = self.model.arch_parameters()
            for a, g in zip(alphas, _grad(self.regularizer(), alphas)):
                a.grad = a.grad + g
        self.optimizer.step()

    def _unrolled_model(self, x, y, eta, network_optimizer):
        """A copy of the model holding the weights after one virtual SGD step, the step the
        optimizer would take: w' = w - eta * (momentum * buf + d), d = grad + wd * w (DARTS's
        heavy ball); with nesterov=True w' = w - eta * (d + momentum * (momentum * buf + d)),
        torch's Nesterov step (DARTS's code always takes the heavy-ball form)."""
        weights = self.model.weights()
        grads = self.reduce(_grad(self.model.loss(x, y), weights))
        unrolled = copy.deepcopy(self.model)
        with torch.no_grad():
            for w, g, w2 in zip(weights, grads, unrolled.weights()):
                state = network_optimizer.state.get(w, {}) if network_optimizer else {}
                buf = state.get("momentum_buffer")
                d = g + self.weight_decay * w
                new_buf = d if buf is None else self.momentum * buf + d
                step = d + self.momentum * new_buf if self.nesterov else new_buf
                w2.copy_(w - eta * step)
        return unrolled

    def _backward_step_unrolled(self, x_train, y_train, x_valid, y_valid, eta, network_optimizer):
        if eta is None:
            raise ValueError("the second-order architect step needs eta (the weights' lr)")
        unrolled = self._unrolled_model(x_train, y_train, eta, network_optimizer)
        alphas_u, weights_u = unrolled.arch_parameters(), unrolled.weights()
        grads = self.reduce(_grad(unrolled.loss(x_valid, y_valid), alphas_u + weights_u))
        d_alpha, d_w = grads[:len(alphas_u)], grads[len(alphas_u):]
        implicit = self._hessian_vector_product(d_w, x_train, y_train)
        for a, da, h in zip(self.model.arch_parameters(), d_alpha, implicit):
            a.grad = da - eta * h

    def _hessian_vector_product(self, vector, x, y, r=1e-2):
        """Finite-difference (grad_a L(w+) - grad_a L(w-)) / (2 eps) (DARTS Eq. 8). Both passes
        draw the same random numbers (brsf's feedback), so they differ only by the weights."""
        eps = r / _flat(vector).norm().clamp_min(1e-12)
        weights, alphas = self.model.weights(), self.model.arch_parameters()
        with torch.no_grad():
            for w, v in zip(weights, vector):
                w.add_(v, alpha=eps)
        with torch.random.fork_rng(devices=_devices(self.model)):
            g_pos = self.reduce(_grad(self.model.loss(x, y), alphas))
        with torch.no_grad():
            for w, v in zip(weights, vector):
                w.sub_(v, alpha=2 * eps)
        g_neg = self.reduce(_grad(self.model.loss(x, y), alphas))
        with torch.no_grad():
            for w, v in zip(weights, vector):
                w.add_(v, alpha=eps)
        return [(p - n) / (2 * eps) for p, n in zip(g_pos, g_neg)]


# ----------------------------------------------------------------------------- genotypes

def _discretize(W, candidates, steps):
    """[(edge row, candidate column, input node)] DARTS keeps: per intermediate node the 2
    incoming edges whose strongest non-`none` candidate weighs most (strongest first)."""
    W = torch.as_tensor(W).detach().cpu().double()
    none = candidates.index("none") if "none" in candidates else -1
    kept, start, n = [], 0, 2
    for _ in range(steps):
        rows = W[start:start + n].clone()
        if none >= 0:
            rows[:, none] = -float("inf")
        best = rows.max(dim=1)
        edges = sorted(range(n), key=lambda j: -best.values[j].item())[:2]
        kept += [(start + j, int(best.indices[j]), j) for j in edges]
        start += n
        n += 1
    return kept


def derive_genotype(weights_normal, weights_reduce, candidates, steps=4, multiplier=4):
    """DARTS's discretization (Sec. 2.4): for each intermediate node keep the 2 incoming
    edges whose strongest non-`none` candidate weighs most, and on each that candidate."""
    candidates = list(candidates)

    def parse(W):
        return [(candidates[c], j) for _, c, j in _discretize(W, candidates, steps)]
    concat = list(range(2 + steps - multiplier, steps + 2))
    return Genotype(parse(weights_normal), concat, parse(weights_reduce), concat)


def project(weights, candidates, steps=4):
    """Pi_S (Maile's thesis Eq. 20): the discrete architecture nearest to the mixing weights,
    as a (detached) tensor like `weights` -- 1 at every (kept edge, chosen candidate) of the
    derived cell, 0 elsewhere."""
    z = torch.zeros_like(weights).detach()
    for row, col, _ in _discretize(weights, list(candidates), steps):
        z[row, col] = 1.0
    return z


# ----------------------------------------------------------------------------- evaluation

def drop_path(x, drop_prob):
    """Zero whole samples with probability drop_prob, scale the rest by 1/(1-p)."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask


class EvalCell(nn.Module):
    """A discrete cell of a genotype; each edge is the named op with its own rule."""

    def __init__(self, genotype, C_pp, C_p, C, reduction, reduction_prev, base_rule="bp"):
        super().__init__()
        self.reduction = reduction
        self.preprocess0, self.preprocess1 = _preprocess(C_pp, C_p, C, reduction_prev,
                                                         base_rule, affine=True)
        edges = genotype.reduce if reduction else genotype.normal
        self.concat = list(genotype.reduce_concat if reduction else genotype.normal_concat)
        self.steps = len(edges) // 2
        self.multiplier = len(self.concat)
        self.indices = [j for _, j in edges]
        self.ops = nn.ModuleList(ops.make_op(name, C, 2 if reduction and j < 2 else 1)
                                 for name, j in edges)

    def forward(self, s0, s1, drop_prob):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self.steps):
            hs = []
            for k in (2 * i, 2 * i + 1):
                h = self.ops[k](states[self.indices[k]])
                if self.training and drop_prob > 0 and not isinstance(self.ops[k], ops.Identity):
                    h = drop_path(h, drop_prob)
                hs.append(h)
            states.append(hs[0] + hs[1])
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """DARTS's auxiliary classifier, placed after the 2/3-depth reduction: AuxiliaryHeadCIFAR
    (pooling stride 3), or with imagenet=True AuxiliaryHeadImageNet (stride 2 and, as in
    DARTS's code and the paper's experiments, no BN after the 2x2 convolution)."""

    def __init__(self, C, num_classes, base_rule="bp", imagenet=False):
        super().__init__()
        self.stride = 2 if imagenet else 3
        self.features = nn.Sequential(
            RuleConv2d(C, 128, 1, bias=False, rule=base_rule), nn.BatchNorm2d(128), nn.ReLU(True),
            RuleConv2d(128, 768, 2, bias=False, rule=base_rule),
            *([] if imagenet else [nn.BatchNorm2d(768)]), nn.ReLU(True))
        self.classifier = RuleLinear(768, num_classes, rule=base_rule)

    def forward(self, x):
        # DARTS: ReLU, then AvgPool(5, stride), which takes 8x8 maps (CIFAR, stride 3) and 7x7
        # maps (ImageNet at 224, stride 2) to 2x2; sizes it would not take to 2x2 pool
        # adaptively to 2x2 so that the 2x2 conv always gives 1x1
        x = F.relu(x)
        x = F.avg_pool2d(x, 5, self.stride, count_include_pad=False) if all(
            s >= 5 and (s - 5) // self.stride == 1 for s in x.shape[-2:]) else \
            F.adaptive_avg_pool2d(x, 2)
        return self.classifier(self.features(x).flatten(1))


class NetworkEval(nn.Module):
    """The standalone network of a genotype (DARTS NetworkCIFAR), with auxiliary head and
    drop-path; each edge trains with the rule its genotype names."""

    def __init__(self, C, num_classes, layers, genotype, auxiliary, in_channels=3,
                 stem_multiplier=3, base_rule="bp", mean=None, std=None, stem_stride=1):
        super().__init__()
        check_genotype(genotype)
        self.config = dict(C=C, num_classes=num_classes, layers=layers,
                           genotype=genotype._asdict(), auxiliary=auxiliary,
                           in_channels=in_channels, stem_multiplier=stem_multiplier,
                           base_rule=base_rule, mean=mean, std=std, stem_stride=stem_stride)
        self.layers, self.auxiliary, self.drop_path_prob = layers, auxiliary, 0.0
        self.logits_aux = None
        self.aux_pos = 2 * layers // 3
        widths = _build_body(self, in_channels, C, layers, stem_multiplier, base_rule, mean, std,
                             _eval_cell(genotype, base_rule), stem_stride)
        if auxiliary:
            self.auxiliary_head = AuxiliaryHead(widths[self.aux_pos], num_classes, base_rule)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = RuleLinear(widths[-1], num_classes, rule=base_rule)

    def stems(self, x):
        """(s0, s1): the two inputs of the first cell."""
        s = self.stem(x)
        return s, s

    def forward(self, x):
        """Logits. In training mode with the auxiliary head, its logits are left in
        `self.logits_aux` (None otherwise), so the model is a plain classifier for attacks."""
        self.logits_aux = None
        s0, s1 = self.stems(self.normalize(x))
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_pos and self.auxiliary and self.training:
                self.logits_aux = self.auxiliary_head(s1)
        return self.classifier(self.global_pooling(s1).flatten(1))


def _eval_cell(genotype, base_rule):
    return lambda C_pp, C_p, C, red, red_prev: EvalCell(genotype, C_pp, C_p, C, red, red_prev,
                                                        base_rule)


class NetworkImageNet(NetworkEval):
    """DARTS's NetworkImageNet (model.py; the "mobile setting" of Sec. 3.4): for 224x224
    images, stem0 = conv 3x3 stride 2 to C/2, BN, ReLU, conv 3x3 stride 2 to C, BN; stem1 =
    ReLU, conv 3x3 stride 2, BN (224 -> 28); then NetworkEval's cells, the first reading a
    reduced input (FactorizedReduce), reductions at 1/3 and 2/3 depth (28 -> 14 -> 7), the
    ImageNet auxiliary head after cell 2*layers//3 and global average pooling (DARTS's
    AvgPool2d(7) on the 7x7 maps; adaptive, so that smaller crops work too). Each edge trains
    with its genotype's rule; stems, preprocessing and heads with `base_rule`."""

    def __init__(self, C, num_classes, layers, genotype, auxiliary, base_rule="bp", mean=None,
                 std=None):
        nn.Module.__init__(self)
        check_genotype(genotype)
        self.config = dict(C=C, num_classes=num_classes, layers=layers,
                           genotype=genotype._asdict(), auxiliary=auxiliary, base_rule=base_rule,
                           mean=mean, std=std)
        self.layers, self.auxiliary, self.drop_path_prob = layers, auxiliary, 0.0
        self.logits_aux = None
        self.aux_pos = 2 * layers // 3
        self.normalize = ops.Normalize(mean, std) if mean is not None else nn.Identity()
        self.stem0 = nn.Sequential(*_stem(3, C // 2, base_rule, stride=2), nn.ReLU(),
                                   *_stem(C // 2, C, base_rule, stride=2))
        self.stem1 = nn.Sequential(nn.ReLU(), *_stem(C, C, base_rule, stride=2))
        widths = _build_cells(self, C, C, C, layers, _eval_cell(genotype, base_rule),
                              reduction_prev=True)
        if auxiliary:
            self.auxiliary_head = AuxiliaryHead(widths[self.aux_pos], num_classes, base_rule,
                                                imagenet=True)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = RuleLinear(widths[-1], num_classes, rule=base_rule)

    def stems(self, x):
        s0 = self.stem0(x)
        return s0, self.stem1(s0)


if __name__ == "__main__":
    # a tiny BioNAS-DARTS search on random 8x8 images: weight and first-order alpha steps
    torch.manual_seed(0)
    cands = ops.search_space(rules=("fa", "usf"), skip_rules=("usf",))
    net = Network(4, 3, 3, cands, steps=2, multiplier=2, in_channels=1)
    print(f"supernet: {len(net.cells)} cells, {len(net.cells[0].edges)} edges per cell, "
          f"{len(cands)} candidates per edge, {sum(p.numel() for p in net.weights())} weights, "
          f"alpha {tuple(net.alphas_normal.shape)} x 2")
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 3, (16,))
    xv, yv = torch.rand(16, 1, 8, 8), torch.randint(0, 3, (16,))
    optimizer = torch.optim.SGD(net.weights(), 0.05, momentum=0.9, weight_decay=3e-4)
    architect = Architect(net, arch_learning_rate=3e-2)
    for step in range(5):
        architect.step(x, y, xv, yv)                  # alpha on the validation half
        optimizer.zero_grad()
        loss = net.loss(x, y)                          # then the weights on the training half
        loss.backward()
        nn.utils.clip_grad_norm_(net.weights(), 5.0)
        optimizer.step()
        print(f"step {step + 1}: train loss {loss.item():.4f}, "
              f"val loss {net.loss(xv, yv).item():.4f}")
    wn, _ = net.mixing_weights()
    print("softmax(alpha) of the normal cell's first edge:",
          ", ".join(f"{c} {w:.3f}" for c, w in zip(cands, wn[0].tolist())))
    print("derived genotype:", net.genotype())
