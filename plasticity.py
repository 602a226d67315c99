"""Learning with plasticity rules: cap-k RNNs trained by learned plasticity rules.

Paper: "Learning with plasticity rules: generalization and robustness" (anonymous, under review;
the authors' code: github.com/BrainNetwork/BrainNet), Sections 2-4 and Appendices A-C.

The simple RNN (Sec. 2): input weights A (|V| x d, each edge present with probability p), a
random directed graph G on V (edge probability p, no self-loops) with weights W (W[j, i] is the
weight of the edge i -> j, so h <- W h), output weights U (labels x |V|). From h = 0, T rounds of

    h <- c_k(ReLU(W h + A x)),        c_k keeps the k largest entries, zeroes the rest
                                      (recurrence="text"; "brainnet": the authors' code,
    h <- c_k(ReLU(W (h + A x) + b)),  the input enters through W, round 1 = c_k(ReLU(A x + b))).

A unit *fires* in a round when its h is non-zero after that round (the paper; `firing="topk"`:
when it is among the k kept, even at zero, as in the authors' code). Firing record ("pattern")
bit order: round 1 is the most significant bit, round T the least significant, so the pattern
"101" (fired in rounds 1 and 3, not 2) has code 5 and `code & 1` says "fired in the last round".

Rules (Sec. 2): the RNN rule r(pre, post) is a 2^T x 2^T table indexed [pre code, post code];
the output rule r_o is a 2^T x 2 table indexed [unit code, b], column b = 0 for the edge into
the true label's output node and b = 1 for the other updated node(s) (App. A.4, App. B).
Additive:  w <- w + eta * r,   multiplicative:  w <- w * (1 + eta * r)   (weights start at 0 / 1).
Updates use only the firing patterns (not the magnitudes of h); no gradient anywhere (A.1).

torch and numpy only (Theorems 3-4's threshold unit and App. C: plasticity_theory.py, re-exported). The
data sets (A.2) and the experiments (Table 2, Figs. 2-6, A.4, the theorems) are in
experiments/plasticity_paper.py: `python train.py --plasticity NAME --seeds ...`.
"""
import contextlib
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from plasticity_theory import evolution_gd_step, evolution_step, simulate_evolution, threshold_rule_run  # noqa: F401


# ----------------------------------------------------------------------------------------
# The simple RNN (Sec. 2)
# ----------------------------------------------------------------------------------------

def cap_k(u, k):
    """The cap c_k (Sec. 2): a copy of each row of u with only its k largest entries kept."""
    if k >= u.shape[-1]:
        return u
    vals, idx = u.topk(k, dim=-1)
    return torch.zeros_like(u).scatter(-1, idx, vals)


