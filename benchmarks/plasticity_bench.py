"""Examples/s of rule-based training (plasticity.py) and the time of one meta-learning step.

    python benchmarks/plasticity_bench.py [--n 2000] [--threads 1 2]

|V|=1000, k=500, p=0.5, 784 inputs, 10 labels, float32, random inputs in [0, 1] with random
labels, updates on every example (update="all": the worst case, every example updates W and U).
"naive" is a per-example implementation in the style of the public code (the W update builds
the |V| x |V| index matrix of pattern pairs and gathers from the rule), timed in the same run.
Threads: the loop's intra-op threads (plasticity.LOOP_THREADS). Also: the two firing definitions
(CapRNN firing="nonzero" / "topk") and a step of meta_learn, fresh or online (long horizon).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import plasticity as P  # noqa: E402


def naive_train(net, X, y, R, Ro, lr=1e-2):
    """Per-example training with a gathered |V| x |V| update (as in the public code)."""
    net.reset()
    n = 2 ** net.rounds
    with torch.no_grad():
        for i in range(len(X)):
            h, code = net.hidden(X[i:i + 1])
            code = code[0]
            pred = int((h @ net.U.t()).argmax())
            yi = int(y[i])
            if R is not None and net.rounds > 1:
                act = (n * code[None, :] + code[:, None]) * net.G.long()   # [j, i] -> pre i, post j
                net.W += lr * R.t().reshape(-1)[act] * net.G
            net.U[yi] += lr * Ro[code, 0]
            if pred != yi:
                net.U[pred] += lr * Ro[code, 1]


def rate(fn, n):
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="examples per timing at T=1 (T=3: n/4)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    torch.manual_seed(0)
    X, y = torch.rand(args.n, 784), torch.randint(0, 10, (args.n,))
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    print("| T | loop threads | examples/s (plasticity.py) | examples/s (naive per-example) | speed-up |")
    print("|---|---|---|---|---|")
    for T in (1, 3):
        n = args.n if T == 1 else args.n // 4
        R = P.RuleTable(T, seed=0).table().detach() if T > 1 else None
        Ro = P.perceptron_output_rule(T).table().detach()
        for th in args.threads:
            P.LOOP_THREADS = th
            torch.set_num_threads(th)
            net = P.CapRNN(784, 10, 1000, 500, 0.5, T, seed=0)
            ours = rate(lambda: P.train_with_rules(net, X[:n], y[:n], rnn_rule=R, output_rule=Ro, update="all"), n)
            m = max(n // 10, 20)
            naive = rate(lambda: naive_train(net, X[:m], y[:m], R, Ro), m)
            print(f"| {T} | {th} | {ours:,.0f} | {naive:,.0f} | {ours / naive:.1f}x |")
    P.LOOP_THREADS = 1
    torch.set_num_threads(max(args.threads))
    print("\n| firing (T=3, perceptron rule, MLP RNN rule) | examples/s |")
    print("|---|---|")
    for firing in ("nonzero", "topk"):
        net = P.CapRNN(784, 10, 1000, 500, 0.5, 3, seed=0, firing=firing)
        R, n = P.MLPRule(3, 20, seed=0).table().detach(), args.n // 4
        print(f"| {firing} | {rate(lambda: P.train_with_rules(net, X[:n], y[:n], rnn_rule=R, output_rule=P.perceptron_output_rule(3)), n):,.0f} |")
    print("\n| meta-learning step (batch 100, Adam) | |V| | T | seconds/step |")
    print("|---|---|---|---|")
    for v, k, T, online in ((100, 50, 3, False), (1000, 500, 1, False), (1000, 500, 3, False), (1000, 500, 3, True)):
        rr = P.MLPRule(T, 20, seed=0) if T > 1 else None
        ro = P.OutputRuleTable(T, seed=0) if not online else P.perceptron_output_rule(T).table()
        f = lambda: P.meta_learn(lambda: P.CapRNN(784, 10, v, k, 0.5, T, seed=0), X[:400], y[:400],  # noqa: E731
                                 rnn_rule=rr, output_rule=ro, update="all", steps=3, online=online)
        f()                                                      # warm-up (imports, allocations)
        t = time.perf_counter()
        f()
        what = ("MLP RNN rule" + (" (online)" if online else " + output table")) if T > 1 else "output table"
        print(f"| {what} | {v} | {T} | {(time.perf_counter() - t) / 3:.3f} |")


if __name__ == "__main__":
    main()
