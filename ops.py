"""DARTS operations, each built with a learning rule, and the op x rule mixed edge.

BioNAS (Hamzaoui & Baghdadi, Sec. 3.1) pairs every DARTS operation (Liu et al. 2019) with a
bio-inspired learning rule: a candidate is named "{op}_{rule}" (sep_conv_3x3_usf,
skip_connect_frsf, ...); parameter-free ops keep their plain names (none, max_pool_3x3,
avg_pool_3x3). A backprop op keeps its original DARTS name (sep_conv_3x3 == sep_conv_3x3 with
rule bp), so original DARTS genotypes load unchanged.

Every convolution inside a ruled op -- FactorizedReduce's two 1x1 convolutions included -- is
a rules.RuleConv2d with the op's rule.

    ReLUConvBN, DilConv, SepConv, FactorizedReduce, Identity, Zero   DARTS's operations
    parse_candidate, make_op, search_space                          the op x rule candidates
    MixedOp, PartialMixedOp       the mixed edge (DARTS) and its partial-channel sibling (PC-DARTS)
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from rules import RULES, RuleConv2d, check_rule

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
    'max_pool_3x3' -> ('max_pool_3x3', None). Unknown names raise ValueError naming the valid
    ones."""
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
        # (CRB's prune, darts_prime.CRBNetwork, also removes candidates here)
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


if __name__ == "__main__":
    cands = search_space()
    print(f"BioNAS-DARTS search space: {len(cands)} (operation, rule) candidates")
    x = torch.rand(2, 8, 16, 16)
    for name in cands:
        op = make_op(name, 8, stride=2)
        n = sum(p.numel() for p in op.parameters())
        print(f"  {name:20s} stride 2: {tuple(x.shape)} -> {tuple(op(x).shape)}, {n} weights")
    torch.manual_seed(0)
    weights = F.softmax(1e-3 * torch.randn(len(cands)), dim=-1)     # DARTS's initial alpha
    mixed, partial = MixedOp(8, 1, cands), PartialMixedOp(8, 1, cands, k=4)
    print(f"MixedOp: sum of {len(mixed.active)} candidates (none skipped) -> "
          f"{tuple(mixed(x, weights).shape)}, {sum(p.numel() for p in mixed.parameters())} weights")
    print(f"PartialMixedOp (k 4): 2 of 8 channels through the candidates -> "
          f"{tuple(partial(x, weights).shape)}, {sum(p.numel() for p in partial.parameters())} "
          f"weights")
