"""CIFAR ResNets (He et al. 2016, Sec. 4.2) whose every convolution and the classifier train
with one learning rule: the single-rule baselines of BioNAS Table 1 and Table 2.

    depth = 6n + 2: a 3x3 conv with 16 channels, three stages of n basic blocks with 16, 32, 64
    channels (the first block of stages 2 and 3 has stride 2), global average pooling, a
    linear classifier. ResNet-20: n = 3 (0.27M parameters), ResNet-56: n = 9 (0.85M).

Shortcuts are He et al.'s option A (identity; where the shape changes, subsample by 2 and pad
the new channels with zeros), which has no parameters and is what gives those counts. As in
the BioNAS baselines (Sanfiz & Akrout's Biotorch benchmark), weights start Xavier-uniform and
the rule applies to every layer. The first module normalizes with the data set's mean and std,
so the network takes [0, 1] images (attacks work in that space).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from rules import RuleConv2d, RuleLinear, check_rule


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the option-A shortcut, then ReLU."""

    def __init__(self, c_in, c_out, stride, rule):
        super().__init__()
        self.conv1 = RuleConv2d(c_in, c_out, 3, stride, 1, bias=False, rule=rule, init="xavier")
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = RuleConv2d(c_out, c_out, 3, 1, 1, bias=False, rule=rule, init="xavier")
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride, self.pad = stride, c_out - c_in

    def shortcut(self, x):
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2 trained with `rule` everywhere (He et al. 2016, Sec. 4.2)."""

    def __init__(self, depth=20, num_classes=10, rule="bp", in_channels=3, mean=None, std=None):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has depth 6n+2 (20, 32, 44, 56, 110), not {depth}")
        check_rule(rule)
        n = (depth - 2) // 6
        self.config = dict(depth=depth, num_classes=num_classes, rule=rule,
                           in_channels=in_channels, mean=mean, std=std)
        mean = mean if mean is not None else (0.0,) * in_channels
        std = std if std is not None else (1.0,) * in_channels
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.conv1 = RuleConv2d(in_channels, 16, 3, 1, 1, bias=False, rule=rule, init="xavier")
        self.bn1 = nn.BatchNorm2d(16)
        blocks, c_in = [], 16
        for stage, c_out in enumerate((16, 32, 64)):
            for i in range(n):
                blocks.append(BasicBlock(c_in, c_out, 2 if stage > 0 and i == 0 else 1, rule))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = RuleLinear(64, num_classes, rule=rule, init="xavier")
        for m in self.modules():
            if isinstance(m, (RuleConv2d, RuleLinear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.logits_aux, self.drop_path_prob = None, 0.0      # the retraining loop's interface

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1((x - self.mean) / self.std)))
        x = self.blocks(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def resnet20(**kw):
    """ResNet-20 (0.27M parameters with 10 classes)."""
    return ResNet(20, **kw)


def resnet56(**kw):
    """ResNet-56 (0.85M parameters with 10 classes)."""
    return ResNet(56, **kw)


if __name__ == "__main__":
    # Demo: the parameter counts of He et al.'s Table 6, and a ResNet-20 whose 20 weighted layers
    # (19 convolutions and the classifier) all train by feedback alignment: one forward and backward.
    from rules import layer_rules
    torch.manual_seed(0)
    for depth in (20, 32, 44, 56, 110):
        print(f"ResNet-{depth}: {sum(p.numel() for p in ResNet(depth).parameters()) / 1e6:.2f}M parameters")
    net = resnet20(rule="fa")
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    logits = net(x)
    F.cross_entropy(logits, y).backward()
    per_layer = layer_rules(net)
    print(f"ResNet-20: {len(per_layer)} layers trained by {set(per_layer.values())}; logits {tuple(logits.shape)}; "
          f"grad of the first convolution's weight, norm {net.conv1.weight.grad.norm():.3f}")
