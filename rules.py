"""Bio-inspired learning rules as autograd functions, and layer conversion.

Each rule changes only the *backward* pass of a layer y = W*x + b:

    bp       exact backpropagation: grad_x = W^T g
    fa       feedback alignment (Lillicrap et al. 2016): grad_x = B^T g with B a fixed
             random matrix, Xavier-uniform at init, never trained
    usf      uniform sign-concordant feedback (Liao, Leibo & Poggio 2016):
             B = s * sign(W), s = sqrt(2 / (fan_in + fan_out)) (the Xavier std)
    brsf     batchwise random-magnitude sign-concordant feedback: B = |R| * sign(W),
             R redrawn Xavier-uniform at every forward in training mode
    frsf     fixed random-magnitude sign-concordant feedback: B = |R| * sign(W),
             R drawn once at init
    hebbian  the weight learns from a local Hebbian rule (no error signal);
             the error still flows to the layers below through a fixed random B (as fa)

These are the definitions of Biotorch (Sanfiz & Akrout 2021) used by BioNAS
(Hamzaoui & Baghdadi, Sec. 2.1, Eqs. 3-6). In every FA-family rule the weight and bias
gradients are exactly backprop's (true input, incoming gradient g); only grad_x uses B.

Every rule layer is a subclass of nn.Conv2d / nn.Linear with the same constructor, the
same forward, the same `weight`/`bias` and one extra persistent buffer `weight_backward`:

    fa, hebbian   B itself
    usf           the constant s (so B = weight_backward * sign(W))
    brsf          |R| of the latest draw (so B = weight_backward * sign(W))
    frsf          |R| (so B = weight_backward * sign(W))
    bp            unused (zeros)

Only torch and conv_routes.py (the CPU kernels it routes convolutions through) are imported:
copy the two files into your project.
"""
import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import conv_routes
from conv_routes import dense_dilation, routed_conv, unrouted, zero_insert

RULES = ("bp", "fa", "usf", "brsf", "frsf", "hebbian")
POINTWISE_MATMUL = True     # contiguous 1x1 stride-1 grad_input and grad_weight by matmul
FLIP_CHANNELS = 32         # depthwise grad_input by a flipped forward convolution below this
NATIVE_BACKWARD = True     # other FA-family convolutions: nn.Conv2d's own backward, B saved as W


def check_rule(rule):
    """Return `rule` if it is a valid rule name, else raise a ValueError naming the valid ones."""
    if rule not in RULES:
        raise ValueError(f"unknown learning rule {rule!r}; valid rules are: {', '.join(RULES)}")
    return rule


# ----------------------------------------------------------------------------------------
# Hebbian update: Sanger's generalized Hebbian algorithm (an Oja-type rule)
# ----------------------------------------------------------------------------------------

def _hebbian_delta(y2d, hebb, weight, groups, eps=1e-8):
    """Normalized Sanger/Oja update  dW_c = (sum y_c x - sum_{j<=c} (sum y_c y_j) w_j) / sum y_c^2.

    y2d: the outputs as (C_out, samples x positions); hebb: sum of y_c x (shape of W). The
    Gram matrix sum y_c y_j is taken within each group only. Dividing each unit's step by its
    output power sum y_c^2 keeps the update bounded whatever the input scale: for a single unit
    along an eigenvector with norm a, a <- (1-lr) a + lr / a, whose fixed point is a = 1.
    """
    cg = weight.shape[0] // groups
    yg = y2d.reshape(groups, cg, -1)
    gram = yg @ yg.transpose(1, 2)                        # (groups, cg, cg)
    decay = torch.tril(gram) @ weight.reshape(groups, cg, -1)   # sum_{j<=c} <y_c y_j> w_j
    power = torch.diagonal(gram, dim1=1, dim2=2).unsqueeze(-1)
    delta = (hebb.reshape(groups, cg, -1) - decay) / (power + eps)
    return delta.reshape(weight.shape)


# ----------------------------------------------------------------------------------------
# Autograd functions
# ----------------------------------------------------------------------------------------

