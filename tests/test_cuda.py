"""The CUDA suite: BioNAS's device-dependent computations run on a GPU and compared
with the same computations on the CPU.

    python -m pytest -q tests/test_cuda.py                         # cuda:0; skipped without it
    BIONAS_TEST_DEVICE=cuda:1 python -m pytest -q tests/test_cuda.py
    BIONAS_TEST_DEVICE=cpu OMP_NUM_THREADS=1 python -m pytest -q tests/test_cuda.py
        # CPU against CPU: every test body runs and its comparisons work (no GPU needed)

Every test builds a tiny model on the CPU from a seed, copies it (weights, buffers, feedback
matrices) to the device under test, runs the same step on both with the same inputs and
compares outputs, gradients and the updated state. It also checks that nothing was left on,
or silently created on, the CPU: every parameter, gradient, buffer and plain tensor attribute
of the model (rules.py keeps its feedback in the buffer `weight_backward`, which brsf replaces
by a new tensor at every training forward; the other rule state, `_bound(s)`, is Python
floats), every optimizer-state tensor (but Adam's `step` counter, a CPU scalar by torch's
design) and every tensor the step returns is on the device, before and after the step.

Tolerances. close(a, e, rtol, atol) passes when |a - e| <= atol * max|e| + rtol * |e| for
every element: atol is relative to the tensor's scale, so one tolerance fits tensors of any
magnitude (network steps floor that scale at FLOOR, so a tensor that is zero up to rounding,
such as the running mean of a BatchNorm after zero-mean maps, is not compared on its noise).
fp32 runs with TF32 off (cuDNN's default on Ampere and later would give ~1e-3). Each fp32
tolerance is at least 10x the fp32-versus-float64 error of the same computation on the CPU
(what rounding alone does; measured when the suite was written and quoted at each test).
Computations that take discrete decisions on computed values (the sign of a gradient, an
arg-max, a fitness comparison) are compared in float64 where the library allows it, so that
a flipped decision would need a value within ~1e-13 of its threshold; decisions (firing
patterns, growth events, accuracies) are compared exactly. A bf16 autocast run on the device
is compared with the fp32 CPU computation in norm, ||a - e|| <= max(5%, 3 e_cpu) ||e||, e_cpu
the error of the same bf16 computation on the CPU (bf16 keeps 8 bits; at these tiny sizes
BatchNorm's centring cancels most of them, so e_cpu reaches ~20% for network gradients).

Randomness. A CUDA generator and the CPU generator give different numbers for the same seed.
Inside a compared step every random draw (brsf's |R| at each training forward, drop-path
masks, the attacks' random starts, one-pixel's population) is therefore taken from the global
CPU generator and copied to the device, by `cpu_draws` (the library is unchanged): a
TorchFunctionMode intercepting Tensor.uniform_ / normal_ / bernoulli_ and torch.rand / randn /
randint / randperm / rand_like / randn_like without a generator, and rules._uniform (brsf's
draw) replaced for the duration, because torch does not carry function modes into backward,
where a checkpointed cell redraws brsf's |R|. rules._uniform draws from raw 64-bit words for
CPU tensors of >= 65536 elements; every brsf layer here is smaller (checked), so both runs
draw alike. The device's own brsf draw is tested without cpu_draws (the rule-layer tests): the
draw the device made is read from `weight_backward`, checked (in [0, bound], new at every
training forward) and copied to the CPU layer, which then runs in eval mode (no redraw).
"""
import contextlib
import copy
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import attacks
import darts
import darts_prime
import dyno
import egnas
import equinas
import fused
import neurogenesis
import ops
import plasticity
import resnet
import rules

DEVICE = os.environ.get("BIONAS_TEST_DEVICE", "cuda:0")


def _available(name):
    """Whether the device `name` exists here (without initializing CUDA when it does not)."""
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        return False
    if dev.type == "cpu":
        return True
    if dev.type == "cuda":
        return torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count()
    backend = getattr(torch, dev.type, None)
    return bool(backend is not None and getattr(backend, "is_available", lambda: False)())


pytestmark = pytest.mark.skipif(not _available(DEVICE), reason=f"device {DEVICE} is not available "
                                "(BIONAS_TEST_DEVICE picks another, e.g. cpu)")

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
FP32 = (1e-4, 1e-5)             # (rtol, atol): a single layer (measured fp32 vs fp64: <= 7e-7)
NET32 = (1e-3, 1e-4)            # a network step (measured: <= 1e-5, see each test)
RETRAIN32 = (1e-3, 1e-3)        # NetworkEval steps: DARTS_V2's BN-bias gradients cancel (7e-5)
FLOOR = 1e-2                    # scale floor of network steps' tensors (see close)
FP64 = (1e-9, 1e-10)            # float64 runs


@pytest.fixture(scope="module")
def dev():
    d = torch.device(DEVICE)
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device())
    return d


@pytest.fixture(scope="module", autouse=True)
def _ieee_fp32():
    """TF32 off for the module (new API when torch has it: mixing the two APIs is an error)."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    if hasattr(cudnn, "conv") and hasattr(cudnn.conv, "fp32_precision"):
        saved = (cudnn.conv.fp32_precision, matmul.fp32_precision)
        cudnn.conv.fp32_precision = matmul.fp32_precision = "ieee"
        yield
        cudnn.conv.fp32_precision, matmul.fp32_precision = saved
    else:                                                   # older torch: the legacy flags
        saved = (cudnn.allow_tf32, matmul.allow_tf32)
        cudnn.allow_tf32 = matmul.allow_tf32 = False
        yield
        cudnn.allow_tf32, matmul.allow_tf32 = saved


@pytest.fixture
def bf16(dev):
    if dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        pytest.skip(f"{dev} has no bf16 support")
    return torch.bfloat16


# ------------------------------------------------------------------------------------------
# Comparison and device machinery
# ------------------------------------------------------------------------------------------

def close(actual, expected, rtol, atol, what="tensor", floor=0.0):
    """|a - e| <= atol * max(max|e|, floor) + rtol * |e| elementwise (a moved to the CPU, both in
    float64). `floor` keeps a tensor that is zero up to rounding (e.g. the running mean of a
    BatchNorm after a pool of zero-mean maps) from being compared on its rounding noise."""
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    assert torch.isfinite(e).all() and torch.isfinite(a).all(), f"{what}: not finite"
    if e.numel() == 0:
        return
    scale = max(float(e.abs().max()), floor)
    err = (a - e).abs()
    bad = err > atol * scale + rtol * e.abs()
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.numel()} elements differ, max "
                           f"|a - e| {float(err.max()):.3g} at scale {scale:.3g} (rtol {rtol:g}, "
                           f"atol {atol:g} x scale)")


def close_all(actual, expected, tol, what="", floor=0.0):
    """close() over two dicts of tensors with the same keys (tol: (rtol, atol))."""
    assert list(actual) == list(expected), f"{what}: keys differ"
    for k in expected:
        close(actual[k], expected[k], *tol, what=f"{what} {k}".strip(), floor=floor)


def rel_err(actual, expected):
    """||a - e|| / ||e|| in float64 on the CPU (bf16 comparisons)."""
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    assert a.shape == e.shape and torch.isfinite(a).all()
    return float((a - e).norm() / e.norm().clamp_min(1e-30))


_PROJECT = {"rules", "ops", "darts", "resnet", "attacks", "plasticity", "neurogenesis",
            "neurogenesis_init", "dyno", "equinas", "egnas"}
_MODULE_INTERNALS = set(vars(nn.Module()))        # hooks, _parameters, _buffers, _modules, ...


def _tensors(obj, name="", seen=None):
    """(name, tensor) of every tensor reachable from obj: parameters, their .grad, buffers and
    plain tensor attributes of modules, optimizer state (but the `step` counters), and the
    attributes of this project's plain objects (Architect, Buffer, Neurogenesis, DYNO, ...)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or obj is None or isinstance(obj, (str, int, float, bool)):
        return
    seen.add(id(obj))
    if torch.is_tensor(obj):
        yield name, obj
        if obj.is_leaf and obj.grad is not None:
            yield name + ".grad", obj.grad
    elif isinstance(obj, torch.optim.Optimizer):
        for i, st in enumerate(obj.state.values()):
            for k, v in st.items():
                if k != "step":
                    yield from _tensors(v, f"{name}.state[{i}].{k}", seen)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{name}.{k}", seen)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{name}[{i}]", seen)
    elif isinstance(obj, nn.Module):
        for mname, m in obj.named_modules(prefix=name, remove_duplicate=False):
            seen.add(id(m))
            for k, v in list(m._parameters.items()) + list(m._buffers.items()):
                yield from _tensors(v, f"{mname}.{k}", seen)
            for k, v in vars(m).items():                    # plain attributes
                if k not in _MODULE_INTERNALS and not isinstance(v, nn.Module):
                    yield from _tensors(v, f"{mname}.{k}", seen)
    elif type(obj).__module__ in _PROJECT:
        for k, v in vars(obj).items():
            yield from _tensors(v, f"{name}.{k}", seen)


