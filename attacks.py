"""Adversarial attacks and robustness tables for networks trained with bio-inspired rules.

BioNAS (Hamzaoui & Baghdadi) Sec. 2.4, 3.5 and Table 2 evaluate FGSM, PGD, TPGD, APGD and
the one-pixel attack; the plasticity-rules paper (Sec. 4, App. A.3) uses a targeted,
multi-step, raw-gradient L2 attack. All attacks here work in [0, 1] pixel space on a model
that takes [0, 1] images (prepend `Normalize` to a network trained on normalized inputs).

Which gradient the attacker sees: a layer trained with feedback alignment back-propagates
through its feedback matrix B, not W, so a plain autograd call on such a model returns the
feedback path's "gradient", not the true input gradient. Every attack takes
    grad="exact"     (default) the attack runs inside rules.exact_gradients(model): true
                     input gradients, as if every layer were bp, same weights;
    grad="feedback"  what a plain autograd call sees (the setting of the BioNAS paper).
For a model without rule layers (or with bp layers only) both are the same.

Every attack puts the model in eval mode and restores each module's previous mode, computes
gradients with torch.autograd.grad with respect to the input only (parameter .grad fields are
never touched), adds no copies of the model, has no per-image Python loop, runs on x's device
and returns adversarial images clipped to [0, 1] inside the attack's eps-ball.

Only torch and rules.py are imported.
"""
import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

import rules

GRADS = ("exact", "feedback")


class Normalize(nn.Module):
    """(x - mean) / std per channel; prepend to a network so that it takes [0, 1] images.

    mean/std are scalars or per-channel sequences (for NCHW inputs). The buffers are not
    persistent, so nn.Sequential(Normalize(m, s), net) has net's state_dict keys under "1.".
    """

    def __init__(self, mean, std):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32)
        std = torch.as_tensor(std, dtype=torch.float32)
        if mean.dim() == 1:
            mean = mean.view(-1, 1, 1)
        if std.dim() == 1:
            std = std.view(-1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, x):
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


# ----------------------------------------------------------------------------------------
# Shared machinery: attack mode, logits, input gradients
# ----------------------------------------------------------------------------------------

@contextlib.contextmanager
def attack_mode(model, grad="exact"):
    """Eval mode (each module's own mode restored on exit) and, for grad="exact",
    rules.exact_gradients(model)."""
    if grad not in GRADS:
        raise ValueError(f"grad must be one of {GRADS}, got {grad!r}")
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        if grad == "exact":
            with rules.exact_gradients(model):
                yield model
        else:
            yield model
    finally:
        for m, training in modes:
            m.training = training


def _logits(model, x):
    """The model's logits (the first output if it returns a tuple, e.g. DARTS aux heads)."""
    out = model(x)
    return out[0] if isinstance(out, (tuple, list)) else out