def _feedback(weight, buf, rule):
    """The feedback matrix B that replaces W in grad_input (paper Eqs. 3-6), in W's layout."""
    if rule in ("fa", "hebbian"):
        return buf
    return torch.sign(weight).mul_(buf)                   # usf, brsf, frsf


class FeedbackConv2dFunction(torch.autograd.Function):
    """conv2d whose grad_input is conv_transpose with B; grad_weight/bias are backprop's,
    except for `hebbian`, whose grad_weight is minus the normalized Sanger update.

    grad_weight = g (x) x does not read the weight, so one convolution_backward with B in the
    weight's place returns grad_input with B and backprop's grad_weight and grad_bias. B is
    formed in the forward, in W's layout, from the W and buffer of that forward. `route`
    (_function_route) takes grad_input by a flipped-B forward convolution or a matmul instead."""

    @staticmethod
    def forward(ctx, x, weight, bias, buf, rule, stride, padding, dilation, groups, route=None):
        out = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
        ctx.conf = (rule, stride, padding, dilation, groups, bias is not None,
                    route if ctx.needs_input_grad[0] else None)
        if rule == "hebbian":
            ctx.save_for_backward(x, weight, buf, out, bias)
        elif ctx.needs_input_grad[0]:
            B = _feedback(weight, buf, rule)
            ctx.save_for_backward(x, B if B.dtype == weight.dtype else B.to(weight.dtype))
        else:                                             # grad_weight alone: W's shape and layout
            ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    def backward(ctx, g):
        rule, stride, padding, dilation, groups, has_bias, route = ctx.conf
        if rule == "hebbian":
            return _hebbian_conv_backward(ctx, g) + (None,) * 7
        x, B = ctx.saved_tensors
        nx, nw, nb = ctx.needs_input_grad[:3]
        nb = has_bias and nb
        gx = gw = gb = None
        if route == "matmul":
            return conv_routes.pointwise_backward(g, x, B, nx, nw, nb) + (None,) * 7
        if route is not None and nx:
            gx, nx = F.conv2d(g, B.flip(-1, -2), None, 1, route, dilation, groups), False
        if nx or nw or nb:
            gx_b, gw, gb = torch.ops.aten.convolution_backward(
                g, x, B, [B.shape[0]] if has_bias else None, stride, padding, dilation, False,
                (0, 0), groups, (nx, nw, nb))
            gx = gx_b if nx else gx
        return gx, gw, gb, None, None, None, None, None, None, None


def _function_route(x, weight, stride, padding, dilation, groups):
    """Where the Function's own backward beats nn.Conv2d's (docs/rules.md, Speed): the padding
    of grad_input as a forward convolution of g with the flipped B (depthwise at stride 1 below
    FLIP_CHANNELS: oneDNN's forward kernel beats its backward-data kernel), "matmul" (a
    contiguous 1x1 at stride 1: conv_routes.pointwise_backward), else None."""
    if groups == x.shape[1] == weight.shape[0] < FLIP_CHANNELS and groups > 1 \
            and tuple(stride) == (1, 1):
        k = weight.shape[-2:]
        pad = (dilation[0] * (k[0] - 1) - padding[0], dilation[1] * (k[1] - 1) - padding[1])
        return pad if min(pad) >= 0 else None
    if POINTWISE_MATMUL and groups == 1 and weight.shape[-2:] == (1, 1) \
            and tuple(stride) == (1, 1) and tuple(padding) == (0, 0) and x.is_contiguous():
        return "matmul"
    return None


def _identity(t):
    return t


_top_hooks = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)


def _native_feedback_conv(x, weight, bias, B, stride, padding, dilation, groups):
    """conv2d(x, W) whose backward is nn.Conv2d's own autograd node with B saved in W's place.

    The node saves (x, W) and computes grad_x = conv_transpose(g, saved W) and grad_W from x
    and g alone; a saved-tensor hook hands it B instead of W, so grad_x = B^T g and grad_W and
    grad_b are backprop's: the rule without a Python autograd.Function, whose fixed cost
    (~50 us a forward+backward on the CPU) is 5-15% of a small layer (docs/rules.md, Speed).
    A caller's own saved-tensor hooks (save_on_cpu, activation checkpointing) still pack and
    unpack what this convolution saves, B in W's place."""
    swapped = []
    outer = _top_hooks(False) if _top_hooks is not None else None
    outer_pack, outer_unpack = outer if outer is not None else (_identity, _identity)

    def pack(t):
        if t is weight:
            swapped.append(True)
            t = B
        return outer_pack(t)

    with torch.autograd.graph.saved_tensors_hooks(pack, outer_unpack):
        out = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    if not swapped:                     # a torch that saves a copy of W: stop, never fall
        raise RuntimeError("rules: conv2d did not save the weight it was given, so B cannot "
                           "replace it; set rules.NATIVE_BACKWARD = False")     # back to bp
    return out


