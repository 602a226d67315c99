"""DARTS operations, each built with a learning rule, and the op x rule mixed edge.

BioNAS (Hamzaoui & Baghdadi, Sec. 3.1) pairs every DARTS operation (Liu et al. 2019) with a
bio-inspired learning rule: a candidate is named "{op}_{rule}" (sep_conv_3x3_usf,
skip_connect_frsf, ...); parameter-free ops keep their plain names (none, max_pool_3x3,
avg_pool_3x3). A backprop op keeps its original DARTS name (sep_conv_3x3 == sep_conv_3x3 with
rule bp), so original DARTS genotypes load unchanged.

Every convolution inside a ruled op -- FactorizedReduce's two 1x1 convolutions included -- is
a rules.RuleConv2d with the op's rule.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from rules import RULES, MultiRuleConv2d, RuleConv2d, check_rule

PLAIN_OPS = ("none", "max_pool_3x3", "avg_pool_3x3")
RULED_OPS = ("skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
DARTS_OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
             "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")


class Normalize(nn.Module):
    """(x - mean) / std per channel: a network's first module, so it takes [0, 1] pixels."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class ReLUConvBN(nn.Module):
    """ReLU -> conv -> BN (DARTS's preprocessing block)."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, rule="bp", affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            RuleConv2d(C_in, C_out, kernel_size, stride, padding, bias=False, rule=rule),
            nn.BatchNorm2d(C_out, affine=affine))

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    """ReLU -> dilated depthwise conv -> pointwise conv -> BN."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, rule, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            RuleConv2d(C_in, C_in, kernel_size, stride, padding, dilation, groups=C_in,
                       bias=False, rule=rule),
            RuleConv2d(C_in, C_out, 1, bias=False, rule=rule),
            nn.BatchNorm2d(C_out, affine=affine))

    def forward(self, x):
        return self.op(x)