def assert_on(dev, *objs):
    """Every tensor reachable from objs (see _tensors) is on dev."""
    found, wrong = 0, []
    for i, obj in enumerate(objs):
        for name, t in _tensors(obj, f"[{i}]"):
            found += 1
            if t.device != dev:
                wrong.append(f"{name} on {t.device}")
    assert found, "no tensor found to check"
    assert not wrong, f"{len(wrong)} tensor(s) not on {dev}: " + ", ".join(wrong[:8])


def twin(dev, build, seed=0, memory_format=None, dtype=None):
    """(CPU model, its copy on dev): built once on the CPU from `seed`, then deep-copied, so
    both start from the same weights, buffers and feedback matrices."""
    torch.manual_seed(seed)
    cpu = build()
    if dtype is not None:
        cpu = cpu.to(dtype)
    if memory_format is not None:
        cpu = cpu.to(memory_format=memory_format)
    d = copy.deepcopy(cpu).to(dev)
    assert_on(dev, d)
    return cpu, d


def state(model, prefix=""):
    """Clones of the floating parameters and buffers, by name."""
    out = {f"{prefix}param {n}": p.detach().clone() for n, p in model.named_parameters()}
    out.update({f"{prefix}buffer {n}": b.detach().clone() for n, b in model.named_buffers()
                if b.is_floating_point()})
    return out


def grads(model, prefix=""):
    return {f"{prefix}grad {n}": p.grad.detach().clone() for n, p in model.named_parameters()
            if p.grad is not None}


def small_brsf(model):
    """Every brsf buffer is below rules._uniform's raw-word threshold (see the module doc)."""
    for m in model.modules():
        rule_list = getattr(m, "rules", None) or [getattr(m, "rule", None)]
        if "brsf" in rule_list:
            assert m.weight_backward.numel() < 65536, m


_INPLACE = {getattr(torch.Tensor, n): n for n in
            ("uniform_", "normal_", "bernoulli_", "exponential_", "log_normal_", "cauchy_",
             "geometric_")}
_FACTORY = {torch.rand, torch.randn, torch.randint, torch.randperm}
_LIKE = {torch.rand_like: torch.rand, torch.randn_like: torch.randn}


class _CpuDrawMode(TorchFunctionMode):
    """Every random draw without an explicit generator is taken from the global CPU generator
    and copied to its tensor's device: CPU and device runs seeded alike draw the same numbers.
    The CPU run goes through the same code, so both consume the same stream."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if kwargs.get("generator") is not None:
            return func(*args, **kwargs)
        if func in _INPLACE:
            t = args[0]
            rest = [a.cpu() if torch.is_tensor(a) else a for a in args[1:]]
            draw = getattr(torch.empty(t.shape, dtype=t.dtype), _INPLACE[func])(*rest, **kwargs)
            with torch.no_grad():
                t.copy_(draw)
            return t
        if func in _LIKE:
            like = args[0]
            dtype = kwargs.get("dtype") or like.dtype
            return _LIKE[func](like.shape, dtype=dtype).to(kwargs.get("device") or like.device)
        if func in _FACTORY:
            device = kwargs.pop("device", None)
            out = func(*args, **kwargs)
            return out if device is None else out.to(device)
        return func(*args, **kwargs)


def _cpu_uniform(like, bound):
    """rules._uniform (brsf's |R| ~ U(0, bound)) drawn on the CPU generator, copied to like's
    device."""
    return torch.empty(like.shape, dtype=like.dtype).uniform_(0.0, bound).to(like.device)


@contextlib.contextmanager
def cpu_draws():
    """_CpuDrawMode, and rules._uniform replaced by _cpu_uniform: a checkpointed cell's
    recomputation in backward redraws brsf's |R| outside any TorchFunctionMode (torch does not
    carry function modes into backward), so the mode alone would let the device's generator
    draw there; the module function is seen everywhere. The CPU generator's state is restored
    for the recomputation (preserve_rng_state), so it redraws the forward's |R| on both runs."""
    saved = rules._uniform
    rules._uniform = _cpu_uniform
    try:
        with _CpuDrawMode():
            yield
    finally:
        rules._uniform = saved


def run_twice(cpu_model, dev_model, dev, fn, seed=0):
    """fn(model, device) on the device model, then on the CPU model, each from torch seed
    `seed` under cpu_draws. Returns (device result, CPU result)."""
    out = []
    for model, d in ((dev_model, dev), (cpu_model, torch.device("cpu"))):
        torch.manual_seed(seed)
        with cpu_draws():
            out.append(fn(model, d))
    return out


def on(dev, tensors):
    return {k: v.to(dev) for k, v in tensors.items()} if isinstance(tensors, dict) else \
        [t.to(dev) for t in tensors]


# ------------------------------------------------------------------------------------------
# Rule layers (rules.py)
# ------------------------------------------------------------------------------------------