def feedback_conv2d(x, weight, bias, buf, rule, stride, padding, dilation, groups):
    """conv2d(x, W, b) trained by `rule` (buf: the layer's weight_backward): the autograd
    Function for the Hebbian rule and where its routes beat nn.Conv2d's backward, else
    nn.Conv2d's own backward node with B saved in W's place."""
    route = _function_route(x, weight, stride, padding, dilation, groups)
    if rule == "hebbian" or route is not None or not NATIVE_BACKWARD:
        return FeedbackConv2dFunction.apply(x, weight, bias, buf, rule, stride, padding,
                                            dilation, groups, route)
    if not (x.requires_grad and torch.is_grad_enabled()):     # grad_W needs no B
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    B = _feedback(weight.detach(), buf, rule)
    B = B if B.dtype == weight.dtype else B.to(weight.dtype)
    return _native_feedback_conv(x, weight, bias, B, stride, padding, dilation, groups)


def _hebbian_conv_backward(ctx, g):
    """grad_x with the fixed B; grad_W = minus the normalized Sanger update; no bias training."""
    x, weight, buf, out, bias = ctx.saved_tensors
    _, stride, padding, dilation, groups, has_bias, _ = ctx.conf
    conv_bw = torch.ops.aten.convolution_backward
    gx = gw = gb = None
    if ctx.needs_input_grad[0]:
        gx = conv_bw(g, x, buf.to(weight.dtype), None, stride, padding, dilation, False, [0, 0],
                     groups, [True, False, False])[0]
    if ctx.needs_input_grad[1]:
        y = out - bias.view(1, -1, 1, 1) if has_bias else out
        hebb = conv_bw(y, x, weight, None, stride, padding, dilation, False, [0, 0], groups,
                       [False, True, False])[1]
        y2d = y.transpose(0, 1).reshape(y.shape[1], -1)
        gw = -_hebbian_delta(y2d, hebb, weight, groups)
    if has_bias and ctx.needs_input_grad[2]:
        gb = torch.zeros_like(bias)                       # the Hebbian rule trains no bias
    return gx, gw, gb


class FeedbackLinearFunction(torch.autograd.Function):
    """linear whose grad_input is g @ B; grad_weight/bias are backprop's (hebbian: see conv)."""

    @staticmethod
    def forward(ctx, x, weight, bias, buf, rule):
        out = F.linear(x, weight, bias)
        ctx.rule = rule
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight, buf, out if rule == "hebbian" else None, bias)
        return out

    @staticmethod
    def backward(ctx, g):
        x, weight, buf, out, bias = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = g @ _feedback(weight, buf, ctx.rule).to(g.dtype)
        g2 = g.reshape(-1, g.shape[-1])
        x2 = x.reshape(-1, x.shape[-1])
        if ctx.rule == "hebbian":
            if ctx.needs_input_grad[1]:
                y = (out - bias if ctx.has_bias else out).reshape(-1, out.shape[-1])
                gw = -_hebbian_delta(y.t(), y.t() @ x2, weight, 1)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                gb = torch.zeros_like(bias)
        else:
            if ctx.needs_input_grad[1]:
                gw = g2.t() @ x2
            if ctx.has_bias and ctx.needs_input_grad[2]:
                gb = g2.sum(0)
        return gx, gw, gb, None, None


# ----------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------