class SepConv(nn.Module):
    """Separable convolution: (ReLU -> depthwise -> pointwise -> BN) twice."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, rule, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            DilConv(C_in, C_in, kernel_size, stride, padding, 1, rule, affine),
            DilConv(C_in, C_out, kernel_size, 1, padding, 1, rule, affine))

    def forward(self, x):
        return self.op(x)


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    """The `none` op: zeros with the output shape."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x.mul(0.0) if self.stride == 1 else x[:, :, ::self.stride, ::self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """skip_connect at stride 2: two offset 1x1 stride-2 convolutions, concatenated, then BN.
    Both convolutions carry the op's rule."""

    def __init__(self, C_in, C_out, rule="bp", affine=True):
        super().__init__()
        assert C_out % 2 == 0, "FactorizedReduce needs an even number of output channels"
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = RuleConv2d(C_in, C_out // 2, 1, stride=2, bias=False, rule=rule)
        self.conv_2 = RuleConv2d(C_in, C_out // 2, 1, stride=2, bias=False, rule=rule)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        if x.shape[-1] % 2 or x.shape[-2] % 2:          # odd sizes: pad so both halves match
            x = nn.functional.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


def parse_candidate(name):
    """'sep_conv_3x3_usf' -> ('sep_conv_3x3', 'usf'); 'sep_conv_3x3' -> ('sep_conv_3x3', 'bp');
    'max_pool_3x3' -> ('max_pool_3x3', None). Unknown names raise ValueError naming the valid ones."""
    if name in PLAIN_OPS:
        return name, None
    if name in RULED_OPS:
        return name, "bp"
    op, _, rule = name.rpartition("_")
    if op in RULED_OPS and rule in RULES:
        return op, rule
    raise ValueError(f"unknown operation {name!r}: expected one of {', '.join(PLAIN_OPS)} or "
                     f"'{{op}}_{{rule}}' with op in {', '.join(RULED_OPS)} and rule in "
                     f"{', '.join(RULES)}")


def candidate_name(op, rule):
    """The inverse of parse_candidate."""
    return op if rule in (None, "bp") else f"{op}_{rule}"


def make_op(name, C, stride, affine=True):
    """Build candidate `name` on C channels at `stride` (DARTS's OPS table, with rules)."""
    op, rule = parse_candidate(name)
    if op == "none":
        return Zero(stride)
    if op == "max_pool_3x3":
        return nn.MaxPool2d(3, stride=stride, padding=1)
    if op == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    if op == "skip_connect":
        return Identity() if stride == 1 else FactorizedReduce(C, C, rule, affine)
    if op == "sep_conv_3x3":
        return SepConv(C, C, 3, stride, 1, rule, affine)
    if op == "sep_conv_5x5":
        return SepConv(C, C, 5, stride, 2, rule, affine)
    if op == "dil_conv_3x3":
        return DilConv(C, C, 3, stride, 2, 2, rule, affine)
    return DilConv(C, C, 5, stride, 4, 2, rule, affine)  # dil_conv_5x5


def search_space(rules=("fa", "usf", "brsf", "frsf"), skip_rules=("usf", "brsf", "frsf"),
                 zero=True):
    """Candidate list of BioNAS Sec. 3.1: every conv op in each of `rules`, skip_connect in each
    of `skip_rules`, the two pools, and `none` when `zero` (DARTS) -- 22 candidates by default,
    21 without `none` (BioNAS-EG), the 8 DARTS ops with rules=skip_rules=("bp",)."""
    for r in tuple(rules) + tuple(skip_rules):
        check_rule(r)
    cands = ["none"] if zero else []
    cands += ["max_pool_3x3", "avg_pool_3x3"]
    cands += [candidate_name("skip_connect", r) for r in skip_rules]
    for op in ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"):
        cands += [candidate_name(op, r) for r in rules]
    return cands


def channel_shuffle(x, groups):
    """PC-DARTS's shuffle: interleave the channels of `groups` equal groups."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class MixedOp(nn.Module):
    """The mixed edge o(x) = sum_o softmax(alpha)_o * o(x) (BioNAS Eq. 7 / DARTS Eq. 2).
    The caller passes the mixing weights (softmax of alpha, or any other vector). As in DARTS's
    model_search.py the candidates are built without affine BatchNorm parameters and the
    pools are followed by a BatchNorm (pool_bn=False: EG-NAS's supernet, which has none)."""

    def __init__(self, C, stride, candidates, pool_bn=True):
        super().__init__()
        self.candidates, self.stride = list(candidates), stride
        self.ops = nn.ModuleList()
        for name in self.candidates:
            op = make_op(name, C, stride, affine=False)
            if pool_bn and "pool" in name:
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            self.ops.append(op)
        # `none` contributes exactly 0 to the sum and to every gradient: skip computing it
        # (Network.prune also removes candidates here)
        self.active = [i for i, n in enumerate(self.candidates) if n != "none"]

    def forward(self, x, weights):
        if not self.active:                               # every candidate pruned: a zero edge
            return x[:, :, ::self.stride, ::self.stride].mul(0.0)
        return sum(weights[i] * self.ops[i](x) for i in self.active)


class PartialMixedOp(MixedOp):
    """Partial channels (PC-DARTS, Xu et al. 2020, Sec. 3.1; also EG-NAS's supernet): only the
    first C/k channels go through the candidates; the other channels bypass them (2x2
    max-pooled at stride 2), the two parts are concatenated and the channels shuffled in k
    groups."""

    def __init__(self, C, stride, candidates, k, pool_bn=True):
        if C % k:
            raise ValueError(f"partial channels: {C} channels do not split into {k} groups")
        super().__init__(C // k, stride, candidates, pool_bn)
        self.k = k

    def forward(self, x, weights):
        c = x.shape[1] // self.k
        out = super().forward(x[:, :c], weights)
        rest = x[:, c:] if self.stride == 1 else F.max_pool2d(x[:, c:], 2, 2, ceil_mode=True)
        return channel_shuffle(torch.cat([out, rest], dim=1), self.k)


# ----------------------------------------------------------------------------------------
# Fused rule variants (darts.Network(fused=True)): the R rule variants of one operation read
# the same input, so they run as one operation over R * C channels (rule-major blocks), with
# rules.MultiRuleConv2d's per-block feedback -- the same mathematics as R separate candidates
# ----------------------------------------------------------------------------------------

FUSABLE = ("bp", "fa", "usf", "brsf", "frsf")


class FusedDilConv(nn.Module):
    """R DilConvs (ReLU -> depthwise -> pointwise -> BN) of one input x as one: the input
    repeated R times (repeat=True) or already R blocks, a depthwise conv over R * C_in
    channels, a pointwise conv in R groups, BN over R * C_out channels."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, rules, repeat=True):
        super().__init__()
        R = len(rules)
        self.R, self.repeat = R, repeat
        self.depthwise = MultiRuleConv2d(R * C_in, R * C_in, kernel_size, rules, stride, padding,
                                         dilation, groups=R * C_in)
        self.pointwise = MultiRuleConv2d(R * C_in, R * C_out, 1, rules, groups=R)
        self.bn = nn.BatchNorm2d(R * C_out, affine=False)

    def forward(self, x):
        x = F.relu(x)
        if self.repeat:
            x = torch.cat([x] * self.R, 1)              # (repeat() would drop channels_last)
        return self.bn(self.pointwise(self.depthwise(x)))


class FusedSepConv(nn.Module):
    """R SepConvs as two FusedDilConvs (the second reads the first's R blocks)."""

    def __init__(self, C, kernel_size, stride, padding, rules):
        super().__init__()
        self.op = nn.Sequential(FusedDilConv(C, C, kernel_size, stride, padding, 1, rules),
                                FusedDilConv(C, C, kernel_size, 1, padding, 1, rules, False))

    def forward(self, x):
        return self.op(x)


class FusedFactorizedReduce(nn.Module):
    """R FactorizedReduces: each 1x1 stride-2 convolution of the R rules is one conv with R
    blocks of C/2 outputs; their halves are interleaved per rule before one BN over R * C."""

    def __init__(self, C_in, C_out, rules):
        super().__init__()
        self.R, self.half = len(rules), C_out // 2
        self.conv_1 = MultiRuleConv2d(C_in, self.R * self.half, 1, rules, stride=2)
        self.conv_2 = MultiRuleConv2d(C_in, self.R * self.half, 1, rules, stride=2)
        self.bn = nn.BatchNorm2d(self.R * C_out, affine=False)

    def forward(self, x):
        x = F.relu(x)
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
        a, b = self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])
        n, _, h, w = a.shape
        y = torch.cat([a.view(n, self.R, self.half, h, w), b.view(n, self.R, self.half, h, w)], 2)
        return self.bn(y.reshape(n, 2 * self.R * self.half, h, w))


def make_fused(op, rules, C, stride):
    """The R = len(rules) variants of `op` as one module giving (N, R * C, H', W')."""
    if op == "skip_connect":
        return FusedFactorizedReduce(C, C, rules)             # stride 2; stride 1: identities
    k, dil = int(op[-1]), 2 if op.startswith("dil") else 1
    if op.startswith("sep"):
        return FusedSepConv(C, k, stride, k // 2, rules)
    return FusedDilConv(C, C, k, stride, dil * (k // 2), dil, rules)


class FusedMixedOp(MixedOp):
    """MixedOp with the rule variants of each operation fused (darts.Network(fused=True)): the
    same function of x and the mixing weights as MixedOp over the same candidates. Candidates
    that are alone in their operation, Hebbian, pools and `none` stay separate modules;
    skip_connect's identities at stride 1 are one multiplication by their summed weights."""

    def __init__(self, C, stride, candidates, pool_bn=True):
        nn.Module.__init__(self)
        self.candidates, self.stride = list(candidates), stride
        groups = {}
        for i, name in enumerate(self.candidates):
            op, rule = parse_candidate(name)
            if rule in FUSABLE:
                groups.setdefault(op, []).append(i)
        self.units, self.ops, self.fused = [], nn.ModuleList(), nn.ModuleDict()
        for i, name in enumerate(self.candidates):      # units in candidate order (brsf draws)
            op, rule = parse_candidate(name)
            members = groups.get(op, [])
            if len(members) > 1 and rule in FUSABLE:
                if i == members[0]:
                    if op == "skip_connect" and stride == 1:
                        self.units.append(("identity", members))
                    else:
                        self.fused[op] = make_fused(op, [parse_candidate(self.candidates[j])[1]
                                                         for j in members], C, stride)
                        self.units.append((op, members))
                self.ops.append(nn.Identity())          # placeholder: keeps ops[i] indexing
                continue
            m = make_op(name, C, stride, affine=False)
            if pool_bn and "pool" in name:
                m = nn.Sequential(m, nn.BatchNorm2d(C, affine=False))
            self.ops.append(m)
            if name != "none":
                self.units.append(("op", [i]))
        self.active = [i for i, n in enumerate(self.candidates) if n != "none"]

    def forward(self, x, weights):
        out = 0
        for kind, idx in self.units:
            if kind == "op":
                out = out + weights[idx[0]] * self.ops[idx[0]](x)
            elif kind == "identity":
                out = out + weights[idx].sum() * x
            else:
                out = out + rule_sum(self.fused[kind](x), weights[idx])
        return out


def rule_sum(y, w):
    """sum_r w_r * block r of y (N, R*C, H, W), in y's memory format (channels_last stays so)."""
    n, c, h, wd = y.shape
    R = len(w)
    w = w.to(y.dtype)
    if y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous():
        z = y.permute(0, 2, 3, 1).reshape(n, h, wd, R, c // R)     # a view of NHWC memory
        return (z * w.view(R, 1)).sum(3).permute(0, 3, 1, 2)
    return torch.einsum("nrchw,r->nchw", y.view(n, R, c // R, h, wd), w)


class FusedPartialMixedOp(PartialMixedOp, FusedMixedOp):
    """PartialMixedOp over a FusedMixedOp's candidates."""


@torch.no_grad()
def copy_unfused(fused, mixed):
    """Load the weights, feedback buffers and BatchNorm statistics of a MixedOp into the
    FusedMixedOp over the same candidates (block r of a fused layer = the r-th member's)."""
    def blocks(dst, srcs):
        for name in ("weight", "weight_backward", "running_mean", "running_var"):
            if getattr(dst, name, None) is not None:
                getattr(dst, name).copy_(torch.cat([getattr(s, name) for s in srcs]))
        if hasattr(dst, "num_batches_tracked"):
            dst.num_batches_tracked.copy_(srcs[0].num_batches_tracked)

    def dil(dst, srcs):                                    # FusedDilConv <- DilConvs
        blocks(dst.depthwise, [s.op[1] for s in srcs])
        blocks(dst.pointwise, [s.op[2] for s in srcs])
        blocks(dst.bn, [s.op[3] for s in srcs])
    for kind, idx in fused.units:
        srcs = [mixed.ops[i] for i in idx]
        if kind == "op":
            fused.ops[idx[0]].load_state_dict(srcs[0].state_dict())
        elif kind == "skip_connect":
            blocks(fused.fused[kind].conv_1, [s.conv_1 for s in srcs])
            blocks(fused.fused[kind].conv_2, [s.conv_2 for s in srcs])
            blocks(fused.fused[kind].bn, [s.bn for s in srcs])
        elif kind.startswith("sep"):
            for j in range(2):
                dil(fused.fused[kind].op[j], [s.op[j] for s in srcs])
        elif kind != "identity":
            dil(fused.fused[kind], srcs)
