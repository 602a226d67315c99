"""The fused supernet: the rule variants of one operation computed as one operation.

In the op x rule space (BioNAS Sec. 3.1) the R rule variants of an operation on an edge read the
same input, so they can run as one operation over R * C channels (rule-major blocks), each block
with its own rule's feedback (rules.MultiRuleConv2d). This is the same mathematics as R separate
candidates -- same outputs, weight and alpha gradients, brsf draws and genotype -- with fewer,
larger kernels (faster on the CPU).

    FusedDilConv, FusedSepConv, FusedFactorizedReduce   R rule variants of a DARTS operation
    FusedMixedOp, FusedPartialMixedOp                   ops.MixedOp / ops.PartialMixedOp, fused
    FusedNetwork                                        darts.Network with fused edges
    copy_unfused                                        a MixedOp's weights into a FusedMixedOp
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

import darts
import ops
from rules import MultiRuleConv2d

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


class FusedMixedOp(ops.MixedOp):
    """ops.MixedOp with the rule variants of each operation fused: the same function of x and
    the mixing weights as MixedOp over the same candidates. Candidates that are alone in their
    operation, Hebbian, pools and `none` stay separate modules; skip_connect's identities at
    stride 1 are one multiplication by their summed weights."""

    def __init__(self, C, stride, candidates, pool_bn=True):
        nn.Module.__init__(self)
        self.candidates, self.stride = list(candidates), stride
        groups = {}
        for i, name in enumerate(self.candidates):
            op, rule = ops.parse_candidate(name)
            if rule in FUSABLE:
                groups.setdefault(op, []).append(i)
        self.units, self.ops, self.fused = [], nn.ModuleList(), nn.ModuleDict()
        for i, name in enumerate(self.candidates):      # units in candidate order (brsf draws)
            op, rule = ops.parse_candidate(name)
            members = groups.get(op, [])
            if len(members) > 1 and rule in FUSABLE:
                if i == members[0]:
                    if op == "skip_connect" and stride == 1:
                        self.units.append(("identity", members))
                    else:
                        rules = [ops.parse_candidate(self.candidates[j])[1] for j in members]
                        self.fused[op] = make_fused(op, rules, C, stride)
                        self.units.append((op, members))
                self.ops.append(nn.Identity())          # placeholder: keeps ops[i] indexing
                continue
            m = ops.make_op(name, C, stride, affine=False)
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
        # one matrix product of the pixels' (R * C) rows with kron(w, I_C), (R * C, C): y is
        # read once (an elementwise product then a sum over R is 2x slower on the CPU)
        M = torch.kron(w.view(R, 1), torch.eye(c // R, dtype=y.dtype, device=y.device))
        z = y.permute(0, 2, 3, 1).reshape(n * h * wd, c)           # a view of NHWC memory
        return (z @ M).view(n, h, wd, c // R).permute(0, 3, 1, 2)
    return torch.einsum("nrchw,r->nchw", y.view(n, R, c // R, h, wd), w)


class FusedPartialMixedOp(ops.PartialMixedOp, FusedMixedOp):
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


class FusedNetwork(darts.Network):
    """darts.Network whose edges fuse the rule variants of each operation (FusedMixedOp; with
    pc_darts's partial channels FusedPartialMixedOp): the same function, gradients and genotype
    as the plain supernet with the same weights (copy_unfused). CRB's pruning removes single
    candidates, so it does not combine with fused edges."""

    mixed_op, partial_op = FusedMixedOp, FusedPartialMixedOp

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config["fused"] = True


def copy_unfused_network(fused, plain):
    """Load every weight, feedback buffer, BN statistic and alpha of `plain` into `fused` (a
    FusedNetwork of the same configuration)."""
    fused.load_state_dict({k: v for k, v in plain.state_dict().items() if ".edges." not in k},
                          strict=False)
    for cp, cf in zip(plain.cells, fused.cells):
        for ep, ef in zip(cp.edges, cf.edges):
            copy_unfused(ef, ep)


if __name__ == "__main__":
    # the plain and the fused supernet with the same weights: same logits and alpha gradients
    torch.manual_seed(0)
    cands = ops.search_space()
    plain = darts.Network(4, 10, 3, cands, steps=2, multiplier=2, in_channels=1)
    fused = FusedNetwork(4, 10, 3, cands, steps=2, multiplier=2, in_channels=1)
    copy_unfused_network(fused, plain)
    x, y = torch.rand(8, 1, 16, 16), torch.randint(0, 10, (8,))
    out = []
    for net in (plain, fused):
        torch.manual_seed(1)                               # brsf draws the same feedback in both
        loss = net.loss(x, y)
        out.append((loss.item(), torch.autograd.grad(loss, net.arch_parameters())))
    edge_p, edge_f = plain.cells[0].edges[0], fused.cells[0].edges[0]
    print(f"{len(cands)} candidates per edge: {len(edge_p.active)} computations in the plain "
          f"supernet (none skipped), {len(edge_f.units)} in the fused one")
    print(f"loss plain {out[0][0]:.6f}  fused {out[1][0]:.6f}")
    err = max((a - b).abs().max().item() for a, b in zip(out[0][1], out[1][1]))
    print(f"alpha gradients: largest difference {err:.1e}")
    print(f"genotype plain == fused: {plain.genotype() == fused.genotype()}")
