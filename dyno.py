"""DYNO: growing and pruning neurons while the task changes (Maile's thesis, Ch. 7).

Source: K. Maile, "Dynamic Architectural Optimization of Artificial Neural Networks", Sec. 7.1-7.3
(Algorithm 5, Eqs. 37-39). Built on neurogenesis.py: the effective dimension (Eq. 37 is Eq. 27),
the input buffer, GrowableNet's grow/prune operations and NORTH-Select (INIT_GROW, from
neurogenesis_init.py through GrowableNet.grow).

Every `every` (50) iterations, before that cycle's gradient steps (Algorithm 5), for each hidden
layer l (the output layer is never resized):
  1. phi = phi_ED(f, l) on the buffer (recomputed through the current network);
  2. TRIG_PRUNE (Eq. 38) neurons removed, chosen by SELECT_PRUNE (dormant first, then greedy
     cosine similarity);
  3. phi re-measured; TRIG_GROW (Eq. 39) neurons added by NORTH-Select from 100 x TRIG_GROW
     candidates;
  4. if the layer changed, phi* <- its phi re-measured on the new structure.
phi* starts as the layer's metric on the source (pre-training) data when start() is given it,
else 1 (the authors' code on Imagenette / Imagewoof). Eqs. 38-39 print min(0, ...); the positive
part is meant (the authors' code). Defaults: delta 3e-2, eps 1e-2, every 50 (Sec. 7.3); the
buffer holds 2 x the widest dense layer + 1 inputs (at least 128) and grows with it.
A layer whose phi is 1 (full rank at eps) while phi* >= 1 / (1 + delta) is frozen: Eq. 38 needs
phi < (1 - delta) phi* and Eq. 39 needs phi > (1 + delta) phi* > 1, so neither can fire until the
layer loses rank; each evaluation logs phi and this per layer, and warns if every layer is frozen.
"""
import math
import time
import warnings

import torch
import torch.nn.functional as F

from neurogenesis import Buffer, activation_metric, as_samples


def trig_prune(m, phi, phi_star, delta=3e-2):
    """Eq. 38: max(0, floor(M ((1 - delta) phi* - phi)))."""
    return max(0, math.floor(m * ((1 - delta) * phi_star - phi) + 1e-9))


def trig_grow(m, phi, phi_star, delta=3e-2):
    """Eq. 39: max(0, floor(M (phi - (1 + delta) phi*))); phi <= 1, so phi* >= 1/(1 + delta)
    never grows."""
    return max(0, math.floor(m * (phi - (1 + delta) * phi_star) + 1e-9))


def select_prune(h, k):
    """SELECT_PRUNE (Sec. 7.2): k neuron indices of activations h (samples x M, or conv maps):
    first the dormant ones (all zero on h, lowest index first), then, greedily, the neuron whose
    cosine similarities of normalized post-activations with the other remaining neurons have the
    largest norm."""
    h = as_samples(h).double()
    norms = h.norm(dim=0)
    dormant = torch.nonzero(norms == 0).flatten().tolist()
    chosen = dormant[:k]
    alive = [i for i in range(h.shape[1]) if i not in dormant]
    if len(chosen) < k and alive:
        a = h[:, alive] / norms[alive]
        sim = a.t() @ a
        sim.fill_diagonal_(0)
        left = list(range(len(alive)))
        while len(chosen) < k and left:
            row = sim[left][:, left].norm(dim=1)
            j = left[int(row.argmax())]
            chosen.append(alive[j])
            left.remove(j)
    return chosen


def flops(model):
    """Inference FLOPs per input of a GrowableNet: 2 per multiply-add of the convolutions
    (3x3, 'same' size) and dense layers; BatchNorm, ReLU and pooling are left out."""
    total = 0
    for l, layer in enumerate(model.layers):
        w = layer.weight
        total += 2 * w.numel() * (model.sizes[l] ** 2 if model.kinds[l] == "conv" else 1)
    return total + 2 * model.head.weight.numel()