CONV_CASES = {   # name: (in, out, kernel, stride, padding, dilation, groups, bias), input H = W
    "3x3": ((4, 6, 3, 1, 1, 1, 1, True), 9),
    "grouped-3x3-stride2": ((4, 6, 3, 2, 1, 1, 2, True), 9),
    "depthwise-3x3": ((6, 6, 3, 1, 1, 1, 6, False), 8),        # grad_input by flipped conv
    "1x1-stride2": ((4, 6, 1, 2, 0, 1, 1, False), 8),          # routed: pixels taken first
    "dil-5x5-d2": ((6, 6, 5, 1, 4, 2, 6, False), 9),           # atrous (space-to-batch), cropped
    "dil-3x3-d2-stride2": ((6, 6, 3, 2, 2, 2, 6, False), 8),   # stride = dilation: one sub-grid
}
FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def _layer_step(layer, x, g):
    x = x.detach().clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    out = layer(x)
    out.backward(g)
    res = {"output": out.detach(), "grad_input": x.grad, "grad_weight": layer.weight.grad}
    if layer.bias is not None:
        res["grad_bias"] = layer.bias.grad
    return res


def _compare_layer(dev, cpu, d, x, g, tol=FP32):
    """One training forward/backward on both; brsf: the device's own draw is checked and used
    by the CPU layer (eval mode: no redraw)."""
    bound = getattr(d, "_bounds", None) or [getattr(d, "_bound", None)]
    before = d.weight_backward.clone()
    d.train()
    res_dev = _layer_step(d, x.to(dev), g.to(dev))
    assert_on(dev, d, res_dev)
    rule_list = getattr(d, "rules", None) or [d.rule]
    if "brsf" in rule_list:
        wb = d.weight_backward
        assert wb.device == dev and wb.shape == d.weight.shape
        block = wb.shape[0] // len(rule_list)
        for r, rule in enumerate(rule_list):
            sl = slice(r * block, (r + 1) * block)
            if rule == "brsf":
                assert wb[sl].min() >= 0 and wb[sl].max() <= bound[r] * (1 + 1e-6)
                assert not torch.equal(wb[sl], before[sl]), "brsf did not redraw in training"
            else:
                assert torch.equal(wb[sl], before[sl])
        cpu.weight_backward = wb.detach().cpu().clone()
        cpu.eval()
    res_cpu = _layer_step(cpu, x, g)
    close_all(res_dev, res_cpu, tol, f"{type(d).__name__}({rule_list})")
    B = d.feedback_matrix()                               # sign(W) * |.| or B: exact
    assert B.device == dev
    close(B, cpu.feedback_matrix(), 0, 0, "feedback_matrix")
    if "brsf" in rule_list:                                # a second training forward redraws
        first = d.weight_backward
        with torch.no_grad():
            d(x.to(dev))
        assert d.weight_backward.device == dev and not torch.equal(d.weight_backward, first)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("case", list(CONV_CASES))
@pytest.mark.parametrize("rule", rules.RULES)
def test_rule_conv_matches_cpu(dev, rule, case, fmt):
    """RuleConv2d, every rule, on every code path of conv_routes.routed_conv (plain, grouped,
    depthwise with the flipped-conv grad_input, strided 1x1, atrous dilated, stride =
    dilation), contiguous and channels_last: output, grad_input, grad_weight, grad_bias
    within FP32 (fp32 vs fp64 on the CPU: <= 8e-7 of the scale, Hebbian grad_weight the
    largest; at most 1/30 of FP32)."""
    (cin, cout, k, s, p, dil, groups, bias), hw = CONV_CASES[case]
    mf = FORMATS[fmt]
    cpu, d = twin(dev, lambda: rules.RuleConv2d(cin, cout, k, s, p, dil, groups, bias, rule=rule),
                  memory_format=mf)
    x = torch.randn(3, cin, hw, hw).contiguous(memory_format=mf)
    g = torch.randn_like(cpu(x)).contiguous(memory_format=mf)
    _compare_layer(dev, cpu, d, x, g)


@pytest.mark.parametrize("shape", [(5, 12), (2, 3, 12)])
@pytest.mark.parametrize("rule", rules.RULES)
def test_rule_linear_matches_cpu(dev, rule, shape):
    """RuleLinear, every rule, 2-D and 3-D inputs: output and gradients within FP32 (fp32 vs
    fp64: <= 2e-7 of the scale)."""
    cpu, d = twin(dev, lambda: rules.RuleLinear(12, 7, rule=rule))
    x = torch.randn(shape)
    g = torch.randn(shape[:-1] + (7,))
    _compare_layer(dev, cpu, d, x, g)