def _autocast(*tensors):
    """Under torch.autocast, (dtype-cast tensors, True): the rule Functions then run in the
    autocast dtype with autocast off inside, as autocast runs conv and linear; the casts are
    differentiable, so parameter gradients come back in the parameters' dtype."""
    dev = tensors[0].device.type
    if not torch.is_autocast_enabled(dev):
        return tensors, False
    dt = torch.get_autocast_dtype(dev)
    return tuple(t if t is None else t.to(dt) for t in tensors), True


def _uniform(like, bound):
    """U(0, bound) shaped like `like`. On CPU, torch's per-element uniform_ costs ~5 ns a
    number (more than a 512x512 matmul); drawing raw 64-bit words and keeping 24 bits of each
    32-bit half is ~3x faster, and uniform on the same 2^-24 grid torch.rand uses for float32."""
    if like.device.type != "cpu" or like.numel() < 65536:
        return torch.empty_like(like).uniform_(0.0, bound)
    n = like.numel()
    words = torch.empty((n + 1) // 2, dtype=torch.int64).random_().view(torch.int32)[:n]
    r = (words & 0xFFFFFF).to(like.dtype).mul_(bound / 2 ** 24)
    return r.view(like.shape)


def _kernel(layer, d):
    """(W, dilation, direct) of `layer`: W zero-inserted and dilation 1 when d > 0 (a dilated
    depthwise layer in channels_last, conv_routes.dense_dilation), else as they are; direct:
    convolved as given, not through conv_routes.routed_conv."""
    if d:
        return zero_insert(layer.weight, d), (1, 1), True
    return layer.weight, layer.dilation, unrouted(layer)


class _RuleMixin:
    """Shared buffer handling of RuleConv2d and RuleLinear."""

    def _init_rule(self, rule, init):
        """init "xavier" (Biotorch's converted layers, BioNAS Sec. 3.4: Xavier-uniform weight,
        zero bias), "torch" (nn.Conv2d / nn.Linear's own, as DARTS and the BioNAS authors keep
        for backprop layers), or None: xavier for a learning rule, torch's for bp."""
        self.rule = check_rule(rule)
        self.exact = False                                # set by exact_gradients()
        init = init or ("torch" if rule == "bp" else "xavier")
        if init not in ("xavier", "torch"):
            raise ValueError(f"init must be 'xavier' or 'torch', not {init!r}")
        if init == "xavier":
            nn.init.xavier_uniform_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)
        self.register_buffer("weight_backward", torch.zeros_like(self.weight))
        self.reset_feedback()

    def _fans(self):
        return nn.init._calculate_fan_in_and_fan_out(self.weight)

    def reset_feedback(self):
        """(Re)initialize the feedback buffer for this layer's rule."""
        fan_in, fan_out = self._fans()
        self._bound = math.sqrt(6.0 / (fan_in + fan_out))     # Xavier-uniform bound
        with torch.no_grad():
            if self.rule in ("fa", "hebbian"):
                nn.init.xavier_uniform_(self.weight_backward)
            elif self.rule == "usf":
                self.weight_backward.fill_(math.sqrt(2.0 / (fan_in + fan_out)))
            elif self.rule in ("brsf", "frsf"):
                nn.init.xavier_uniform_(self.weight_backward)
                self.weight_backward.abs_()
            else:
                self.weight_backward.zero_()

    def _draw_brsf(self):
        """brsf: a fresh |R| ~ U(0, sqrt(6/(fan_in+fan_out))) at every training forward (a new
        tensor, set in _buffers directly: nn.Module.__setattr__ costs more than the draw)."""
        buffers = self._buffers
        buffers["weight_backward"] = _uniform(buffers["weight_backward"], self._bound)

    def feedback_matrix(self):
        """The B this layer would use in its next backward (W itself for bp / exact mode)."""
        if self.rule == "bp" or self.exact:
            return self.weight.detach()
        return _feedback(self.weight.detach(), self.weight_backward, self.rule)

    def extra_repr(self):
        return super().extra_repr() + f", rule={self.rule}"