class CapRNN(nn.Module):
    """The simple RNN of Sec. 2: A (masked, N(0,1) or all ones), graph G, weights W, U.

    W and U are parameters with requires_grad=False: plasticity rules change them in place;
    train_gd switches gradients on. `input_weights="ones"` is Table 2's starred T=1* network.
    `firing`: "nonzero" (Sec. 2: h_i != 0 after the round) or "topk" (BrainNet: the k kept
    units fire, exactly k per round, even at zero activation). `recurrence`: "text" (Sec. 2,
    W h + A x) or "brainnet" (W (h + A x) + bias: with W = 0, rounds >= 2 are silent).
    """

    def __init__(self, n_in, n_out, num_v=1000, cap=500, p=0.5, rounds=1, seed=None,
                 input_weights="normal", firing="nonzero", recurrence="text", bias=0.0):
        super().__init__()
        _check_choice("input_weights", input_weights, ("normal", "ones"))
        _check_choice("firing", firing, ("nonzero", "topk"))
        _check_choice("recurrence", recurrence, RECURRENCES)
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        self.n_in, self.n_out, self.num_v, self.cap, self.p, self.rounds = n_in, n_out, num_v, cap, p, rounds
        self.firing, self.recurrence, self.bias = firing, recurrence, float(bias)
        a_mask = torch.rand(num_v, n_in, generator=g) < p
        a = torch.randn(num_v, n_in, generator=g) if input_weights == "normal" else torch.ones(num_v, n_in)
        graph = torch.rand(num_v, num_v, generator=g) < p
        graph.fill_diagonal_(False)
        self.register_buffer("A_mask", a_mask.float())
        self.register_buffer("G", graph.float())
        self.A = nn.Parameter(a * self.A_mask, requires_grad=False)
        self.W = nn.Parameter(torch.zeros(num_v, num_v), requires_grad=False)
        self.U = nn.Parameter(torch.zeros(n_out, num_v), requires_grad=False)

    def reset(self, mode="additive"):
        """A.1 step 1: W, U <- 0 (additive) or 1 (multiplicative); W lives on the edges of G."""
        _check_choice("mode", mode, ("additive", "multiplicative"))
        with torch.no_grad():
            self.W.copy_(self.G * (0.0 if mode == "additive" else 1.0))
            self.U.fill_(0.0 if mode == "additive" else 1.0)
        return self

    def fire(self, u):
        """One round's output c_k(u) for u = ReLU(W h + A x), and the 0/1 (long) firing bits."""
        if self.firing == "nonzero" or self.cap >= u.shape[-1]:
            h = cap_k(u, self.cap)
            return h, (h != 0).long() if self.firing == "nonzero" else torch.ones_like(h, dtype=torch.long)
        vals, idx = u.topk(self.cap, dim=-1)
        return (torch.zeros_like(u).scatter(-1, idx, vals),
                torch.zeros(u.shape, dtype=torch.long, device=u.device).scatter(-1, idx, 1))

    def drive(self, h, ax, W):
        """A round's input before ReLU and cap: W h + A x (text) or W (h + A x) + b (BrainNet);
        h and ax are one example (vectors) or a batch (rows)."""
        mv = lambda u: W @ u if u.dim() == 1 else u @ W.t()             # noqa: E731  (mv is faster for one example)
        return mv(h) + ax if self.recurrence == "text" else mv(h + ax) + self.bias

    def input_drive(self, x):
        """A x (+ b for BrainNet's round 1, where h = 0 and W h vanishes)."""
        ax = x @ self.A.t()
        return ax + self.bias if self.recurrence == "brainnet" and self.bias else ax

    def rounds_of(self, x, W=None):
        """Each round's (h, firing bits) for a batch, T rounds from h = 0 (round 1 reads only
        the input)."""
        W = self.W if W is None else W
        ax = x @ self.A.t()
        h, bits = self.fire(F.relu(self.input_drive(x)))
        yield h, bits
        for _ in range(self.rounds - 1):
            h, bits = self.fire(F.relu(self.drive(h, ax, W)))
            yield h, bits

    def hidden(self, x, W=None):
        """The last round's h and the firing patterns (round 1 = most significant bit) for a batch."""
        codes = 0
        for h, bits in self.rounds_of(x, W):
            codes = 2 * codes + bits
        return h, codes

    def active_units(self, x):
        """(batch, T) number of units with h != 0 after each round (top-k firing marks k units
        as firing even at zero drive; those are not counted)."""
        with torch.no_grad():
            return torch.stack([(h != 0).sum(1) for h, _ in self.rounds_of(x)], 1).float()

    def forward(self, x, W=None, U=None):
        """Logits U h after T rounds (a softmax over them is the paper's output)."""
        return self.hidden(x, W)[0] @ (self.U if U is None else U).t()

    def firing_patterns(self, x):
        """(batch, num_v) integer firing patterns (round 1 = most significant bit)."""
        with torch.no_grad():
            return self.hidden(x)[1]


# ----------------------------------------------------------------------------------------
# Rules: tables and the small-network parameterization (Sec. 2, Table 1)
# ----------------------------------------------------------------------------------------

def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_table(table, shape, name="rule table"):
    """Return `table` as a float tensor if it has `shape` and only finite entries, else raise."""
    t = torch.as_tensor(table, dtype=torch.get_default_dtype()) if not torch.is_tensor(table) else table
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite entries")
    return t


