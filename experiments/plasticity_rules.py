"""The learned rules that the plasticity experiments (plasticity_paper.py) use: the protocols that
meta-learn the T=3 RNN rule, the output rules learned on Halfspace, and the controls.

A protocol fixes the network the rule is learned on, the recurrence (the text's
h <- c_k(ReLU(W h + A x)) or the authors' code's h <- c_k(ReLU(W (h + A x) + b))), the firing (the
text's h_i != 0 or the authors' code's top-k: exactly k units fire every round), the meta-loss
(cross-entropy of the logits, or BrainNet's cross-entropy of the softmax output) and the number
of meta-steps; a network trained with the rule uses the protocol's recurrence and firing. Every
learned rule comes with the share of meta-steps whose rule gradient was exactly zero
(plasticity.MetaLosses): above 25% the rule has mostly not been trained.
"""
import math
import time

import numpy as np
import torch

import plasticity as P

_quiet = lambda *_: None                                                        # noqa: E731
_n_out = lambda *ys: int(max(int(t.max()) for t in ys)) + 1                     # noqa: E731
_pct = lambda x: round(100 * float(x), 2)                                       # noqa: E731


def _net(X, n_out, v, k, T, seed, **kw):
    return P.CapRNN(X.shape[1], n_out, v, k, 0.5, T, seed=seed, **kw).to(X.device)


_B = dict(v=200, k=100, steps=100, online=False, recurrence="brainnet", loss="softmax_ce")
RNN_RULE_PROTOCOLS = {  # T=3 MLP RNN rule, perceptron output rule fixed, Adam lr 1e-2, l2 0.01, batch 100
    # the authors' code (BrainNet): input through W, top-k firing, softmax CE; trains the rule at
    # seeds 0-4 (with h != 0 firing, seed 1's last round goes silent and its gradient with it)
    "brainnet": dict(_B, firing="topk"),
    "brainnet1000": dict(_B, firing="topk", steps=1000),
    "brainnet_nonzero": dict(_B, firing="nonzero"),
    # the text (A.1, A.3): W h + A x, h != 0 firing, CE of the logits; its rule's meta-gradient is mostly zero
    "a3": dict(v=200, k=100, steps=100, online=False, recurrence="text", firing="nonzero", loss="logits_ce"),
    "v1000": dict(v=1000, k=500, steps=100, online=False, recurrence="text", firing="nonzero", loss="logits_ce"),
    "online": dict(v=1000, k=500, steps=None, online=True, recurrence="text", firing="nonzero", loss="logits_ce"),
}
DEFAULT_PROTOCOL = "brainnet"


def learn_rnn_rule(X, y, n_out, protocol=DEFAULT_PROTOCOL, seed=0, steps=None):
    """The T=3 RNN rule: MLPRule(3, 20) meta-learned (meta_learn, batch 100) with the
    perceptron output rule held fixed, by one of RNN_RULE_PROTOCOLS (`steps` overrides its
    meta-steps). Returns (rule, MetaLosses)."""
    p = RNN_RULE_PROTOCOLS[protocol]
    rule = P.MLPRule(3, 20, seed=seed)
    losses = P.meta_learn(lambda: _net(X, n_out, p["v"], p["k"], 3, seed, **network_of(protocol)), X, y,
                          rnn_rule=rule, output_rule=P.perceptron_output_rule(3).table().detach(),
                          epochs=2 if p["online"] else 10 ** 9, online=p["online"], loss=p["loss"],
                          steps=steps or p["steps"], seed=seed, zero_grad_warn=None)
    return rule, losses


def network_of(kind):
    """The recurrence and firing a network trained with rule `kind` must use (CapRNN keywords):
    its protocol's (the text's for the controls without a protocol)."""
    p = RNN_RULE_PROTOCOLS.get(kind, dict(recurrence="text", firing="nonzero"))
    return dict(recurrence=p["recurrence"], firing=p["firing"])