class RuleConv2d(_RuleMixin, nn.Conv2d):
    """Drop-in nn.Conv2d whose backward follows a learning rule (BioNAS Sec. 2.1)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, rule="fa", device=None, dtype=None, init=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, device=device, dtype=dtype)
        if isinstance(self.padding, str):
            if self.padding == "valid":
                self.padding = (0, 0)
            else:                                          # "same": needs odd effective kernel
                eff = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
                if any(e % 2 for e in eff) or any(s != 1 for s in self.stride):
                    raise ValueError("RuleConv2d supports padding='same' only for odd "
                                     "effective kernels at stride 1; pass integer padding")
                self.padding = tuple(e // 2 for e in eff)
        self._init_rule(rule, init)

    def forward(self, x):
        if self.padding_mode != "zeros":
            raise ValueError(f"RuleConv2d supports padding_mode='zeros' only, "
                             f"got {self.padding_mode!r}")
        # (the Hebbian rule keeps conv_routes.atrous_conv for its dilated layers)
        d = 0 if self.rule == "hebbian" and not self.exact else dense_dilation(self, x)
        w, dil, direct = _kernel(self, d)
        if self.rule == "bp" or self.exact:
            if direct:
                return F.conv2d(x, w, self.bias, self.stride, self.padding, dil, self.groups)
            return routed_conv(lambda x_, s, p, d_: F.conv2d(x_, w, self.bias, s, p, d_,
                                                             self.groups), x, self)
        if self.rule == "brsf" and self.training:
            self._draw_brsf()
        b, buf = self.bias, self.weight_backward
        buf = zero_insert(buf, d) if d else buf     # (after brsf's draw)
        if direct and not torch.is_autocast_enabled(x.device.type):
            return feedback_conv2d(x, w, b, buf, self.rule, self.stride, self.padding, dil,
                                   self.groups)
        (x, w, b), cast = _autocast(x, w, b)
        with torch.autocast(x.device.type, enabled=False) if cast else contextlib.nullcontext():
            return routed_conv(lambda x_, s, p, d_: feedback_conv2d(
                x_, w, b, buf, self.rule, tuple(s), tuple(p), tuple(d_), self.groups), x, self,
                crop_ok=self.rule != "hebbian")


class RuleLinear(_RuleMixin, nn.Linear):
    """Drop-in nn.Linear whose backward follows a learning rule (BioNAS Sec. 2.1)."""

    def __init__(self, in_features, out_features, bias=True, rule="fa", device=None, dtype=None,
                 init=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_rule(rule, init)

    def forward(self, x):
        if self.rule == "bp" or self.exact:
            return F.linear(x, self.weight, self.bias)
        if self.rule == "brsf" and self.training:
            self._draw_brsf()
        (x, w, b), cast = _autocast(x, self.weight, self.bias)
        with torch.autocast(x.device.type, enabled=False) if cast else contextlib.nullcontext():
            return FeedbackLinearFunction.apply(x, w, b, self.weight_backward, self.rule)


RULE_LAYERS = (RuleConv2d, RuleLinear)


class MultiRuleConv2d(nn.Conv2d):
    """R rule layers side by side in one convolution (the fused supernet, fused.FusedMixedOp):
    the output channels form R equal blocks, block r trained by rules[r] (bp or an FA-family
    rule). Each block is initialized, keeps its feedback buffer and draws brsf's |R| exactly
    as a RuleConv2d of the block's shape (out_channels / R, in_channels / groups, k, k) would,
    so R RuleConv2d layers and one MultiRuleConv2d with their weights compute the same
    outputs and gradients. grad_input uses B = the blocks' feedback matrices, concatenated."""

    def __init__(self, in_channels, out_channels, kernel_size, rules, stride=1, padding=0,
                 dilation=1, groups=1, bias=False, init=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias)
        self.rules = [check_rule(r) for r in rules]
        if "hebbian" in self.rules or out_channels % len(self.rules):
            raise ValueError(f"MultiRuleConv2d: {out_channels} output channels in "
                             f"{len(self.rules)} blocks of bp / fa / usf / brsf / frsf")
        self.exact, self.block = False, out_channels // len(self.rules)
        self.register_buffer("weight_backward", torch.zeros_like(self.weight))
        self._bounds, self._brsf, self._kept = [], [], []    # (block, bound); (block, fa or bp)
        for r, rule in enumerate(self.rules):          # each block as its own RuleConv2d
            one = RuleConv2d(self.weight.shape[1], self.block, self.kernel_size, bias=False,
                             rule=rule, init=init)              # a block's shape and fans
            sl = slice(r * self.block, (r + 1) * self.block)
            with torch.no_grad():
                self.weight[sl] = one.weight
                self.weight_backward[sl] = one.weight_backward
                if self.bias is not None:
                    self.bias[sl] = 0.0
            self._bounds.append(one._bound)
            if rule == "brsf":
                self._brsf.append((sl, one._bound))
            elif rule in ("fa", "bp"):
                self._kept.append((sl, rule))

    def feedback_matrix(self):
        """B of every block: W (bp, exact), the fixed B (fa), |.| * sign(W) (usf, brsf, frsf)."""
        w = self.weight.detach()
        if self.exact:
            return w
        B = _feedback(w, self.weight_backward, "usf")   # every block, then fa's and bp's rows
        for sl, rule in self._kept:
            B[sl] = self.weight_backward[sl] if rule == "fa" else w[sl]
        return B

    def forward(self, x):
        d = dense_dilation(self, x)
        w, dil, direct = _kernel(self, d)
        if self.exact or all(r == "bp" for r in self.rules):
            if direct:
                return F.conv2d(x, w, self.bias, self.stride, self.padding, dil, self.groups)
            return routed_conv(lambda x_, s, p, d_: F.conv2d(x_, w, self.bias, s, p, d_,
                                                             self.groups), x, self)
        if self.training and self._brsf:       # a new tensor: a caller's copy of the last draw
            wb = self.weight_backward.clone()  # stays as it was
            for sl, bound in self._brsf:
                wb[sl] = _uniform(wb[sl], bound)
            self._buffers["weight_backward"] = wb
        B = self.feedback_matrix() if torch.is_grad_enabled() else self.weight
        B = zero_insert(B, d) if d else B
        if direct and not torch.is_autocast_enabled(x.device.type):
            return feedback_conv2d(x, w, self.bias, B, "fa", self.stride, self.padding, dil,
                                   self.groups)
        (x, w, b), cast = _autocast(x, w, self.bias)
        with torch.autocast(x.device.type, enabled=False) if cast else contextlib.nullcontext():
            return routed_conv(lambda x_, s, p, d_: feedback_conv2d(
                x_, w, b, B, "fa", tuple(s), tuple(p), tuple(d_), self.groups), x, self)