class DYNO:
    """Algorithm 5 with DYNO's triggers and selections on a GrowableNet and its optimizer (the
    thesis: Adam 3e-4, weight decay 1e-3). step(x, y): a grow-and-prune evaluation when
    steps % every == 0 (before the step), then one gradient step. start(x_target, x_source)
    fills the buffer with target inputs and sets phi* from the source inputs.
    history["evaluations"]: per evaluation the step, widths, neurons pruned and grown, phi before
    the changes, frozen (module docstring) and phi* per layer.
    Checkpoint: state_dict(); to resume, build model and optimizer as at the start (the
    pretrained widths), then load_state_dict() (it reshapes the model first)."""

    def __init__(self, model, optimizer, every=50, delta=3e-2, eps=1e-2, candidates_per_neuron=100,
                 min_buffer=128, loss_fn=F.cross_entropy, seed=0):
        self.model, self.optimizer, self.every, self.delta, self.eps = model, optimizer, every, delta, eps
        self.candidates_per_neuron, self.min_buffer, self.loss_fn = candidates_per_neuron, min_buffer, loss_fn
        self.buffer = Buffer(self._buffer_size())
        self.phi_star = [1.0] * len(model.layers)
        self.steps, self.generator = 0, torch.Generator().manual_seed(seed)
        self.history = dict(evaluations=[], pretrained_widths=list(model.widths), flops=[(0, flops(model))])
        self.seconds = dict(step=0.0, structure=0.0)

    def _buffer_size(self):
        dense = [w for w, k in zip(self.model.widths, self.model.kinds) if k == "dense"]
        return max(self.min_buffer, 2 * max(dense, default=0) + 1)

    def _samples(self, l):
        return len(self.buffer) * (self.model.sizes[l] ** 2 if self.model.kinds[l] == "conv" else 1)

    def _phi(self, l):
        return activation_metric(self.buffer.activations(self.model)[3][l], self.eps)

    @torch.no_grad()
    def start(self, x_target, x_source=None):
        """Fill the buffer with target inputs; phi* <- each layer's metric on x_source (if given)."""
        if x_source is not None:
            src = Buffer(len(x_source))
            src.push(x_source)
            posts = src.activations(self.model)[3]
            self.phi_star = [activation_metric(h, self.eps) for h in posts]
        self.buffer.push(x_target[-self.buffer.size:])

    def grow_and_prune(self):
        """One evaluation of Algorithm 5's inner loop over the hidden layers; returns
        [(layer, pruned, grown)]."""
        m, t0, changes, phis, frozen = self.model, time.perf_counter(), [], [], []
        for l in range(len(m.layers)):
            if self._samples(l) <= m.widths[l]:
                changes.append((l, 0, 0))       # Eq. 37 needs more samples than neurons: wait for the buffer
                phis.append(None)
                frozen.append(False)
                continue
            phi, pruned, grown = self._phi(l), 0, 0
            phis.append(phi)
            frozen.append(phi >= 1.0 and self.phi_star[l] * (1 + self.delta) >= 1.0)
            k = min(trig_prune(m.widths[l], phi, self.phi_star[l], self.delta), m.widths[l] - 1)
            if k > 0:
                m.prune_neurons(l, select_prune(self.buffer.activations(m)[3][l], k), self.optimizer)
                self.buffer.stale()
                pruned, phi = k, self._phi(l)
            k = trig_grow(m.widths[l], phi, self.phi_star[l], self.delta)
            if k > 0:
                grown = m.grow(l, k, "NORTH-Select", self.optimizer, acts=self.buffer.activations(m),
                               candidates=(self.candidates_per_neuron - 1) * k, generator=self.generator)
                self.buffer.stale()
            if pruned or grown:
                self.phi_star[l] = self._phi(l)
            changes.append((l, pruned, grown))
        self.buffer.size = max(self.buffer.size, self._buffer_size())
        self.history["evaluations"].append(dict(step=self.steps, widths=list(m.widths),
                                                pruned=[c[1] for c in changes], grown=[c[2] for c in changes],
                                                phi=phis, frozen=frozen, phi_star=list(self.phi_star)))
        if all(frozen):
            warnings.warn(f"DYNO at step {self.steps}: every hidden layer is frozen (phi = 1 at eps {self.eps} and "
                          f"phi* >= 1 / (1 + delta)): Eq. 38 cannot prune and Eq. 39 cannot grow until a layer "
                          f"loses rank on the target data; this network will stay {m.widths}", stacklevel=3)
        self.history["flops"].append((self.steps, flops(m)))
        self.seconds["structure"] += time.perf_counter() - t0
        return changes

    def step(self, x, y):
        """Algorithm 5: grow-and-prune every `every` steps, then a gradient step; returns the loss."""
        if self.steps % self.every == 0 and len(self.buffer):
            self.grow_and_prune()
        t0 = time.perf_counter()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        self.buffer.push(x)
        self.steps += 1
        self.seconds["step"] += time.perf_counter() - t0
        return float(loss.detach())

    def state_dict(self):
        return dict(widths=self.model.widths, model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                    buffer=self.buffer.state_dict(), phi_star=self.phi_star, steps=self.steps,
                    generator=self.generator.get_state(), history=self.history, seconds=self.seconds)

    def load_state_dict(self, s):
        self.model.set_widths(s["widths"])
        self.model.load_state_dict(s["model"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.buffer.load_state_dict(s["buffer"])
        self.phi_star, self.steps, self.history, self.seconds = s["phi_star"], s["steps"], s["history"], s["seconds"]
        self.generator.set_state(s["generator"])


if __name__ == "__main__":
    # Demo: Eqs. 38-39 for a layer of M = 100 neurons, then both on tiny nets. 12 of 32 neurons
    # made dormant lower phi to 20/32 < (1 - delta) phi* = 0.97: Eq. 38 prunes 11, dormant first.
    # Source inputs along one direction give phi* = 2/16 (ReLUs of one variable span two functions);
    # on the 16-dimensional target phi is 1 and Eq. 39 grows 13 neurons by NORTH-Select.
    print("M = 100, phi* = 1:   " + ", ".join(f"phi {p}: prune {trig_prune(100, p, 1.0)}" for p in (0.5, 0.9, 0.97)))
    print("M = 100, phi* = 0.5: " + ", ".join(f"phi {p}: grow {trig_grow(100, p, 0.5)}" for p in (0.5, 0.6, 0.9)))
    from neurogenesis import GrowableMLP
    torch.manual_seed(0)
    x = torch.randn(512, 16)
    y = (x[:, 0] + x[:, 1] > 0).long()
    net = GrowableMLP(16, [32], 2)
    with torch.no_grad():
        net.layers[0].weight[20:], net.layers[0].bias[20:] = 0.0, -1.0          # 12 dormant neurons
    d = DYNO(net, torch.optim.Adam(net.parameters(), 1e-2))
    d.start(x)
    print(f"12 of 32 neurons dormant: (layer, pruned, grown) {d.grow_and_prune()}, widths {net.widths}")
    net = GrowableMLP(16, [16], 2)
    d = DYNO(net, torch.optim.Adam(net.parameters(), 1e-2), every=10)
    d.start(x, x * torch.eye(16)[0])                                              # the source: x_1 only
    print(f"source inputs along x_1: phi* = {d.phi_star[0]:.3f}; 20 steps on the 16-dimensional target:")
    for step in range(20):
        idx = torch.randint(0, 512, (64,))
        loss = d.step(x[idx], y[idx])
    for e in d.history["evaluations"]:
        print(f"  step {e['step']:2d}: grown {e['grown']}, pruned {e['pruned']}, widths {e['widths']}, "
              f"phi* {e['phi_star']}")
    print(f"  loss {loss:.3f}")