def rule_for(kind, X, y, n_out, seed, quick, cache, log=_quiet, meta_steps=None):
    """(rule, (zero-gradient share, meta-steps) or None) for a model's RNN-rule kind: None (no rule), "random_w"
    (no rule; the caller draws W), "init" (the MLP rule at its random start) or a protocol
    (learned once per seed and cached). --quick: 20 meta-steps (10 at |V|=1000, online as is)."""
    if kind in (None, "random_w"):
        return None, None
    if kind not in cache:
        t0 = time.perf_counter()
        if kind == "init":
            cache[kind] = P.MLPRule(3, 20, seed=seed), None
        else:
            steps = meta_steps or ((20 if RNN_RULE_PROTOCOLS[kind]["v"] < 1000 else 10)
                                   if quick and kind != "online" else None)
            rule, losses = learn_rnn_rule(X, y, n_out, kind, seed, steps)
            share = losses.zero_grad_share()
            cache[kind] = rule, (share, len(losses))
            log(f"  rule {kind}: {len(losses)} meta steps, loss {losses[0]:.3f} -> {np.mean(losses[-10:]):.3f}, "
                f"{zero_grad_note(share)} ({time.perf_counter() - t0:.0f}s)")
    return cache[kind]


def zero_grad_note(share):
    """'zero-gradient steps 12%', with the warning when above plasticity.ZERO_GRAD_WARN."""
    return f"zero-gradient steps {share:.0%}" + (f" > {P.ZERO_GRAD_WARN:.0%}: the rule is not being trained"
                                                 if share > P.ZERO_GRAD_WARN else "")


def random_w(net, seed):
    """Control "random fixed weights" (Sec. 5): W ~ N(0, 1/(p k)) on G, so that W h and A x
    have comparable sizes (our choice; the paper gives none). Returns the net."""
    g = torch.Generator().manual_seed(seed + 7919)
    with torch.no_grad():
        net.W.copy_(torch.randn(net.W.shape, generator=g).to(net.W.device) * net.G / math.sqrt(net.p * net.cap))
    return net


def halfspace_output_rule(Xh, yh, seed, init="random", meta_steps=100, meta_lr=0.1):
    """Fig. 3's T=1 output rule, learned on Halfspace (|V|=100, k=50): `meta_steps` Adam steps
    at `meta_lr` from a random (the paper) or a zero (BrainNet) start. Returns (rule, MetaLosses)."""
    rule = P.OutputRuleTable(1, seed=seed, init=init)
    losses = P.meta_learn(lambda: _net(Xh, 2, 100, 50, 1, seed), Xh, yh, output_rule=rule, epochs=10 ** 9,
                          steps=meta_steps, meta_lr=meta_lr, seed=seed, zero_grad_warn=None)
    return rule, losses


def relu1_rules(Xr, yr, seed, init="random", protocol=DEFAULT_PROTOCOL, meta_steps=100, meta_lr=0.1):
    """Fig. 3's T=3 rules, learned together on ReLU1 (|V|=100, k=50): an MLP RNN rule and an
    output table (random or zero start), with the protocol's recurrence, firing and meta-loss.
    Returns (rnn rule, output rule, MetaLosses)."""
    p = RNN_RULE_PROTOCOLS[protocol]
    rnn, out = P.MLPRule(3, 20, seed=seed), P.OutputRuleTable(3, seed=seed, init=init)
    losses = P.meta_learn(lambda: _net(Xr, 2, 100, 50, 3, seed, **network_of(protocol)), Xr, yr, rnn_rule=rnn,
                          output_rule=out, epochs=10 ** 9, steps=meta_steps, meta_lr=meta_lr, loss=p["loss"],
                          seed=seed, zero_grad_warn=None)
    return rnn, out, losses


def fmt_table(rule):
    return str([[round(float(t), 3) for t in r_] for r_ in rule.table().detach()])