# ----------------------------------------------------------------------------------------
# Conversion and inspection
# ----------------------------------------------------------------------------------------

def _rule_layer_like(module, rule):
    """A rule layer with `module`'s configuration, device, dtype, weights and mode."""
    w = module.weight
    kw = dict(bias=module.bias is not None, rule=rule, device=w.device, dtype=w.dtype)
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            raise ValueError(f"cannot convert a Conv2d with padding_mode={module.padding_mode!r}")
        new = RuleConv2d(module.in_channels, module.out_channels, module.kernel_size,
                         module.stride, module.padding, module.dilation, module.groups, **kw)
    else:
        new = RuleLinear(module.in_features, module.out_features, **kw)
    with torch.no_grad():
        new.weight.copy_(w)
        if module.bias is not None:
            new.bias.copy_(module.bias)
        if isinstance(module, RULE_LAYERS) and module.rule == rule:
            new.weight_backward = module.weight_backward.clone()
    if w.dim() == 4 and w.is_contiguous(memory_format=torch.channels_last) \
            and not w.is_contiguous():
        new = new.to(memory_format=torch.channels_last)
    new.weight.requires_grad_(w.requires_grad)
    if new.bias is not None:
        new.bias.requires_grad_(module.bias.requires_grad)
    new.train(module.training)
    return new


