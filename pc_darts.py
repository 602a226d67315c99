"""Partial-channel supernets: PC-DARTS's and EG-NAS's, as subclasses of darts.Network.

Xu et al., "PC-DARTS: Partial Channel Connections for Memory-Efficient Architecture Search",
ICLR 2020: each mixed edge computes its candidates on 1/K of the channels (Sec. 3.1,
ops.PartialMixedOp), and an edge normalization beta weighs the edges into each node (Sec. 3.2),
so the derived cell depends less on which channels were sampled. Cai et al., "EG-NAS" (AAAI
2024), search on the partial-channel supernet of their model_search.py: the same partial
channels and channel shuffle, but no beta and no BatchNorm after the pools.

    PartialChannelNetwork   darts.Network whose edges are ops.PartialMixedOp (1/K channels)
    PCNetwork               + BN after the pools, + edge normalization beta (PC-DARTS)
    EGNASNetwork            no BN after the pools, no beta (EG-NAS)
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

import darts
import ops


class PartialChannelNetwork(darts.Network):
    """darts.Network with partial-channel edges: 1/partial_channels of each edge's channels go
    through its candidates, the rest bypass them, then the channels are shuffled."""

    partial_op = ops.PartialMixedOp
    pool_bn = True                                        # BN after the pools, as in DARTS
    supernet = None                                       # the name in model.config

    def __init__(self, C, num_classes, layers, candidates, *args, partial_channels=4, **kwargs):
        self.partial_channels = partial_channels          # read by make_edge while building
        super().__init__(C, num_classes, layers, candidates, *args, **kwargs)
        self.config.update(partial_channels=partial_channels, supernet=self.supernet)

    def make_edge(self, C, stride):
        return self.partial_op(C, stride, self.candidates, self.partial_channels,
                               pool_bn=self.pool_bn)


class PCNetwork(PartialChannelNetwork):
    """PC-DARTS's supernet: partial channels and edge normalization, one beta per edge
    (1e-3 N(0, 1)), softmax over the edges into each node, weighing each edge's output; the
    derived cell weighs each edge's candidates by it too."""

    supernet = "pc-darts"

    def initialize_alphas(self):
        super().initialize_alphas()
        k = self.alphas_normal.shape[0]
        self.betas_normal = nn.Parameter(1e-3 * torch.randn(k))
        self.betas_reduce = nn.Parameter(1e-3 * torch.randn(k))

    def arch_parameters(self):
        return super().arch_parameters() + [self.betas_normal, self.betas_reduce]

    def edge_weights(self):
        """Per node, the softmax of beta over its incoming edges."""
        def norm(beta):
            out, start = [], 0
            for i in range(self.steps):
                out.append(F.softmax(beta[start:start + 2 + i], dim=-1))
                start += 2 + i
            return torch.cat(out)
        return norm(self.betas_normal), norm(self.betas_reduce)

    def genotype(self):
        wn, wr = self.mixing_weights()
        en, er = self.edge_weights()
        return darts.derive_genotype((wn * en[:, None]).detach(), (wr * er[:, None]).detach(),
                                     self.candidates, self.steps, self.multiplier)


class EGNASNetwork(PartialChannelNetwork):
    """EG-NAS's supernet: partial channels with the channel shuffle, no beta, no BatchNorm
    after the pools."""

    supernet = "eg-nas"
    pool_bn = False


if __name__ == "__main__":
    # the same tiny space in DARTS's, PC-DARTS's and EG-NAS's supernets (K = 4 channel groups)
    cands = ops.search_space(rules=("fa", "usf"), skip_rules=("usf",))
    x, y = torch.rand(8, 1, 16, 16), torch.randint(0, 10, (8,))
    for name, make in (("DARTS", lambda: darts.Network(8, 10, 3, cands, steps=2, multiplier=2,
                                                       in_channels=1)),
                       ("PC-DARTS", lambda: PCNetwork(8, 10, 3, cands, steps=2, multiplier=2,
                                                      in_channels=1, partial_channels=4)),
                       ("EG-NAS", lambda: EGNASNetwork(8, 10, 3, cands, steps=2, multiplier=2,
                                                       in_channels=1, partial_channels=4))):
        torch.manual_seed(0)
        net = make()
        saved = [0]

        def pack(t):
            saved[0] += t.numel() * t.element_size()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = net.loss(x, y)
        print(f"{name:9s} {sum(p.numel() for p in net.weights()):6d} weights, "
              f"{len(net.arch_parameters())} architecture tensors, loss {loss.item():.4f}, "
              f"{saved[0] / 2 ** 20:.2f} MiB kept for backward")
    net = PCNetwork(8, 10, 3, cands, steps=2, multiplier=2, in_channels=1, partial_channels=4)
    en, _ = net.edge_weights()
    print(f"PC-DARTS edge weights of the normal cell (softmax of beta per node): "
          f"{en.detach().numpy().round(3)}")
    print("PC-DARTS derived genotype:", net.genotype())