class RuleTable(nn.Module):
    """RNN rule r: {0,1}^T x {0,1}^T -> R as a learnable 2^T x 2^T table [pre, post] (Sec. 2);
    unless `table` is given, init="random": N(0, 1) entries drawn from `seed` (the paper's "randomly
    initialize a rule"), "zeros": all zero (BrainNet's output rule)."""
    columns = None                                        # 2^T

    def __init__(self, rounds, table=None, seed=None, init="random"):
        super().__init__()
        _check_choice("init", init, ("random", "zeros"))
        self.rounds = rounds
        shape = (2 ** rounds, self.columns or 2 ** rounds)
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        t = (torch.randn(shape, generator=g) if init == "random" else torch.zeros(shape)) if table is None \
            else check_table(table, shape, type(self).__name__)
        self.weight = nn.Parameter(t.detach().clone().float())

    def table(self):
        return self.weight


class OutputRuleTable(RuleTable):
    """Output rule r_o: {0,1}^T x {0,1} -> R as a learnable 2^T x 2 table (Sec. 2)."""
    columns = 2


def pattern_bits(rounds):
    """(2^T, T) 0/1 matrix: row c is the firing sequence of code c, round 1 first."""
    codes = torch.arange(2 ** rounds)
    return ((codes[:, None] >> torch.arange(rounds - 1, -1, -1)[None, :]) & 1).float()