def _grad_of(model, x, loss_fn):
    """(d sum_i loss_i / dx, per-image loss, logits) with gradients w.r.t. x only."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = _logits(model, x)
        loss = loss_fn(logits)
        g, = torch.autograd.grad(loss.sum(), x)
    return g.detach(), loss.detach(), logits.detach()


def _ce(y):
    return lambda z: F.cross_entropy(z, y, reduction="none")


def input_gradient(model, x, y, grad="exact"):
    """The gradient of the summed cross-entropy w.r.t. the input, as the attacker sees it.

    With reduction "sum" every image's gradient is the gradient of its own loss.
    """
    with attack_mode(model, grad):
        return _grad_of(model, x, _ce(y))[0]


@torch.no_grad()
def predict(model, x):
    """Predicted labels in eval mode (the model's modes are restored)."""
    with attack_mode(model, "feedback"):
        return _logits(model, x).argmax(1)


def _linf_project(x_adv, x, eps):
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def _per_image(v, x):
    """Reshape a per-image vector (n,) to broadcast against x (n, ...)."""
    return v.view((-1,) + (1,) * (x.dim() - 1))


# ----------------------------------------------------------------------------------------
# FGSM, PGD, TPGD
# ----------------------------------------------------------------------------------------

def fgsm(model, x, y, eps, grad="exact"):
    """Fast gradient sign method (Goodfellow et al. 2014): x + eps * sign(grad_x L(x, y))."""
    with attack_mode(model, grad):
        g = _grad_of(model, x, _ce(y))[0]
        return (x + eps * g.sign()).clamp(0.0, 1.0).detach()


def pgd(model, x, y, eps, alpha, steps, random_start=True, grad="exact"):
    """L-inf projected gradient descent (Madry et al. 2018): from a uniform random start in
    the eps-ball, `steps` steps x <- P(x + alpha * sign(grad_x L)); returns the last iterate."""
    with attack_mode(model, grad):
        x_adv = x.detach().clone()
        if random_start:
            x_adv = (x_adv + torch.empty_like(x).uniform_(-eps, eps)).clamp(0.0, 1.0)
        for _ in range(steps):
            g = _grad_of(model, x_adv, _ce(y))[0]
            x_adv = _linf_project(x_adv + alpha * g.sign(), x, eps)
        return x_adv.detach()


def tpgd(model, x, eps, alpha, steps, grad="exact"):
    """TRADES PGD (Zhang et al. 2019): L-inf PGD maximizing KL(p(x) || p(x_adv)) from the
    clean prediction p(x); no label is needed. Start: x + 0.001 * N(0, 1), as in TRADES."""
    with attack_mode(model, grad):
        with torch.no_grad():
            p_clean = F.softmax(_logits(model, x), 1)

        def kl(z):
            return F.kl_div(F.log_softmax(z, 1), p_clean, reduction="none").sum(1)

        x_adv = (x + 0.001 * torch.randn_like(x)).clamp(0.0, 1.0)
        x_adv = _linf_project(x_adv, x, eps)
        for _ in range(steps):
            g = _grad_of(model, x_adv, kl)[0]
            x_adv = _linf_project(x_adv + alpha * g.sign(), x, eps)
        return x_adv.detach()


# ----------------------------------------------------------------------------------------
# APGD (Croce & Hein 2020)
# ----------------------------------------------------------------------------------------

def apgd_checkpoints(steps):
    """Checkpoints w_j = ceil(p_j * N_iter) <= N_iter with p_0 = 0, p_1 = 0.22 and
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (Croce & Hein 2020, Sec. 3.2).
    p is kept in exact hundredths so that e.g. 0.22 * 50 gives 11, not 12."""
    p = [0, 22]                                            # hundredths
    while p[-1] <= 100:
        p.append(p[-1] + max(p[-1] - p[-2] - 3, 6))
    w = sorted({-(-pj * steps // 100) for pj in p})        # exact ceil(pj * steps / 100)
    return [wj for wj in w if wj <= steps]


def dlr_loss(z, y):
    """Difference of logits ratio (Croce & Hein 2020, Eq. 8):
    -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3), pi the logits sorted decreasingly."""
    if z.shape[1] < 3:
        raise ValueError("the DLR loss needs at least 3 classes")
    zs = z.sort(1, descending=True)[0]
    z_y = z.gather(1, y[:, None])[:, 0]
    z_other = z.scatter(1, y[:, None], float("-inf")).amax(1)
    return -(z_y - z_other) / (zs[:, 0] - zs[:, 2] + 1e-12)


def _apgd_run(model, x, y, eps, steps, loss_fn, rho=0.75, momentum=0.75):
    """One run of APGD (Croce & Hein 2020, Alg. 1) on a batch; per-image step sizes.

    Returns (x_out, broken): x_out is, per image, the last misclassified iterate if any,
    else the iterate of highest loss.
    """
    n = x.shape[0]
    t = 2 * torch.rand_like(x) - 1                         # random point on the ball's surface
    x_adv = (x + eps * t / _per_image(t.flatten(1).abs().amax(1), x)).clamp(0.0, 1.0)
    step = torch.full((n,), 2.0 * eps, device=x.device, dtype=x.dtype)
    g, loss, logits = _grad_of(model, x_adv, loss_fn)
    broken = logits.argmax(1) != y
    x_broken = x_adv.clone()
    x_max, loss_max, g_max = x_adv.clone(), loss.clone(), g.clone()
    x_prev = x_adv.clone()
    loss_prev = loss
    n_increase = torch.zeros(n, device=x.device)
    loss_max_at_check = loss_max.clone()
    reduced_at_check = torch.ones(n, dtype=torch.bool, device=x.device)
    checkpoints = apgd_checkpoints(steps)
    last_check = 0
    for k in range(steps):
        a = 1.0 if k == 0 else momentum                    # x^(1) is a plain step
        s = _per_image(step, x)
        z = _linf_project(x_adv + s * g.sign(), x, eps)
        x_new = _linf_project(x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_prev), x, eps)
        x_prev, x_adv = x_adv, x_new
        g, loss, logits = _grad_of(model, x_adv, loss_fn)
        mis = logits.argmax(1) != y
        x_broken = torch.where(_per_image(mis, x), x_adv, x_broken)
        broken |= mis
        n_increase += (loss > loss_prev).float()
        loss_prev = loss
        better = loss > loss_max
        b = _per_image(better, x)
        x_max, g_max = torch.where(b, x_adv, x_max), torch.where(b, g, g_max)
        loss_max = torch.where(better, loss, loss_max)
        if k + 1 in checkpoints[1:]:
            # Condition 1: fewer than rho * (w_j - w_{j-1}) steps increased the loss.
            cond1 = n_increase < rho * (k + 1 - last_check)
            # Condition 2: step size not reduced at the last checkpoint and f_max unchanged
            # (not applied at the first checkpoint, as in the authors' code).
            cond2 = ~reduced_at_check & (loss_max_at_check >= loss_max)
            reduce = cond1 | cond2
            step = torch.where(reduce, step / 2.0, step)
            r = _per_image(reduce, x)
            x_adv, g = torch.where(r, x_max, x_adv), torch.where(r, g_max, g)  # restart at x_max
            reduced_at_check, loss_max_at_check = reduce, loss_max.clone()
            n_increase.zero_()
            last_check = k + 1
    return torch.where(_per_image(broken, x), x_broken, x_max), broken


def apgd(model, x, y, eps, steps, restarts=1, loss="ce", grad="exact", rho=0.75):
    """Auto-PGD, L-inf (Croce & Hein 2020): step size 2*eps halved per image at the
    checkpoints apgd_checkpoints(steps) when (1) fewer than rho of the steps since the last
    checkpoint increased the loss or (2) neither the step size nor the best loss changed since
    the last checkpoint, restarting from the best point; momentum 0.75. `restarts` runs from
    random starts, each on the images not yet misclassified. loss: "ce" or "dlr"."""
    if loss not in ("ce", "dlr"):
        raise ValueError(f"loss must be 'ce' or 'dlr', got {loss!r}")
    with attack_mode(model, grad):
        x_out = x.detach().clone()
        with torch.no_grad():
            robust = _logits(model, x).argmax(1) == y
        for _ in range(restarts):
            idx = robust.nonzero()[:, 0]
            if idx.numel() == 0:
                break
            xi, yi = x[idx].detach(), y[idx]
            fn = _ce(yi) if loss == "ce" else (lambda z, yi=yi: dlr_loss(z, yi))
            adv, broken = _apgd_run(model, xi, yi, eps, steps, fn, rho)
            x_out[idx] = adv                              # best-loss point if not broken
            robust[idx[broken]] = False
        return x_out


# ----------------------------------------------------------------------------------------
# One-pixel attack (Su et al. 2019)
# ----------------------------------------------------------------------------------------

def _paint(x, img, cand, pixels):
    """Images x[img] with the candidates' pixels written in; cand (m, pixels*(2+C))."""
    out = x[img].clone()
    c, h, w = x.shape[1:]
    rows = torch.arange(out.shape[0], device=x.device)
    for j in range(pixels):                                # a loop over pixels, not images
        p = cand[:, j * (2 + c):(j + 1) * (2 + c)]
        r = p[:, 0].round().long().clamp(0, h - 1)
        q = p[:, 1].round().long().clamp(0, w - 1)
        out[rows, :, r, q] = p[:, 2:].to(x.dtype)
    return out


@torch.no_grad()
def _fitness(model, x, y, img, cand, pixels, chunk):
    """(probability of the true class, misclassified) of each candidate, in chunks."""
    prob, mis = [], []
    for s in range(0, img.numel(), chunk):
        z = _logits(model, _paint(x, img[s:s + chunk], cand[s:s + chunk], pixels))
        yy = y[img[s:s + chunk]]
        prob.append(F.softmax(z.float(), 1).gather(1, yy[:, None])[:, 0])
        mis.append(z.argmax(1) != yy)
    return torch.cat(prob), torch.cat(mis)


@torch.no_grad()
def one_pixel(model, x, y, pixels, steps=100, popsize=400, F_scale=0.5, chunk=8192,
              grad="exact"):
    """Differential-evolution attack changing at most `pixels` pixels (Su et al. 2019).

    A candidate encodes `pixels` tuples (row, col, value of each channel). DE/rand/1 without
    crossover: child_i = c_r1 + F (c_r2 - c_r3), r1, r2, r3 distinct; a child replaces its
    parent if it lowers the true-class probability. Coordinates start uniform over the image,
    values ~ N(0.5, 0.5) clipped to [0, 1] (Su et al.'s N(128, 127) on [0, 255]). An image
    stops as soon as one candidate misclassifies it. Images are NCHW in [0, 1]; all images x
    population are evaluated together in forwards of at most `chunk` images. `grad` is
    accepted for a uniform signature; the attack uses no gradient.
    """
    if x.dim() != 4:
        raise ValueError(f"one_pixel needs NCHW images, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    dev, P, D = x.device, popsize, pixels * (2 + c)
    if P < 4:
        raise ValueError("differential evolution needs popsize >= 4")
    with attack_mode(model, grad):
        x = x.detach()
        x_out = x.clone()
        active = (_logits(model, x).argmax(1) == y).nonzero()[:, 0]   # images still robust
        lo = torch.zeros(D, device=dev)
        hi = torch.ones(D, device=dev)
        lo.view(pixels, 2 + c)[:, :2] = -0.5
        hi.view(pixels, 2 + c)[:, 0] = h - 0.5
        hi.view(pixels, 2 + c)[:, 1] = w - 0.5
        m = active.numel()
        pop = torch.empty(m, P, D, device=dev)
        pv = pop.view(m, P, pixels, 2 + c)
        pv[..., 0].uniform_(-0.5, h - 0.5)
        pv[..., 1].uniform_(-0.5, w - 0.5)
        pv[..., 2:].normal_(0.5, 0.5).clamp_(0.0, 1.0)

        def evaluate(cand):                                 # cand (m, P, D) for `active`
            img = active.repeat_interleave(P)
            prob, mis = _fitness(model, x, y, img, cand.reshape(-1, D), pixels, chunk)
            return prob.view(-1, P), mis.view(-1, P)

        def retire(pop, fit, mis):                          # write out and drop broken images
            hit = mis.any(1)
            if hit.any():
                first = mis.float().argmax(1)[hit]
                x_out[active[hit]] = _paint(x, active[hit], pop[hit, first], pixels)
            return ~hit

        fit, mis = evaluate(pop) if m else (None, None)
        keep = retire(pop, fit, mis) if m else None
        for _ in range(steps):
            if m == 0 or not keep.any():
                break
            active, pop, fit = active[keep], pop[keep], fit[keep]
            m = active.numel()
            r1 = torch.randint(0, P, (m, P), device=dev)
            b = torch.randint(1, P, (m, P), device=dev)
            c3 = torch.randint(1, P - 1, (m, P), device=dev)
            c3 = c3 + (c3 >= b).long()                      # an offset in [1, P) other than b
            r2, r3 = (r1 + b) % P, (r1 + c3) % P
            pick = lambda r: pop.gather(1, r[..., None].expand(-1, -1, D))  # noqa: E731
            child = torch.max(torch.min(pick(r1) + F_scale * (pick(r2) - pick(r3)), hi), lo)
            cfit, cmis = evaluate(child)
            better = cfit < fit
            pop = torch.where(better[..., None], child, pop)
            fit = torch.where(better, cfit, fit)
            keep = retire(child, cfit, cmis)
        if m and keep.any():                                # not broken: the best candidate
            active, pop, fit = active[keep], pop[keep], fit[keep]
            best = fit.argmin(1)
            x_out[active] = _paint(x, active, pop[torch.arange(active.numel(), device=dev),
                                                   best], pixels)
        return x_out


# ----------------------------------------------------------------------------------------
# Targeted L2 attack of the plasticity-rules paper
# ----------------------------------------------------------------------------------------

def targeted_l2(model, x, y, eps, alpha, steps, grad="exact", return_broken=False):
    """The plasticity-rules paper's attack (Sec. 4, App. A.3): for every target y' != y,
    `steps` steps x <- Pi(x - alpha * grad_x L(x, y')) along the raw gradient (not its sign),
    Pi = projection on the L2 ball of radius eps around x, then clipping to [0, 1]; an image
    is broken if any of its targets ends misclassified. Inputs may have any shape (n, ...).

    Returns the adversarial images: per image, a misclassified candidate if one exists, else
    the one of smallest margin z_y - max_{j != y} z_j. With return_broken=True returns
    (images, broken) where broken[i] says whether some target succeeded. All K-1 targets run
    in one batch of n*(K-1) inputs.
    """
    with attack_mode(model, grad):
        x = x.detach()
        n = x.shape[0]
        with torch.no_grad():
            k = _logits(model, x[:1]).shape[1]
        cls = torch.arange(k, device=x.device).expand(n, k)
        targets = cls[cls != y[:, None]].view(n, k - 1).reshape(-1)
        x0 = x.repeat_interleave(k - 1, 0)
        x_adv = x0.clone()
        for _ in range(steps):
            g = _grad_of(model, x_adv, _ce(targets))[0]
            delta = (x_adv - alpha * g) - x0
            norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
            delta = delta * _per_image((eps / norm).clamp(max=1.0), x0)
            x_adv = (x0 + delta).clamp(0.0, 1.0)
        with torch.no_grad():
            z = _logits(model, x_adv)
        yr = y.repeat_interleave(k - 1)
        mis = (z.argmax(1) != yr).view(n, k - 1)
        margin = (z.gather(1, yr[:, None])[:, 0]
                  - z.scatter(1, yr[:, None], float("-inf")).amax(1)).view(n, k - 1)
        choice = torch.where(mis, torch.full_like(margin, float("-inf")), margin).argmin(1)
        out = x_adv.view((n, k - 1) + x.shape[1:])[torch.arange(n, device=x.device), choice]
        return (out, mis.any(1)) if return_broken else out


# ----------------------------------------------------------------------------------------
# Presets, robust accuracy and the BioNAS Table 2 layout
# ----------------------------------------------------------------------------------------

def _tpgd_xy(model, x, y, **kw):
    """tpgd with the common signature f(model, x, y, **kw) (y is unused)."""
    return tpgd(model, x, **kw)


# name -> attack with the common signature f(model, x, y, grad=..., **kw)
ATTACKS = {"fgsm": fgsm, "pgd": pgd, "tpgd": _tpgd_xy, "apgd": apgd, "onepixel": one_pixel,
           "targeted_l2": targeted_l2}
GRADIENT_FREE = ("onepixel",)                              # same result for both grad modes

# BioNAS Sec. 3.5 ("bionas") and eps = 8/255 throughout ("standard").
PRESETS = {
    "bionas": {
        "fgsm": dict(eps=0.35),
        "pgd": dict(eps=0.35, alpha=2 / 255, steps=10, random_start=True),
        "tpgd": dict(eps=8 / 255, alpha=2 / 255, steps=7),
        "apgd": dict(eps=8 / 255, steps=50, restarts=1, loss="ce"),
        "onepixel": dict(pixels=(1, 2, 3, 4, 5), steps=100, popsize=400),
    },
    "standard": {
        "fgsm": dict(eps=8 / 255),
        "pgd": dict(eps=8 / 255, alpha=2 / 255, steps=10, random_start=True),
        "tpgd": dict(eps=8 / 255, alpha=2 / 255, steps=7),
        "apgd": dict(eps=8 / 255, steps=50, restarts=1, loss="ce"),
        "onepixel": dict(pixels=(1, 2, 3, 4, 5), steps=100, popsize=400),
    },
}


def attack_columns(names, preset="bionas", overrides=None):
    """[(column, attack_name, kwargs)] for the attacks `names`, in Table 2 order.

    kwargs are PRESETS[preset][name] updated with overrides.get(name, {}); "onepixel" expands
    to one column "onepixel-k" per k in its `pixels` (an int or a sequence).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets are: {', '.join(PRESETS)}")
    overrides = overrides or {}
    order = ["onepixel", "fgsm", "pgd", "tpgd", "apgd", "targeted_l2"]
    for name in names:
        if name not in ATTACKS:
            raise ValueError(f"unknown attack {name!r}; valid attacks are: {', '.join(ATTACKS)}")
    cols = []
    for name in sorted(set(names), key=order.index):
        kw = dict(PRESETS[preset].get(name, {}), **overrides.get(name, {}))
        if name == "onepixel":
            pix = kw.pop("pixels")
            for p in ([pix] if isinstance(pix, int) else pix):
                cols.append((f"onepixel-{p}", name, dict(kw, pixels=p)))
        else:
            cols.append((name, name, kw))
    return cols


def _device(model):
    t = next(model.parameters(), None)
    if t is None:
        t = next(model.buffers(), None)
    return t.device if t is not None else torch.device("cpu")


def _attack_correct(model, x, y, attack, grad, kw):
    fn = ATTACKS[attack] if isinstance(attack, str) else attack
    adv = fn(model, x, y, grad=grad, **kw)
    return (predict(model, adv) == y).sum().item()


def robust_accuracy(model, loader, attack, grad="exact", max_batches=None, **kw):
    """Accuracy (percent) of `model` on the adversarial images of `attack` (a name in ATTACKS
    or a function f(model, x, y, grad=..., **kw)) over `loader`'s (x, y) batches."""
    dev, correct, total = _device(model), 0, 0
    for b, (x, y) in enumerate(loader):
        if max_batches is not None and b >= max_batches:
            break
        x, y = x.to(dev), y.to(dev)
        correct += _attack_correct(model, x, y, attack, grad, kw)
        total += y.numel()
    return 100.0 * correct / max(total, 1)


def evaluate_robustness(model, loader, attacks, grads=GRADS, max_batches=None,
                        preset="bionas", overrides=None):
    """The BioNAS Table 2 layout: one row per gradient mode with columns grad, clean and the
    attack columns of attack_columns(attacks, preset, overrides), accuracies in percent.

    One pass over the loader; gradient-free attacks (one-pixel) run once per batch and are
    shared by the rows. In each batch, every attack column draws the same random numbers
    (random starts) in every row, so rows differ only by the gradient the attacker sees; the
    global random state advances by one draw per batch. Returns a list of dicts (see to_markdown, to_csv).
    """
    grads = (grads,) if isinstance(grads, str) else tuple(grads)
    cols = attack_columns(attacks, preset, overrides)
    dev = _device(model)
    counts = {g: {c: 0 for c, _, _ in [("clean", None, None)] + cols} for g in grads}
    total = 0
    for b, (x, y) in enumerate(loader):
        if max_batches is not None and b >= max_batches:
            break
        x, y = x.to(dev), y.to(dev)
        total += y.numel()
        clean = (predict(model, x) == y).sum().item()
        seed = int(torch.randint(0, 2 ** 31, ()))
        shared = {}
        for g in grads:
            counts[g]["clean"] += clean
            for j, (col, name, kw) in enumerate(cols):
                if col not in shared:
                    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
                        torch.manual_seed(seed + j)                 # same random starts
                        n_correct = _attack_correct(model, x, y, name, g, kw)
                    if name in GRADIENT_FREE:
                        shared[col] = n_correct
                else:
                    n_correct = shared[col]
                counts[g][col] += n_correct
    return [dict(grad=g, **{c: 100.0 * v / max(total, 1) for c, v in counts[g].items()})
            for g in grads]


def accuracy_vs_eps(model, loader, attack_name, eps_list, grad="exact", max_batches=None,
                    preset="bionas", **kw):
    """[(eps, robust accuracy in percent)] for the attack's preset kwargs updated with kw,
    at each eps of eps_list (the data of an accuracy-against-eps plot)."""
    base = dict(PRESETS[preset].get(attack_name, {}), **kw)
    return [(eps, robust_accuracy(model, loader, attack_name, grad, max_batches,
                                  **dict(base, eps=eps))) for eps in eps_list]


def _columns(rows):
    cols = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    return cols


def _fmt(v):
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def to_markdown(rows):
    """A markdown table of evaluate_robustness rows (accuracies with 2 decimals)."""
    cols = _columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows):
    """CSV text (header line, then one line per row) of evaluate_robustness rows."""
    cols = _columns(rows)
    lines = [",".join(cols)] + [",".join(_fmt(r.get(c, "")) for c in cols) for r in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    # Demo: a linear classifier (a feedback-alignment layer behind Normalize) on two separable
    # classes in [0, 1]^20. For a linear model FGSM is the optimal L-inf attack: an input falls iff
    # its margin z_y - z_other is at most eps * ||grad_x (z_y - z_other)||_1 (the closed form), and
    # PGD can do no better. The "feedback" attacker steps along B instead of W and barely hurts.
    torch.manual_seed(0)
    n, d = 1000, 20
    y = torch.randint(0, 2, (n,))
    x = (0.5 + 0.04 * (2 * y[:, None] - 1) + 0.08 * torch.randn(n, d)).clamp(0.2, 0.8)
    model = nn.Sequential(Normalize(0.5, 0.1), rules.RuleLinear(d, 2, rule="fa"))
    for _ in range(100):                                   # full-batch gradient descent, lr 0.5
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.5 * p.grad
    with torch.no_grad():
        w = model[1].weight
        slope = (w[1] - w[0]) / 0.1                        # grad_x (z_1 - z_0), through Normalize
        z = model(x)
        margin = (2 * y - 1) * (z[:, 1] - z[:, 0])
    acc = lambda a: 100 * (predict(model, a) == y).float().mean().item()   # noqa: E731
    print(f"clean accuracy {acc(x):.1f}%; robust accuracy (%):")
    print("  eps   closed form   FGSM exact   PGD exact   FGSM feedback   PGD feedback")
    for eps in (0.01, 0.02, 0.05, 0.1):
        closed = 100 * (margin > eps * slope.abs().sum()).float().mean().item()
        row = [acc(fgsm(model, x, y, eps)), acc(pgd(model, x, y, eps, eps / 4, 10))]
        row += [acc(fgsm(model, x, y, eps, grad="feedback")), acc(pgd(model, x, y, eps, eps / 4, 10, grad="feedback"))]
        print(f"  {eps:<5} {closed:11.1f} " + " ".join(f"{v:12.1f}" for v in row))