def convert(model, rule):
    """Swap every nn.Conv2d / nn.Linear of `model` for its rule layer, weights copied.

    `rule` is a rule name, a dict {module_name: rule} (modules not named are left as they
    are), or a callable (name, module) -> rule or None (None leaves the module). Returns the
    model (a new layer if `model` is itself a Conv2d/Linear). Outputs are unchanged.
    """
    if isinstance(rule, str):
        check_rule(rule)
        choose = lambda name, m: rule                      # noqa: E731
    elif isinstance(rule, dict):
        for r in rule.values():
            check_rule(r)
        choose = lambda name, m: rule.get(name)            # noqa: E731
    elif callable(rule):
        choose = rule
    else:
        raise TypeError("rule must be a rule name, a dict {module_name: rule} or a callable")

    def pick(name, m):
        r = choose(name, m)
        if r is not None:
            check_rule(r)
        return r

    if isinstance(model, (nn.Conv2d, nn.Linear)):
        r = pick("", model)
        return model if r is None or (isinstance(model, RULE_LAYERS) and model.rule == r) \
            else _rule_layer_like(model, r)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if not isinstance(child, (nn.Conv2d, nn.Linear)) or type(child) not in (
                    nn.Conv2d, nn.Linear, RuleConv2d, RuleLinear):
                continue
            full = f"{name}.{child_name}" if name else child_name
            r = pick(full, child)
            if r is None or (isinstance(child, RULE_LAYERS) and child.rule == r):
                continue
            setattr(module, child_name, _rule_layer_like(child, r))
    return model


def layer_rules(model):
    """{module_name: rule} for every rule layer in `model`."""
    return {name: m.rule for name, m in model.named_modules() if isinstance(m, RULE_LAYERS)}


def alignment(layer):
    """Angle in degrees between W and the feedback B the layer would use now (0 = backprop)."""
    w = layer.weight.detach().flatten().double()
    b = layer.feedback_matrix().flatten().double()
    cos = torch.dot(w, b) / (w.norm() * b.norm()).clamp_min(1e-30)
    return math.degrees(math.acos(max(-1.0, min(1.0, cos.item()))))


@contextlib.contextmanager
def exact_gradients(model):
    """Context under which every rule layer back-propagates exactly (B := W).

    Attacks and gradient analyses need the true input gradient of a model whose training
    backward is not exact. Each layer's own setting is restored on exit, even after an error.
    """
    layers = [m for m in model.modules() if isinstance(m, RULE_LAYERS)]
    saved = [m.exact for m in layers]
    try:
        for m in layers:
            m.exact = True
        yield model
    finally:
        for m, s in zip(layers, saved):
            m.exact = s


if __name__ == "__main__":
    # Demo: a 2-layer MLP learns a synthetic 4-class task with each rule. The angle between the
    # hidden layer's weight gradient under the rule and backprop's (exact_gradients) starts near
    # 90 degrees for FA and shrinks as W learns to align with B (Lillicrap et al. 2016, Fig. 2).
    torch.manual_seed(0)
    X = torch.randn(2000, 20)
    y = (X[:, :10].sum(1) > X[:, 10:].sum(1)).long() + 2 * (X[:, 0] > 0).long()

    def gradient_angle(net, x, y):
        grads = []
        for ctx in (contextlib.nullcontext(), exact_gradients(net)):
            net.zero_grad()
            with ctx:
                F.cross_entropy(net(x), y).backward()
            grads.append(net[0].weight.grad.flatten().double())
        return math.degrees(math.acos(F.cosine_similarity(*grads, dim=0).clamp(-1, 1).item()))

    print("rule     test accuracy   angle to backprop's hidden gradient   W-B angle, output layer")
    for rule in RULES:
        torch.manual_seed(1)
        net = nn.Sequential(RuleLinear(20, 64, rule=rule), nn.ReLU(),
                            RuleLinear(64, 4, rule="fa" if rule == "hebbian" else rule))
        before = gradient_angle(net, X[:500], y[:500])
        for step in range(300):                      # plain SGD, lr 0.2, batch 64
            idx = torch.randint(0, 1500, (64,))
            net.zero_grad()
            F.cross_entropy(net(X[idx]), y[idx]).backward()
            with torch.no_grad():
                for p in net.parameters():
                    p -= 0.2 * p.grad
        acc = (net(X[1500:]).argmax(1) == y[1500:]).float().mean().item()
        print(f"{rule:8s} {acc:13.1%}   {before:15.1f} -> {gradient_angle(net, X[:500], y[:500]):5.1f} deg"
              f"   {alignment(net[2]):19.1f} deg")