class MLPRule(nn.Module):
    """Small-network RNN rule (Sec. 2, A.3): an MLP with one hidden layer (20 units) taking the
    pre-synaptic then the post-synaptic firing sequence (2T bits, round 1 first) and giving
    r(pre, post). `seed` draws the initial weights without touching torch's global generator;
    seed=None draws them from (and advances) the global generator, like any nn.Module."""

    def __init__(self, rounds, hidden=20, seed=None):
        super().__init__()
        self.rounds = rounds
        with torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext():
            if seed is not None:
                torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(2 * rounds, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        bits, n = pattern_bits(rounds), 2 ** rounds
        self.register_buffer("pairs", torch.cat([bits.repeat_interleave(n, 0), bits.repeat(n, 1)], 1))  # [pre, post]

    def table(self):
        n = 2 ** self.rounds
        return self.net(self.pairs).reshape(n, n)


def _last_round_rule(rounds, not_fired, fired):
    t = torch.tensor([not_fired, fired], dtype=torch.float32)
    return OutputRuleTable(rounds, t[torch.arange(2 ** rounds) & 1])


def perceptron_output_rule(rounds):
    """Table 1's perceptron, the paper's output rule [[-1, 1], [1, -1]] (rows: not fired / fired;
    columns: true label / other label; Theorem 1's sign pattern; BrainNet's README): a unit
    that fired adds +1 to the true label's weight and -1 to the other's, a unit that did not
    fire -1 and +1. For T > 1 a unit's row is read from its last round (`code & 1`), the
    round whose h the output layer sees; the earlier rounds do not matter."""
    return _last_round_rule(rounds, [-1.0, 1.0], [1.0, -1.0])


def perceptron_output_rule_fired_only(rounds):
    """Alternative (not the paper's): [[0, 0], [1, -1]], units that did not fire in the last
    round are never updated (the plain perceptron on the 0/1 firing vector)."""
    return _last_round_rule(rounds, [0.0, 0.0], [1.0, -1.0])


def multiplicative_weights_output_rule(rounds):
    """Table 1's multiplicative weights (Winnow) rule for mode="multiplicative" with lr=1:
    a unit that fired in the last round doubles (1 + 1) its weight to the true label and halves
    (1 - 1/2) its weight to the wrongly predicted label; other units keep theirs (factor 1)."""
    return _last_round_rule(rounds, [0.0, 0.0], [1.0, -0.5])


def _as_table(rule, shape, name):
    return None if rule is None else check_table(rule.table() if isinstance(rule, nn.Module) else rule, shape, name)


# ----------------------------------------------------------------------------------------
# Rule-based training (A.1)
# ----------------------------------------------------------------------------------------

LOOP_THREADS = 1      # intra-op threads for the per-example loop on CPU (0 = leave as is)
UPDATES = ("mistakes", "all")
ROWS = ("predicted", "all", "predicted_always")
META_LOSSES = ("logits_ce", "ce", "softmax_ce", "mse")      # "ce": the old name of "logits_ce"
RECURRENCES = ("text", "brainnet")
ZERO_GRAD_WARN = 0.25     # meta_learn warns when more meta-steps than this had an exactly zero rule gradient


def _w_delta(R, code):
    """delta[j, i] = R[code_i, code_j] for every pair (pre i, post j) as a rank-2^T product
    (one-hot(post) R^T)(one-hot(pre))^T: no loop over units or synapses."""
    return R.t()[code], F.one_hot(code, R.shape[0]).to(R.dtype)


@contextlib.contextmanager
def _loop_threads(device, threads):
    """Per-example ops (1000x1000 mat-vec, rank-8 update) are too small for intra-op threads:
    on CPU the loop runs with `threads` threads (default 1; much faster when other processes share
    the cores, as benchmarks/plasticity_bench.py measures)."""
    old = torch.get_num_threads()
    if device.type == "cpu" and threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _rule_trajectory(net, X, y, R, Ro, lr, update, rows, mode, order, record, threads=LOOP_THREADS):
    """Sequential rule-based training of `net` in place (A.1 steps 2-3). Returns the record
    (codes, labels, predictions of the updated examples) when `record` is True."""
    T, n_out = net.rounds, net.n_out
    W, U, Gf = net.W.data, net.U.data, net.G
    mult = mode == "multiplicative"
    rec_codes, rec_y, rec_pred = [], [], []
    with torch.no_grad(), _loop_threads(X.device, threads):
        AX = X @ net.A.t()
        H1, C1 = net.fire(F.relu(net.input_drive(X)))    # round 1 does not depend on W
        if T == 1 and Ro is not None:
            D0, D1 = Ro[:, 0][C1], Ro[:, 1][C1]          # output-rule columns for every example
        ys = y.tolist()
        for i in order.tolist():
            h, code = H1[i], C1[i]
            for _ in range(T - 1):
                h, bits = net.fire(F.relu(net.drive(h, AX[i], W)))
                code = 2 * code + bits
            pred = int((U @ h).argmax())
            yi = ys[i]
            if update == "mistakes" and pred == yi:
                continue
            if R is not None and T > 1:
                L, O = _w_delta(R, code)
                if mult:
                    W.mul_(torch.addmm(torch.ones_like(W), L, O.t(), alpha=lr))
                else:
                    W.addmm_(L, O.t(), alpha=lr).mul_(Gf)
            if Ro is not None:
                d0, d1 = (D0[i], D1[i]) if T == 1 else (Ro[:, 0][code], Ro[:, 1][code])
                if rows == "all":
                    if mult:
                        fac = (1 + lr * d1).expand(n_out, -1).clone()
                        fac[yi] = 1 + lr * d0
                        U.mul_(fac)
                    else:
                        U.add_(d1, alpha=lr)
                        U[yi].add_(d0 - d1, alpha=lr)
                else:
                    other = pred != yi or rows == "predicted_always"
                    if mult:
                        U[yi].mul_(1 + lr * d0)
                        if other:
                            U[pred].mul_(1 + lr * d1)
                    else:
                        U[yi].add_(d0, alpha=lr)
                        if other:
                            U[pred].add_(d1, alpha=lr)
            if record:
                rec_codes.append(code)
                rec_y.append(yi)
                rec_pred.append(pred)
    if not record:
        return None
    codes = torch.stack(rec_codes) if rec_codes else torch.zeros(0, net.num_v, dtype=torch.long, device=X.device)
    return codes, torch.tensor(rec_y, dtype=torch.long, device=X.device), torch.tensor(rec_pred, dtype=torch.long, device=X.device)


def _check_modes(update, rows, mode):
    _check_choice("update", update, UPDATES)
    _check_choice("rows", rows, ROWS)
    _check_choice("mode", mode, ("additive", "multiplicative"))


def train_with_rules(net, X, y, rnn_rule=None, output_rule=None, lr=1e-2, epochs=1,
                     update="mistakes", mode="additive", rows="predicted", reset=True, seed=None):
    """Rule-based training (A.1), in place, no gradient: per example, forward, record firing,
    update W on every edge of G by r(pre, post) and U by r_o. Rows of U (A.4): "predicted":
    the true label's row by column 0 and the predicted row by column 1 if it differs (the
    paper); "all": every other row by column 1; "predicted_always": the predicted row by column
    1 even when it is the true row (BrainNet). `update="all"` updates on every example, not
    only on mistakes (A.4). `seed` shuffles the order each epoch. Returns the net."""
    _check_modes(update, rows, mode)
    n = 2 ** net.rounds
    R = _as_table(rnn_rule, (n, n), "RNN rule table")
    Ro = _as_table(output_rule, (n, 2), "output rule table")
    R = None if R is None else R.detach().to(X.device, torch.float32)
    Ro = None if Ro is None else Ro.detach().to(X.device, torch.float32)
    if reset:
        net.reset(mode)
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    for _ in range(epochs):
        order = torch.randperm(len(X), generator=g) if seed is not None else torch.arange(len(X))
        _rule_trajectory(net, X, y, R, Ro, lr, update, rows, mode, order, record=False)
    return net


def _replay(net, record, R, Ro, lr, rows, mode, W0=None, U0=None):
    """Final (W, U) as differentiable functions of the rule tables, given the recorded patterns
    and the weights (W0, U0) before the recorded updates (default: A.1's start, 0 or 1).

    The updates depend on the rules only through their values at the recorded (discrete)
    patterns and decisions, so this equals backpropagating through the unrolled updates."""
    codes, ys, preds = record
    init = 0.0 if mode == "additive" else 1.0
    W = net.G * init if W0 is None else W0
    U = torch.full((net.n_out, net.num_v), init, device=net.G.device) if U0 is None else U0
    if len(codes) == 0:
        return W, U
    Yoh = F.one_hot(ys, net.n_out).float()
    Poh = {"all": 1 - Yoh, "predicted_always": F.one_hot(preds, net.n_out).float(),
           "predicted": F.one_hot(preds, net.n_out).float() * (preds != ys).float()[:, None]}[rows]
    if Ro is not None:
        d0, d1 = Ro[:, 0][codes], Ro[:, 1][codes]        # (m, V)
        if mode == "additive":
            U = U + lr * (Yoh.t() @ d0 + Poh.t() @ d1)
        else:
            for t in range(len(codes)):
                U = U * (1 + lr * Yoh[t][:, None] * d0[t]) * (1 + lr * Poh[t][:, None] * d1[t])
    if R is not None and net.rounds > 1:
        m, v, P = len(codes), net.num_v, R.shape[0]
        L = R.t()[codes]                                  # (m, V, P): L[t, j, a] = R[a, code_t(j)]
        O = F.one_hot(codes, P).float()
        if mode == "additive":
            S = L.permute(1, 0, 2).reshape(v, m * P) @ O.permute(1, 0, 2).reshape(v, m * P).t()
            W = W + lr * net.G * S
        else:
            for t in range(m):
                W = W * (1 + lr * (L[t] @ O[t].t()))
    return W, U


class MetaLosses(list):
    """meta_learn's batch losses, with `zero_grad`: per rule ("rnn", "output") and meta-step,
    True where every parameter of the rule had an exactly zero meta-gradient (no training signal:
    Adam then moves the rule only by its weight decay)."""

    def __init__(self, rules):
        super().__init__()
        self.zero_grad = {name: [] for name in rules}

    def zero_grad_share(self, rule=None):
        """Fraction of meta-steps with an exactly zero gradient of `rule` (default: the RNN rule
        when it is trained, else the output rule); None before the first step."""
        flags = self.zero_grad[rule or ("rnn" if "rnn" in self.zero_grad else "output")]
        return sum(flags) / len(flags) if flags else None


def meta_learn(net_factory, X, y, rnn_rule=None, output_rule=None, epochs=1, batch_size=100,
               meta_lr=1e-2, weight_decay=0.01, lr=1e-2, update="mistakes", rows="predicted",
               mode="additive", steps=None, seed=0, loss="logits_ce", online=False,
               zero_grad_warn=ZERO_GRAD_WARN):
    """GD on the rule parameters (A.1): per batch, train a fresh network (net_factory()) with the
    current rules on the batch, take the loss on the batch ("logits_ce" (alias "ce"):
    cross-entropy of the logits, A.1; "softmax_ce": cross-entropy of the softmax output,
    BrainNet's double softmax, a bounded smooth 0-1 loss; "mse": App. B's 1/n sum_i 1/l sum_c
    (f_c - l_c)^2 of the logits) and step the parameters of the rule modules (RuleTable /
    OutputRuleTable / MLPRule; plain tensors stay fixed) by Adam with l2 `weight_decay`.
    `steps` caps the number of meta-steps (BrainNet's README: 1,000 rule epochs).
    online=True (not in the paper): one network trained through all the epochs (the horizon at
    which the rule is used); each step differentiates the batch's updates from the weights the
    earlier batches left (truncated) and takes the loss on the next batch.
    Returns a MetaLosses (the list of batch losses, and per step whether each rule's gradient was
    exactly zero); warns "the rule is not being trained" when a trained rule's zero-gradient share
    exceeds `zero_grad_warn`. The rules are trained in place."""
    _check_modes(update, rows, mode)
    _check_choice("loss", loss, META_LOSSES)
    named = {k: r for k, r in (("rnn", rnn_rule), ("output", output_rule)) if isinstance(r, nn.Module)}
    params = [p for m in named.values() for p in m.parameters()]
    if not params:
        raise ValueError("meta_learn needs at least one rule module with parameters")
    if len(X) < batch_size * (2 if online else 1):
        raise ValueError(f"meta_learn needs at least {2 if online else 1} batch(es) of {batch_size} examples, got {len(X)}")
    opt = torch.optim.Adam(params, lr=meta_lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    losses, net = MetaLosses(named), None
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=g).to(X.device)
        batches = [perm[s:s + batch_size] for s in range(0, len(X) - batch_size + 1, batch_size)]
        for b, idx in enumerate(batches[:-1] if online else batches):
            if not online or net is None:
                net = net_factory().to(X.device).reset(mode)
            n = 2 ** net.rounds
            R = _as_table(rnn_rule, (n, n), "RNN rule table")
            Ro = _as_table(output_rule, (n, 2), "output rule table")
            W0, U0 = (net.W.detach().clone(), net.U.detach().clone()) if online else (None, None)
            rec = _rule_trajectory(net, X[idx], y[idx], None if R is None else R.detach(),
                                   None if Ro is None else Ro.detach(), lr, update, rows, mode,
                                   torch.arange(len(idx)), record=True)
            W, U = _replay(net, rec, R, Ro, lr, rows, mode, W0, U0)
            e = batches[b + 1] if online else idx
            z = net(X[e], W=W, U=U)
            out = (F.cross_entropy(z.softmax(1), y[e]) if loss == "softmax_ce" else
                   ((z - F.one_hot(y[e], z.shape[1])) ** 2).mean() if loss == "mse" else F.cross_entropy(z, y[e]))
            opt.zero_grad()
            out.backward()
            for k, m in named.items():          # read before opt.step: the raw meta-gradient, no weight decay
                losses.zero_grad[k].append(all(p.grad is None or not p.grad.any() for p in m.parameters()))
            opt.step()
            losses.append(out.item())
            if steps is not None and len(losses) >= steps:
                return _warn_zero_grad(losses, zero_grad_warn)
    return _warn_zero_grad(losses, zero_grad_warn)


def _warn_zero_grad(losses, threshold):
    for k in losses.zero_grad:
        share = losses.zero_grad_share(k)
        if share is not None and threshold is not None and share > threshold:
            warnings.warn(f"the rule is not being trained: the {k} rule's meta-gradient was exactly zero in "
                          f"{sum(losses.zero_grad[k])} of {len(losses)} meta-steps ({share:.0%} > {threshold:.0%})",
                          RuntimeWarning, stacklevel=3)
    return losses


def train_gd(net, X, y, epochs=1, lr=1e-2, batch_size=100, params="output", reset=True,
             seed=0, callback=None, callback_every=None):
    """GD baseline (Fig. 2): the same network with weights trained by Adam on the cross-entropy;
    params="output" trains U only (Fig. 2), "all" trains A, W and U (masks kept).
    callback(examples_seen) is called every `callback_every` examples. Returns the net."""
    _check_choice("params", params, ("output", "all"))
    if reset:
        net.reset("additive")
    trained = [net.U] if params == "output" else [net.A, net.W, net.U]
    for p in trained:
        p.requires_grad_(True)
    opt = torch.optim.Adam(trained, lr=lr)
    g = torch.Generator().manual_seed(seed)
    seen, next_cb = 0, callback_every
    try:
        for _ in range(epochs):
            perm = torch.randperm(len(X), generator=g).to(X.device)
            for s in range(0, len(X), batch_size):
                idx = perm[s:s + batch_size]
                loss = F.cross_entropy(net(X[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                if params == "all":
                    with torch.no_grad():
                        net.A.mul_(net.A_mask)
                        net.W.mul_(net.G)
                seen += len(idx)
                if callback is not None and next_cb is not None and seen >= next_cb:
                    callback(seen)
                    next_cb += callback_every
    finally:
        for p in trained:
            p.requires_grad_(False)
    return net


def accuracy(net, X, y, batch_size=1000):
    """Fraction of examples whose arg-max logit is the label."""
    with torch.no_grad():
        correct = sum(int((net(X[s:s + batch_size]).argmax(1) == y[s:s + batch_size]).sum())
                      for s in range(0, len(X), batch_size))
    return correct / max(len(X), 1)


# ----------------------------------------------------------------------------------------
# Theory: Theorems 1-4 (Sec. 3.1, App. B), the MSE-optimal output rule (App. B), App. C
# ----------------------------------------------------------------------------------------

def sign_pattern(table):
    """Signs of a 2 x 2 output rule as a nested list, e.g. [[-1, 1], [1, -1]] (Theorem 1)."""
    return torch.sign(torch.as_tensor(table)).int().tolist()


def theorem1_gd(net_factory, X, y, steps=100, batch_size=100, meta_lr=1e-2, weight_decay=0.01,
                lr=1e-2, seed=0):
    """Theorem 1: GD (Adam, l2) on an additive T=1 output rule from a random start, network
    weights starting at zero, updates on mistakes. Returns (rule, losses); the theorem says the
    rule converges to the sign pattern [-, +; +, -] (rows: not fired / fired; columns: true
    label / other label)."""
    rule = OutputRuleTable(1, seed=seed)
    losses = meta_learn(net_factory, X, y, output_rule=rule, epochs=10 ** 9, batch_size=batch_size,
                        meta_lr=meta_lr, weight_decay=weight_decay, lr=lr, steps=steps, seed=seed)
    return rule, losses


def output_rule_design(H, codes, y, n_classes, rounds, lr=1e-2, scaled=False):
    """M[i, c, q] = d f_c(x_i) / d r_q with f_c = w_c(r) . y_i and w_c(r) = eta sum_{a,b} r(a,b)
    sum_{j: l_c(x_j) != b} chi^a(y_j) (App. B, updates on all examples and all rows, weights
    from 0); q = 2 a + b, a in 0 .. 2^T - 1 (T = `rounds`). chi^a is the indicator of pattern a
    (the rule semantics of A.1); `scaled=True` uses App. B's literal chi^1(y)_i = y_i for units
    that fired in the last round. The logits after training are f = M r (Theorem 2: linear)."""
    P = 2 ** rounds
    chi = F.one_hot(codes, P).to(H.dtype)                        # (n, V, P)
    if scaled:
        last = (torch.arange(P, device=H.device) & 1).bool()
        chi = torch.where(last, chi * H[..., None], chi)
    Yoh = F.one_hot(y, n_classes).to(H.dtype)                    # (n, C)
    S0 = torch.einsum("nc,nva->cav", Yoh, chi)                   # b = 0: examples of class c
    S1 = chi.sum(0).t()[None] - S0                               # b = 1: the other examples
    S = torch.stack([S0, S1], 2).reshape(n_classes, 2 * P, -1)   # (C, 2P, V), q = 2a + b
    return lr * torch.einsum("nv,cqv->ncq", H, S)


def mse_optimal_output_rule(H, codes, y, n_classes, rounds, lr=1e-2, scaled=False):
    """App. B: the output rule minimizing L(r) = 1/n sum_i 1/l sum_c (f_c(r, x_i) - l_c(x_i))^2.
    dL/dr = 0 is a (2*2^T) x (2*2^T) linear system (4 x 4 at T=1), built in O(n l d).
    Returns the (2^T, 2) rule."""
    M = output_rule_design(H.double(), codes, y, n_classes, rounds, lr, scaled)
    t = F.one_hot(y, n_classes).double()
    A = torch.einsum("ncq,ncr->qr", M, M)
    b = torch.einsum("ncq,nc->q", M, t)
    r = torch.linalg.lstsq(A, b[:, None]).solution[:, 0]
    return r.reshape(-1, 2).float()


def mse_output_rule_loss(rule, H, codes, y, n_classes, rounds, lr=1e-2, scaled=False):
    """The MSE loss L(r) of App. B for a (2^T, 2) output rule."""
    M = output_rule_design(H.double(), codes, y, n_classes, rounds, lr, scaled)
    f = M @ torch.as_tensor(rule).double().reshape(-1)
    return float(((f - F.one_hot(y, n_classes).double()) ** 2).mean())


def output_rule_ce_loss(rule, M, y):
    """Theorem 2: the cross-entropy after training with the output rule, CE(M r, y), for the
    design M of output_rule_design (or any fixed record: the logits are linear in r), a
    convex function of r. Differentiable in `rule`."""
    return F.cross_entropy(M @ torch.as_tensor(rule).to(M.dtype).reshape(-1), y)


if __name__ == "__main__":
    # Demo (Theorem 1): GD on a T=1 output rule from a random table reaches the perceptron's sign
    # pattern; then fresh cap-k RNNs learn a halfspace (A.2) by a rule alone, with no gradient.
    g = torch.Generator().manual_seed(1)
    X = torch.randn(6000, 10, generator=g)
    y = (X @ torch.randn(10, generator=g) > 0).long()  # Halfspace: 1[w* . x > 0]
    rule, losses = theorem1_gd(lambda: CapRNN(10, 2, num_v=60, cap=30, rounds=1, seed=1), X[:3000], y[:3000],
                               steps=60, batch_size=50, meta_lr=0.1, seed=1)
    print(f"meta-learned output rule (rows: not fired / fired; columns: true / other label), loss {losses[0]:.2f}"
          f" -> {losses[-1]:.2f}:\n{rule.table().detach().numpy().round(2)}\nsign pattern "
          f"{sign_pattern(rule.table().detach())}, Theorem 1: [[-1, 1], [1, -1]]")
    for name, r in (("the perceptron (Table 1)", perceptron_output_rule(1)), ("the learned rule", rule)):
        net = train_with_rules(CapRNN(10, 2, num_v=300, cap=150, seed=0), X[3000:5000], y[3000:5000], output_rule=r)
        print(f"|V| = 300, k = 150, one pass over 2000 examples with {name}: test accuracy "
              f"{accuracy(net, X[5000:], y[5000:]):.1%}")
