"""Convolutions computed by other kernels on the CPU: the same function, faster or safe.

oneDNN, PyTorch's CPU convolution library, is slow or faulty on some of DARTS's convolutions.
Each route here computes exactly the convolution (or its gradients) it replaces, and the rule
layers of rules.py and backprop's alike take them (docs/rules.md, Implementation and Speed):

    pointwise_backward   a contiguous 1x1 convolution's gradients as matrix products
    atrous_conv          a dilated convolution as an undilated one over stacked sub-grids
    routed_conv          strided 1x1 as stride 1 on every s-th pixel; dilated via atrous_conv
    unrouted             whether routed_conv would convolve a layer as given
    dense_dilation       whether a channels_last depthwise dilated layer takes zero_insert
    zero_insert          a dilated kernel as the undilated kernel of its footprint

Only torch is imported.
"""
import torch
import torch.nn.functional as F


def pointwise_backward(g, x, B, nx, nw, nb):
    """grad_input B^T g, grad_weight g x^T and grad_bias of a 1x1 convolution at stride 1 on a
    contiguous (NCHW) input, as matrix products over the pixels of each image: oneDNN's
    convolution backward of such a channel mix is 1.4-2x slower than these on the CPU at
    DARTS's widths (in channels_last it is as fast as a matmul, and is kept; docs/rules.md)."""
    n, c, h, w = x.shape
    co = g.shape[1]
    g3 = g.reshape(n, co, h * w)                          # a view unless g is channels_last
    gx = torch.matmul(B.reshape(co, c).t(), g3).view(n, c, h, w) if nx else None
    gw = torch.bmm(g3, x.reshape(n, c, h * w).transpose(1, 2)).sum(0).view(B.shape) if nw \
        else None
    return gx, gw, g.sum((0, 2, 3)) if nb else None


def atrous_conv(conv, x, kernel_size, stride, padding, dilation, crop_ok=True):
    """conv(x, stride, padding, dilation) of a dilation-d convolution computed as an undilated
    one over the d*d interleaved sub-grids of its padded input, stacked on the batch axis
    (space-to-batch, as TensorFlow's atrous convolution): the same function. On the CPU,
    oneDNN's backward of dilated depthwise convolutions is 10-60x slower than that of undilated
    ones (DARTS's dil_conv, measured in benchmarks/darts_bench.py --fusion). Stride d (DARTS's
    reduction cells) needs only the first sub-grid. Other strides, unequal dilations or paddings
    are convolved as given; so is a case whose output must be cropped when not crop_ok (the
    Hebbian rule sums over every output position)."""
    d, (s, s2), (p, p2), k = dilation[0], stride, padding, kernel_size[0]
    if d == 1 or dilation[1] != d or s != s2 or p != p2 or kernel_size[1] != k or s not in (1, d):
        return conv(x, stride, padding, dilation)
    if s == d:
        return conv(F.pad(x, (p, p, p, p))[:, :, ::d, ::d], (1, 1), (0, 0), (1, 1))
    n, c, h, w = x.shape
    ho, wo = h + 2 * p - d * (k - 1), w + 2 * p - d * (k - 1)
    eh, ew = -ho % d, -wo % d
    if (eh or ew) and not crop_ok:
        return conv(x, stride, padding, dilation)
    xp = F.pad(x, (p, p + ew, p, p + eh)).permute(0, 2, 3, 1)                # NHWC
    hq, wq = xp.shape[1] // d, xp.shape[2] // d
    z = xp.reshape(n, hq, d, wq, d, c).permute(2, 4, 0, 1, 3, 5).reshape(d * d * n, hq, wq, c)
    y = conv(z.permute(0, 3, 1, 2), (1, 1), (0, 0), (1, 1)).permute(0, 2, 3, 1)
    yq, yw, co = y.shape[1:]
    y = y.reshape(d, d, n, yq, yw, co).permute(2, 3, 0, 4, 1, 5).reshape(n, yq * d, yw * d, co)
    return y.permute(0, 3, 1, 2)[:, :, :ho, :wo]


def routed_conv(conv, x, layer, crop_ok=True):
    """conv(x, stride, padding, dilation) with `layer`'s configuration, routed around two CPU
    problems of oneDNN, the same function either way. A 1x1 convolution at stride s reads only
    every s-th pixel: those are taken first and convolved at stride 1, because oneDNN's backward
    of strided 1x1 channels_last convolutions corrupts the heap, segfaults or spins forever on
    the CPU (DARTS's FactorizedReduce is one): with x = torch.randn(3, 4, 28, 28).contiguous(
    memory_format=torch.channels_last).requires_grad_(), `F.conv2d(x, torch.randn(4, 4, 1, 1,
    requires_grad=True), stride=2).sum().backward()` reproduces it (tests/test_rules.py runs such
    cases in a subprocess). Dilated convolutions go through atrous_conv."""
    stride = layer.stride
    if layer.kernel_size == (1, 1) and layer.padding == (0, 0) and stride != (1, 1):
        x, stride = x[:, :, ::stride[0], ::stride[1]], (1, 1)
    return atrous_conv(conv, x, layer.kernel_size, stride, layer.padding, layer.dilation, crop_ok)


def unrouted(layer):
    """True when routed_conv would convolve `layer`'s configuration as given."""
    return layer.dilation == (1, 1) and (layer.stride == (1, 1) or layer.kernel_size != (1, 1)
                                         or layer.padding != (0, 0))


def dense_dilation(layer, x):
    """The dilation d when `layer` is a depthwise dilated convolution at stride 1 on a
    channels_last CPU input outside autocast, else 0. Such a layer is convolved as an undilated
    one whose kernel has d - 1 zeros between its taps (zero_insert): in channels_last, oneDNN's
    5x5 and 9x9 depthwise kernels with the zeros are 1.4-2.5x (3x3, d 2) and 1.0-1.1x (5x5)
    faster forward+backward than atrous_conv's space-to-batch, whose pads and copies dominate;
    in NCHW they are 1.5-4x slower, and atrous_conv is kept (docs/rules.md), as on GPUs (not
    measured there)."""
    d = layer.dilation[0]
    if d == 1 or layer.dilation[1] != d or layer.stride != (1, 1) or layer.groups == 1 \
            or layer.groups != layer.in_channels or x.device.type != "cpu" \
            or x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last) \
            or torch.is_autocast_enabled(x.device.type):
        return 0
    return d


def zero_insert(w, d):
    """A dilation-d kernel as the undilated kernel of its footprint (d - 1 zeros between taps):
    conv(x, w, dilation d) = conv(x, _zero_insert(w, d)), and the gradient reaching w is the
    footprint's at the taps."""
    k = w.shape[-2:]
    out = w.new_zeros(w.shape[:2] + (d * (k[0] - 1) + 1, d * (k[1] - 1) + 1))
    out[:, :, ::d, ::d] = w
    return out