MULTI_CASES = {   # name: (in, out, kernel, stride, padding, dilation, groups), H = W
    "depthwise-3x3": ((15, 15, 3, 1, 1, 1, 15), 8),             # FusedDilConv's depthwise
    "pointwise-in-5-groups": ((15, 20, 1, 1, 0, 1, 5), 8),      # FusedDilConv's pointwise
    "1x1-stride2": ((3, 10, 1, 2, 0, 1, 1), 8),                 # FusedFactorizedReduce
    "dil-3x3-d2": ((15, 15, 3, 1, 2, 2, 15), 9),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("case", list(MULTI_CASES))
def test_multi_rule_conv_matches_cpu(dev, case, fmt):
    """MultiRuleConv2d with the five fusable rules side by side (bp, fa, usf, brsf, frsf):
    output and gradients within FP32 (fp32 vs fp64: <= 4e-7 of the scale); brsf's block
    redrawn on the device, the others kept; feedback_matrix() on the device and equal to the
    CPU's (as in every layer test)."""
    (cin, cout, k, s, p, dil, groups), hw = MULTI_CASES[case]
    mf = FORMATS[fmt]
    cpu, d = twin(dev, lambda: rules.MultiRuleConv2d(cin, cout, k, fused.FUSABLE, s, p, dil, groups),
                  memory_format=mf)
    x = torch.randn(2, cin, hw, hw).contiguous(memory_format=mf)
    g = torch.randn_like(cpu(x)).contiguous(memory_format=mf)
    _compare_layer(dev, cpu, d, x, g)


def bf16_runs(cpu, d, dev, step, bf16):
    """step(model, device) -> {name: tensor} three times, each from seed 0 under
    cpu_draws: on the device with bf16 autocast, on the CPU in fp32 (the reference), on the CPU
    with bf16 autocast (the error bf16 itself makes here). Each device value must be within
    max(5%, 3 x the CPU's own bf16 error) of the reference in norm, and on the device."""
    runs = []
    for model, device, amp in ((d, dev, True), (cpu, torch.device("cpu"), False),
                               (copy.deepcopy(cpu), torch.device("cpu"), True)):
        torch.manual_seed(0)
        with cpu_draws(), torch.autocast(device.type, dtype=bf16, enabled=amp):
            runs.append(step(model, device))
    res_dev, ref, res_cpu16 = runs
    for k, v in ref.items():
        assert res_dev[k].device == dev and torch.isfinite(res_dev[k]).all(), k
        err, own = rel_err(res_dev[k], v), rel_err(res_cpu16[k], v)
        assert err <= max(0.05, 3 * own), f"{k}: bf16 error {err:.3g} (CPU's own: {own:.3g})"
    return res_dev


@pytest.mark.parametrize("rule", rules.RULES)
def test_rule_layers_bf16_autocast(dev, bf16, rule):
    """A conv -> ReLU -> linear pair under bf16 autocast (bf16_runs): output in bf16,
    parameter and input gradients back in fp32 (the rules' Functions run in bf16 with
    autocast off inside and cast back), within max(5%, 3 x the CPU's own bf16 error; measured
    here: 0.2-10%, the fa/brsf/frsf conv gradients the largest) in norm."""
    def build():
        return nn.Sequential(rules.RuleConv2d(3, 8, 3, padding=1, rule=rule), nn.ReLU(),
                             nn.Flatten(), rules.RuleLinear(8 * 36, 5, rule=rule))
    cpu, d = twin(dev, build)
    cpu.eval(), d.eval()                                         # brsf: one R on both
    x = torch.rand(4, 3, 6, 6)

    def step(model, device):
        xi = x.to(device).clone().requires_grad_(True)         # its own .grad on every run
        y = model(xi)
        assert y.dtype == (bf16 if torch.is_autocast_enabled(device.type) else torch.float32)
        with torch.autocast(device.type, enabled=False):
            y.float().pow(2).mean().backward()
        return {"output": y.float(), "grad_input": xi.grad, **grads(model)}

    res = bf16_runs(cpu, d, dev, step, bf16)
    assert all(v.dtype == torch.float32 for k, v in res.items() if k != "output")


# ------------------------------------------------------------------------------------------
# Supernet steps (search.make_supernet + darts.Architect)
# ------------------------------------------------------------------------------------------

SMALL = dict(rules=("brsf",), skip_rules=("usf", "brsf"))     # 9 candidates, brsf included
SUPERNET_CASES = {   # name: (make_supernet kwargs, unrolled, extra); 22 candidates unless SMALL
    "darts-first": ({}, False, {}),
    "darts-second-momentum": ({}, True, dict(warm=True)),
    "fused-first": (dict(fused=True), False, {}),
    "fused-second": (dict(fused=True), True, {}),
    "pc-darts-first": (dict(partial_channels=2), False, {}),
    "pc-darts-second": (dict(partial_channels=2), True, SMALL),
    "eg-nas-supernet-first": (dict(partial_channels=2, supernet="eg-nas"), False, SMALL),
    "checkpoint-cells-first": (dict(checkpoint_cells=True), False, SMALL),
    "crb-admm-prune-first": (dict(activation="crb"), False,
                             dict(SMALL, zero=False, prune=True, reg="admm")),
    "proximity-first": ({}, False, dict(SMALL, reg="prox")),
    "merged-skips-2-nodes-first": (dict(merge_identity_skips=True), False, dict(SMALL, nodes=2)),
    "hebbian-space-first": ({}, False, dict(rules=("fa", "usf", "brsf", "hebbian"))),
}


def _supernet(net_kw, extra):
    """C 4, 3 cells (normal, reduce, reduce), 1 node (2 edges) per cell unless extra["nodes"]."""
    cands = ops.search_space(rules=extra.get("rules", ("fa", "usf", "brsf", "frsf")),
                             skip_rules=extra.get("skip_rules", ("usf", "brsf", "frsf")),
                             zero=extra.get("zero", True))
    n = extra.get("nodes", 1)
    from harness.search import make_supernet
    return make_supernet(4, 5, 3, cands, steps=n, multiplier=n, mean=CIFAR_MEAN, std=CIFAR_STD,
                         **net_kw)


def _batches(n_steps, batch=4, size=8, classes=5, channels=3):
    g = torch.Generator().manual_seed(123)
    return [(torch.rand(batch, channels, size, size, generator=g),
             torch.randint(0, classes, (batch,), generator=g)) for _ in range(2 * n_steps)]


def _search_steps(model, device, batches, unrolled, extra, lr=0.025):
    """DARTS's train_search.py step for each (training, validation) pair of batches: an alpha
    step (Architect, with the DARTS-PRIME regularizer of extra["reg"]) on the validation batch,
    then an SGD step of the weights (momentum 0.9, wd 3e-4, grad-clip 5) on the training
    batch; extra["warm"]: a plain weight step on the last batch first."""
    model.train()
    opt = torch.optim.SGD(model.weights(), lr, momentum=0.9, weight_decay=3e-4)
    admm = darts_prime.ADMM(model, every=1) if extra.get("reg") == "admm" else None
    reg = admm.penalty if admm else (lambda: darts_prime.proximity(model, 0.5)) \
        if extra.get("reg") == "prox" else None
    arch = darts.Architect(model, unrolled=unrolled, regularizer=reg,
                           arch_weight_decay=0.0 if isinstance(model, darts_prime.CRBNetwork)
                           else 1e-3)
    out = {}
    if extra.get("warm"):              # a weight step first: the unrolled step sees momentum
        xw, yw = on(device, batches[-1])
        F.cross_entropy(model(xw.contiguous(memory_format=torch.channels_last)), yw).backward()
        opt.step()
        opt.zero_grad()
        batches = batches[:-1]
    for s in range(len(batches) // 2):
        (xt, yt), (xv, yv) = on(device, batches[2 * s]), on(device, batches[2 * s + 1])
        xt, xv = (t.contiguous(memory_format=torch.channels_last) for t in (xt, xv))
        arch.step(xt, yt, xv, yv, eta=lr, network_optimizer=opt)
        if admm is not None:
            admm.after_alpha_step()
            out.update({f"step {s} admm {k}{i}": t for k in ("z", "u")
                        for i, t in enumerate(getattr(admm, k))})
        out.update({f"step {s} alpha grad {i}": a.grad.detach().clone()
                    for i, a in enumerate(model.arch_parameters())})
        opt.zero_grad()
        logits = model(xt)
        loss = F.cross_entropy(logits, yt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.weights(), 5.0)
        opt.step()
        out.update({f"step {s} loss": loss.detach(), f"step {s} logits": logits.detach()})
    if extra.get("prune"):
        out["alive"] = torch.tensor(model.prune(), dtype=torch.float64)
    out.update(state(model))
    return out, opt, arch


@pytest.mark.parametrize("case", list(SUPERNET_CASES))
def test_supernet_search_steps_match_cpu(dev, case):
    """DARTS search steps of the 22-candidate supernet (brsf included; C 4, 3 cells, 8x8
    images, batch 4, channels_last) in each variant: first and second order (unrolled, with
    the finite-difference Hessian-vector product; once after a plain weight step, so that it
    unrolls with the optimizer's momentum), fused rule variants, PC-DARTS partial channels
    with edge normalization, the arXiv space with Hebbian ops; and on a 9-candidate space with
    brsf:
    PC-DARTS at second order, EG-NAS's supernet, activation checkpointing (brsf redrawn alike
    in the recomputation), CRB with DARTS-PRIME's ADMM regularizer and prune(), the proximity
    regularizer (Eq. 20), merged identity skips. Compared: alpha gradients, losses, logits,
    ADMM's z and u, and every parameter and buffer after the steps (weights, alphas, betas,
    BatchNorm statistics, feedback buffers) within NET32 with FLOOR (fp32 vs fp64 on the CPU:
    <= 1e-5 of the scale, BatchNorm running means the largest; at most 1/20 of the
    tolerance)."""
    net_kw, unrolled, extra = SUPERNET_CASES[case]
    cpu, d = twin(dev, lambda: _supernet(net_kw, extra), memory_format=torch.channels_last)
    small_brsf(cpu)
    batches = _batches(2)[:3] if extra.get("warm") else _batches(1)
    (res_dev, opt, arch), (res_cpu, _, _) = run_twice(
        cpu, d, dev, lambda m, device: _search_steps(m, device, batches, unrolled, extra))
    assert_on(dev, d, opt, arch.optimizer, res_dev)
    close_all(res_dev, res_cpu, NET32, case, FLOOR)


def test_supernet_bf16_autocast(dev, bf16):
    """The supernet's weight forward/backward (9 candidates) under bf16 autocast (search.py's
    --amp bf16; bf16_runs): the loss and the gradient of all weights together within
    max(5%, 3 x the CPU's own bf16 error; measured here: 0.06% and 20% -- BatchNorm over 4
    images of 2x2 maps cancels most of the bf16 bits), fp32 gradients."""
    cpu, d = twin(dev, lambda: _supernet({}, SMALL), memory_format=torch.channels_last)
    (x, y), = _batches(1)[:1]

    def step(model, device):
        model.train()
        model.zero_grad()
        loss = F.cross_entropy(model(x.to(device)), y.to(device))
        loss.backward()
        return {"loss": loss.detach().float(),
                "weight grads": torch.cat([p.grad.flatten() for p in model.weights()])}

    assert bf16_runs(cpu, d, dev, step, bf16)["weight grads"].dtype == torch.float32


# ------------------------------------------------------------------------------------------
# Retraining steps (darts.NetworkEval, resnet.ResNet)
# ------------------------------------------------------------------------------------------

BIONAS_TINY = darts.Genotype(   # every rule, Hebbian, a FactorizedReduce with frsf, pools
    normal=[("sep_conv_3x3_fa", 0), ("skip_connect", 1),
            ("dil_conv_3x3_brsf", 0), ("dil_conv_5x5_hebbian", 2)],
    normal_concat=[2, 3],
    reduce=[("max_pool_3x3", 0), ("skip_connect_frsf", 1),
            ("sep_conv_5x5_usf", 2), ("avg_pool_3x3", 0)],
    reduce_concat=[2, 3])
DARTS_V2 = darts.DARTS_V2


def _retrain_steps(model, device, batches, aux_weight=0.4, lr=0.025):
    """retrain.py's step, twice: drop-path 0.2, loss + 0.4 x auxiliary loss, grad-clip 5, SGD
    (momentum 0.9, weight decay 3e-4)."""
    model.train()
    model.drop_path_prob = 0.2
    opt = torch.optim.SGD(model.parameters(), lr, momentum=0.9, weight_decay=3e-4)
    out = {}
    for s, (x, y) in enumerate(batches):
        x, y = on(device, (x, y))
        opt.zero_grad()
        logits = model(x.contiguous(memory_format=torch.channels_last))
        loss = F.cross_entropy(logits, y)
        if model.logits_aux is not None:
            assert model.logits_aux.device == device
            out[f"step {s} logits_aux"] = model.logits_aux.detach()
            loss = loss + aux_weight * F.cross_entropy(model.logits_aux, y)
        loss.backward()
        out.update(grads(model, f"step {s} "))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        out.update({f"step {s} loss": loss.detach(), f"step {s} logits": logits.detach()})
    out.update(state(model))
    return out, opt


@pytest.mark.parametrize("genotype", ["bionas-tiny", "darts-v2"])
def test_network_eval_retrain_steps_match_cpu(dev, genotype):
    """Two retraining steps of darts.NetworkEval (C 4, 3 cells, auxiliary head, drop-path 0.2
    with its masks drawn alike, channels_last) for a genotype with every rule (Hebbian and a
    frsf FactorizedReduce included) and for DARTS_V2: logits, auxiliary logits, losses, every
    gradient and every parameter/buffer after the steps within RETRAIN32 (fp32 vs fp64: 1e-5
    of the scale for the BioNAS genotype, 7e-5 for DARTS_V2, whose BatchNorm-bias gradients
    are sums that cancel; at most 1/35 of the tolerance)."""
    g = BIONAS_TINY if genotype == "bionas-tiny" else DARTS_V2
    cpu, d = twin(dev, lambda: darts.NetworkEval(4, 5, 3, g, auxiliary=True, mean=CIFAR_MEAN,
                                                 std=CIFAR_STD), memory_format=torch.channels_last)
    small_brsf(cpu)
    batches = _batches(1)
    (res_dev, opt), (res_cpu, _) = run_twice(
        cpu, d, dev, lambda m, device: _retrain_steps(m, device, batches))
    assert_on(dev, d, opt, res_dev)
    close_all(res_dev, res_cpu, RETRAIN32, genotype, FLOOR)


@pytest.mark.parametrize("rule", ["bp", "usf", "brsf", "hebbian"])
def test_resnet_retrain_steps_match_cpu(dev, rule):
    """Two SGD steps of resnet.ResNet(depth 8) with one rule everywhere (option-A shortcuts,
    Normalize buffers): logits, losses, gradients, parameters and BN statistics within NET32
    (fp32 vs fp64: <= 2.2e-6 of the scale)."""
    cpu, d = twin(dev, lambda: resnet.ResNet(8, 5, rule=rule, mean=CIFAR_MEAN, std=CIFAR_STD),
                  memory_format=torch.channels_last)
    batches = _batches(1)
    (res_dev, opt), (res_cpu, _) = run_twice(
        cpu, d, dev, lambda m, device: _retrain_steps(m, device, batches))
    assert_on(dev, d, opt, res_dev)
    close_all(res_dev, res_cpu, NET32, rule, FLOOR)


def test_network_eval_bf16_autocast(dev, bf16):
    """A NetworkEval training forward/backward (auxiliary head on, every rule) under bf16
    autocast (retrain.py's --amp bf16; bf16_runs): loss, auxiliary logits and all gradients
    together within max(5%, 3 x the CPU's own bf16 error; measured here: 0.07%, 4% and 22%)."""
    cpu, d = twin(dev, lambda: darts.NetworkEval(4, 5, 3, BIONAS_TINY, auxiliary=True),
                  memory_format=torch.channels_last)
    (x, y), = _batches(1)[:1]

    def step(model, device):
        model.train()
        model.zero_grad()
        logits = model(x.to(device))
        loss = F.cross_entropy(logits, y.to(device)) + \
            0.4 * F.cross_entropy(model.logits_aux, y.to(device))
        loss.backward()
        return {"loss": loss.detach().float(), "logits_aux": model.logits_aux.detach().float(),
                "grads": torch.cat([p.grad.flatten() for p in model.parameters()])}

    bf16_runs(cpu, d, dev, step, bf16)


# ------------------------------------------------------------------------------------------
# Attacks (attacks.py)
# ------------------------------------------------------------------------------------------

def _attack_net():
    """A small CNN of rule layers (fa, brsf, usf) behind attacks.Normalize, with BatchNorm
    running statistics moved away from their initial values."""
    net = nn.Sequential(attacks.Normalize(CIFAR_MEAN, CIFAR_STD),
                        rules.RuleConv2d(3, 6, 3, padding=1, rule="fa"), nn.BatchNorm2d(6),
                        nn.ReLU(), nn.MaxPool2d(2),
                        rules.RuleConv2d(6, 8, 3, padding=1, rule="brsf"), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(2), nn.Flatten(), rules.RuleLinear(32, 5, rule="usf"))
    with torch.no_grad():
        net(torch.rand(16, 3, 12, 12))
    return net.eval()


def _attack_data(model):
    g = torch.Generator().manual_seed(7)
    x = torch.rand(6, 3, 12, 12, generator=g, dtype=torch.float64).to(next(model.parameters()))
    y = attacks.predict(model, x)
    y[:2] = (y[:2] + 1) % 5                         # two already misclassified (APGD skips them)
    return x, y


ATTACK_CASES = {   # name: (function, kwargs); eps etc. small, steps few
    "fgsm": (attacks.fgsm, dict(eps=8 / 255)),
    "pgd": (attacks.pgd, dict(eps=8 / 255, alpha=2 / 255, steps=4, random_start=False)),
    "pgd-random-start": (attacks.pgd, dict(eps=8 / 255, alpha=2 / 255, steps=4)),
    "tpgd": (attacks._tpgd_xy, dict(eps=8 / 255, alpha=2 / 255, steps=3)),
    "apgd-ce": (attacks.apgd, dict(eps=8 / 255, steps=12, restarts=2)),
    "apgd-dlr": (attacks.apgd, dict(eps=8 / 255, steps=12, loss="dlr")),
    "onepixel": (attacks.one_pixel, dict(pixels=2, steps=4, popsize=8, chunk=20)),
    "targeted_l2": (attacks.targeted_l2, dict(eps=0.5, alpha=0.2, steps=3, return_broken=True)),
}


@pytest.mark.parametrize("grad", attacks.GRADS)
@pytest.mark.parametrize("case", list(ATTACK_CASES))
def test_attack_matches_cpu(dev, case, grad):
    """Every attack of attacks.py (both APGD losses, PGD with and without random start), with
    exact and feedback gradients, on a float64 rule-layer CNN: the adversarial images (and
    targeted_l2's broken flags) and the model's logits there equal the CPU's within FP64 --
    float64 because the attacks take signs of gradients and compare losses; their random
    starts are drawn alike (cpu_draws). The model's parameters, buffers and modes are
    untouched."""
    fn, kw = ATTACK_CASES[case]
    if case == "onepixel" and grad == "feedback":
        pytest.skip("one-pixel uses no gradient")
    cpu, d = twin(dev, _attack_net, dtype=torch.float64)
    x, y = _attack_data(cpu)
    before = state(d)
    res_dev, res_cpu = run_twice(cpu, d, dev, lambda m, device: fn(
        m, x.to(device), y.to(device), grad=grad, **kw))
    if case == "targeted_l2":
        assert torch.equal(res_dev[1].cpu(), res_cpu[1])
        res_dev, res_cpu = res_dev[0], res_cpu[0]
    assert res_dev.device == dev and res_dev.dtype == torch.float64
    close(res_dev, res_cpu, *FP64, what=f"{case} {grad}")
    with torch.no_grad():                                 # and the model there (continuous)
        close(d(res_dev), cpu(res_cpu), *FP64, what=f"{case} {grad} logits")
    assert not d.training and all(p.grad is None for p in d.parameters())
    close_all(state(d), before, (0, 0), "model after the attack")
    assert_on(dev, d)


@pytest.mark.parametrize("grad", attacks.GRADS)
def test_input_gradient_fp32_matches_cpu(dev, grad):
    """attacks.input_gradient in fp32 (exact: through rules.exact_gradients; feedback: the
    rules' B) within FP32 (fp32 vs fp64: <= 2e-7)."""
    cpu, d = twin(dev, _attack_net)
    x, y = _attack_data(cpu)
    g_dev = attacks.input_gradient(d, x.to(dev), y.to(dev), grad)
    assert g_dev.device == dev
    close(g_dev, attacks.input_gradient(cpu, x, y, grad), *FP32, what=grad)
    assert all(not m.exact for m in d.modules() if isinstance(m, rules.RULE_LAYERS))


def test_evaluate_robustness_matches_cpu(dev):
    """attacks.evaluate_robustness (per-batch seeds, fork_rng on the device, a gradient-free
    column shared by the rows) over a CPU loader of two batches with a device model: the
    same table as on the CPU (float64, exact equality of accuracies)."""
    cpu, d = twin(dev, _attack_net, dtype=torch.float64)
    x, y = _attack_data(cpu)
    loader = [(x[:3], y[:3]), (x[3:], y[3:])]
    over = {"pgd": dict(steps=3), "apgd": dict(steps=6), "onepixel": dict(pixels=(1,), steps=3,
                                                                          popsize=6)}
    rows_dev, rows_cpu = run_twice(cpu, d, dev, lambda m, device: attacks.evaluate_robustness(
        m, loader, ["fgsm", "pgd", "apgd", "onepixel"], preset="standard", overrides=over))
    assert rows_dev == rows_cpu


# ------------------------------------------------------------------------------------------
# Plasticity (plasticity.py)
# ------------------------------------------------------------------------------------------

def _cap_rnn(rounds=2):
    return plasticity.CapRNN(6, 3, num_v=40, cap=10, p=0.5, rounds=rounds, seed=0)


def _plasticity_data(n=40):
    g = torch.Generator().manual_seed(11)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("mode, rows, rounds", [("additive", "predicted", 2),
                                                ("multiplicative", "all", 2),
                                                ("additive", "predicted_always", 1)])
def test_plasticity_training_matches_cpu(dev, mode, rows, rounds):
    """plasticity.train_with_rules (two shuffled epochs, W by a random RNN rule table, U by a
    random output rule): the firing patterns after training are equal, W and U within
    (1e-4, 1e-5) (fp32 vs fp64 on the CPU: 1.4e-7 at T = 1; T = 2 does not run in float64, the
    library casting the rule tables to float32; the inputs are continuous, so a top-k near-tie
    that rounding could reorder has probability ~1e-5)."""
    cpu, d = twin(dev, lambda: _cap_rnn(rounds))
    X, y = _plasticity_data()
    n = 2 ** rounds                 # a non-negative additive rule: W > 0 keeps round 2 alive
    table = torch.rand(n, n, generator=torch.Generator().manual_seed(1))
    rr = plasticity.RuleTable(rounds, table=table if mode == "additive" else None, seed=1)
    ro = plasticity.OutputRuleTable(rounds, seed=2)

    def train(net, device):
        plasticity.train_with_rules(net, X.to(device), y.to(device), rr, ro, lr=0.05, epochs=2,
                                    mode=mode, rows=rows, update="all", seed=3)
        return {"W": net.W.detach().clone(), "U": net.U.detach().clone(),
                "codes": net.firing_patterns(X.to(device)),
                "logits": net(X.to(device))}

    res_dev, res_cpu = run_twice(cpu, d, dev, train)
    assert_on(dev, d, res_dev)
    assert (res_cpu["logits"].abs().sum(1) > 0).all(), "a silent network: the test would be weak"
    assert torch.equal(res_dev.pop("codes").cpu(), res_cpu.pop("codes"))
    close_all(res_dev, res_cpu, (1e-4, 1e-5), mode)


def test_plasticity_gd_baseline_matches_cpu(dev):
    """plasticity.train_gd (the Fig. 2 baseline: Adam on A, W and U with their masks kept, one
    epoch of 4 batches): the logits, A, W and U within (1e-4, 1e-5) (fp32 vs fp64: 3e-7 of the
    scale); requires_grad switched back off."""
    cpu, d = twin(dev, lambda: _cap_rnn(2))
    X, y = _plasticity_data()

    def gd(net, device):
        plasticity.train_gd(net, X.to(device), y.to(device), epochs=1, lr=1e-2, batch_size=10,
                            params="all", seed=0)
        return {"logits": net(X.to(device)), **state(net)}

    res_dev, res_cpu = run_twice(cpu, d, dev, gd)
    assert_on(dev, d, res_dev)
    assert not any(p.requires_grad for p in d.parameters())
    close_all(res_dev, res_cpu, (1e-4, 1e-5), "train_gd", FLOOR)


@pytest.mark.parametrize("rule_kind", ["table", "mlp"])
def test_plasticity_meta_learning_matches_cpu(dev, rule_kind):
    """plasticity.meta_learn (two Adam steps on an RNN rule -- a RuleTable or the small-network
    MLPRule -- and an output rule table, T = 2, a fresh CapRNN per batch moved to the data's
    device): batch losses and the rules' parameters after the steps within (1e-4, 1e-5) (as
    the training test: meta_learn does not run in float64, its float32 casts being part of
    the library); the rules' parameters and the MLPRule's `pairs` buffer on the device."""
    X, y = _plasticity_data(40)

    def build():
        rr = plasticity.RuleTable(2, seed=1) if rule_kind == "table" else \
            plasticity.MLPRule(2, seed=1)
        return nn.ModuleList([rr, plasticity.OutputRuleTable(2, seed=2)])
    cpu, d = twin(dev, build)

    def meta(rules_, device):
        losses = plasticity.meta_learn(lambda: _cap_rnn(2), X.to(device), y.to(device),
                                       rnn_rule=rules_[0], output_rule=rules_[1], batch_size=10,
                                       steps=2, seed=0, meta_lr=0.05)
        return {"losses": torch.tensor(losses, dtype=torch.float64), **state(rules_)}

    res_dev, res_cpu = run_twice(cpu, d, dev, meta)
    assert_on(dev, d)
    close_all(res_dev, res_cpu, (1e-4, 1e-5), rule_kind)


# ------------------------------------------------------------------------------------------
# Neurogenesis, DYNO (neurogenesis.py, neurogenesis_init.py, dyno.py)
# ------------------------------------------------------------------------------------------

def _ng_data(n, shape, classes=3):
    g = torch.Generator().manual_seed(5)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


NG_CASES = {   # name: (model builder, Neurogenesis kwargs, input shape)
    "mlp-north-select": (lambda: neurogenesis.GrowableMLP(8, [4, 4], 3, max_widths=[14, 9]),
                         dict(strategy="NORTH-Select", candidates=8, buffer_size=40), (8,)),
    "mlp-gradmax": (lambda: neurogenesis.GrowableMLP(8, [4, 4], 3, max_widths=[10, 8]),
                    dict(strategy="GradMax"), (8,)),
    "mlp-firefly": (lambda: neurogenesis.GrowableMLP(8, [4, 4], 3, max_widths=[10, 8]),
                    dict(strategy="Firefly", candidates=6), (8,)),
    "cnn-north-weight": (lambda: neurogenesis.GrowableCNN((2, 6, 6), [3, 3], 3, dense_widths=[4],
                                                          max_widths=[6, 6, 8]),
                         dict(strategy="NORTH-Weight", gamma_w=1.0), (2 * 6 * 6,)),
    "cnn-north-select": (lambda: neurogenesis.GrowableCNN((2, 6, 6), [3, 3], 3, max_widths=[6, 6]),
                         dict(strategy="NORTH-Select", candidates=6, buffer_size=12), (2 * 6 * 6,)),
}


def _neurogenesis_run(model, device, case, steps=6, batch=16):
    """Algorithm 4: start(buffer), then `steps` gradient steps each followed by the trigger
    and growth; then one explicit prune of layer 0 with the optimizer state cut alongside and
    one more step."""
    _, kw, shape = NG_CASES[case]
    x, y = on(device, _ng_data(batch * (steps + 1), shape))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    ng = neurogenesis.Neurogenesis(model, opt, seed=0, **kw)
    ng.start(x[:40])
    losses = [ng.step(x[t * batch:(t + 1) * batch], y[t * batch:(t + 1) * batch])
              for t in range(steps)]
    model.prune_neurons(0, [0, 2], opt)
    if ng.buffer is not None:
        ng.buffer.stale()                                       # as DYNO does after a prune
    losses.append(ng.step(x[-batch:], y[-batch:]))
    return ng, {"losses": torch.tensor(losses, dtype=torch.float64),
                "logits": model(x[:batch]).detach(), **state(model)}


@pytest.mark.parametrize("case", list(NG_CASES))
def test_neurogenesis_steps_match_cpu(dev, case):
    """Neurogenesis (Algorithm 4) on growable MLPs and CNNs with the activation trigger and
    NORTH-Select (the ED metric on the buffer, candidate scores), the gradient trigger
    (Eq. 32) with GradMax and Firefly, and the weight trigger with NORTH-Weight, then an
    explicit prune: the same growth events and widths (exactly), losses, logits and every
    parameter/buffer within NET32 (fp32 vs fp64 on the CPU: <= 8e-7 of the scale); the
    buffer, the Adam state grown/cut with the parameters, and everything else on the device."""
    build = NG_CASES[case][0]
    cpu, d = twin(dev, build)
    (ng_d, res_dev), (ng_c, res_cpu) = run_twice(
        cpu, d, dev, lambda m, device: _neurogenesis_run(m, device, case))
    assert ng_c.history["events"], f"{case}: nothing grew on the CPU; the test would be weak"
    assert ng_d.history["widths"] == ng_c.history["widths"]
    assert ng_d.history["events"] == ng_c.history["events"]
    assert_on(dev, d, ng_d, res_dev)
    close_all(res_dev, res_cpu, NET32, case, FLOOR)


def _dyno_run(model, device, steps=7):
    x, y = on(device, _ng_data(20 * steps + 64, (8,)))
    x = x.abs()                                                 # positive: dormant stays dormant
    with torch.no_grad():
        model.layers[0].weight[:3] = -1.0                       # 3 dormant neurons in layer 0
        model.layers[0].bias[:3] = -1.0
    opt = torch.optim.Adam(model.parameters(), 1e-3, weight_decay=1e-3)
    dy = dyno.DYNO(model, opt, every=3, min_buffer=64)
    dy.start(x[:64], x[64:128])
    dy.phi_star = [0.9, 0.5]                                    # layer 0 prunes, layer 1 grows
    losses = [dy.step(x[64 + 20 * t:84 + 20 * t], y[64 + 20 * t:84 + 20 * t])
              for t in range(steps)]
    return dy, {"losses": torch.tensor(losses, dtype=torch.float64),
                "phi_star": torch.tensor(dy.phi_star, dtype=torch.float64), **state(model)}


def test_dyno_steps_match_cpu(dev):
    """DYNO (Algorithm 5: prune by Eq. 38 with SELECT_PRUNE, grow by Eq. 39 with NORTH-Select,
    every 3 steps): the same evaluations (widths, pruned, grown: exactly), phi*, losses and
    parameters within NET32 (fp32 vs fp64: <= 3e-7 of the scale); all state on the device."""
    cpu, d = twin(dev, lambda: neurogenesis.GrowableMLP(8, [12, 10], 3))
    (dy_d, res_dev), (dy_c, res_cpu) = run_twice(cpu, d, dev, _dyno_run)
    ev_c = [(e["widths"], e["pruned"], e["grown"]) for e in dy_c.history["evaluations"]]
    assert any(sum(p) for _, p, _ in ev_c) and any(sum(g) for _, _, g in ev_c), ev_c
    assert [(e["widths"], e["pruned"], e["grown"]) for e in dy_d.history["evaluations"]] == ev_c
    assert dy_d.history["flops"] == dy_c.history["flops"]
    assert_on(dev, d, dy_d, res_dev)
    close_all(res_dev, res_cpu, NET32, "dyno", FLOOR)


# ------------------------------------------------------------------------------------------
# EquiNAS (equinas.py)
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lifting", [True, False])
def test_equinas_mixed_layer_matches_cpu(dev, lifting):
    """The [G]-mixed layer (Eq. 12: summed expanded filters of the six D4 subgroups, weight
    normalized) forward/backward: output, input gradient, every psi and alpha gradient within
    FP32 (fp32 vs fp64: <= 4e-7 of the scale); its gather/layout index buffers and norms on
    the device."""
    cin = 2 if lifting else 1
    cpu, d = twin(dev, lambda: equinas.MixedGroupConv2d(cin, 1, 3, lifting=lifting))
    x = torch.randn(2, cin if lifting else 8, 7, 7)
    g = torch.randn_like(cpu(x))
    res = []
    for m, device in ((d, dev), (cpu, torch.device("cpu"))):
        xi = x.to(device).clone().requires_grad_(True)         # its own .grad on every run
        out = m(xi)
        out.backward(g.to(device))
        res.append({"output": out.detach(), "grad_input": xi.grad, **grads(m)})
    assert_on(dev, d, res[0])
    close_all(res[0], res[1], FP32, "mixed layer")


def test_equinas_training_and_relaxation_match_cpu(dev):
    """EquiNAS_D's training (equinas.train_steps with a Z optimizer: an alpha step then a psi
    step per batch, field BatchNorm) on an EquiCNN of two [G]-mixed layers around a D4
    layer: loss, parameters and BN statistics within (1e-3, 1e-3) (fp32 vs fp64: 1.5e-5 of the
    scale: Adam's first steps, g / |g|, turn the rounding of near-zero gradient entries into
    steps of up to lr); then relax_network on the device keeps the eval outputs (within FP32
    of the unrelaxed net)."""
    arch = [equinas.GROUPS, "D4", equinas.GROUPS]
    cpu, d = twin(dev, lambda: equinas.EquiCNN(arch, fields=1, kernel_size=3, hidden=8, classes=3))
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(24, 1, 8, 8, generator=g), torch.randint(0, 3, (24,), generator=g)

    def train(net, device):
        opt = torch.optim.Adam(net.weights(), 1e-2)
        zopt = torch.optim.Adam(net.alphas(), 1e-2)
        loss = equinas.train_steps(net, x.to(device), y.to(device), opt, 0, 3, batch_size=8,
                                   z_optimizer=zopt)
        return opt, {"loss": torch.tensor(loss, dtype=torch.float64), **state(net)}

    # head.0 is a Linear followed by BatchNorm1d: its bias's gradient is 0 up to rounding, which
    # Adam's first steps (g / |g|) would turn into +-lr steps of arbitrary sign (followed by the
    # BatchNorm's running mean): frozen on both
    for net in (cpu, d):
        net.head[0].bias.requires_grad_(False)
    (opt, res_dev), (_, res_cpu) = run_twice(cpu, d, dev, train)
    assert_on(dev, d, opt, res_dev)
    close_all(res_dev, res_cpu, (1e-3, 1e-3), "equinas", FLOOR)
    d.eval()
    relaxed = equinas.relax_network(d, 1, "C2").eval()         # new layers start in training
    assert_on(dev, relaxed)
    with torch.no_grad():
        close(relaxed(x.to(dev)), d(x.to(dev)), *FP32, what="relaxed network")


# ------------------------------------------------------------------------------------------
# EG-NAS (egnas.py)
# ------------------------------------------------------------------------------------------

def _eg_supernet():
    """BioNAS-EG's supernet (no `none`) on 9 candidates with brsf: a 1-node, 3-cell toy."""
    return darts.Network(2, 3, 3, ops.search_space(zero=False, **SMALL), steps=1, multiplier=1,
                         in_channels=1)


def test_egnas_exploration_matches_cpu(dev):
    """One EG-NAS exploration (egnas.explore: 2 CMA-ES runs of 5 individuals, each scored by
    the compound fitness on the supernet) and the searcher's alpha update, on a float64
    supernet (the fitness ranks and accuracy comparisons are discrete decisions): the same
    best accuracy (exactly), and the mixing weights and updated alpha within FP32 (the
    weights are a float32 softmax of the CMA-ES individual, compound_fitness); alpha, the
    searcher's momentum `s` and the returned weights on the device."""
    cpu, d = twin(dev, _eg_supernet, dtype=torch.float64)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(8, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=g)

    def explore(net, device):
        w, acc = egnas.explore(net, x.to(device), y.to(device), epoch=1, samples=2,
                               population_size=5, seed=3)
        searcher = egnas.EGNASSearcher(net, samples=1, population_size=4, warm_start_epochs=0,
                                       pop_momentum=0.5, log=lambda *a: None)
        searcher.step(None, None, x.to(device), y.to(device), 0.1, None, epoch=0)
        return searcher, {"acc": torch.tensor(acc, dtype=torch.float64), "w normal": w[0],
                          "w reduce": w[1], **state(net)}

    (s_dev, res_dev), (_, res_cpu) = run_twice(cpu, d, dev, explore)
    assert_on(dev, d, s_dev, res_dev)
    assert float(res_dev.pop("acc")) == float(res_cpu.pop("acc"))
    close_all(res_dev, res_cpu, FP32, "egnas")
