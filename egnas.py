"""BioNAS-EG: evolution-guided architecture search (EG-NAS, Cai et al. AAAI 2024).

    CMAES          a hand-written CMA-ES in numpy (Hansen's tutorial, 2016)
    explore        EG-NAS's evolutionary exploration of alpha (BioNAS App. A.4.2)
    EGNASSearcher  the per-epoch alpha update used by `train.py --search egnas`

The network weights are trained by SGD exactly as in the DARTS search; alpha is never
differentiated: it moves by the best individual that CMA-ES finds around it. The supernet
is any DARTS supernet whose forward takes external mixing weights (by default EG-NAS's own,
pc_darts.EGNASNetwork) over the BioNAS-EG space (ops.search_space(zero=False), 21
candidates), and the genotype is darts.derive_genotype. This file imports none of them.

Three versions of one exploration (N = `samples` CMA-ES runs of `population_size` each):

  published    BioNAS App. A.4.2 (EG-NAS Sec. 3): x_n = alpha + sigma y starts the n-th run,
               whose mean and covariance are *iterated* over generations t = 0, 1, ...;
               "the best-performing architecture across all evolutionary steps" is kept.
               Here: `generations=G` runs G ask/tell generations per run and keeps the run's
               lowest-fitness individual over all of them (with either centring below: the
               paper's x_n = alpha + sigma y, raw alpha and the exploration's sigma, is not
               offered; the code centres at softmax(alpha) + 1e-2 N(0, I)).
  as released  caicaicheng/EG-NAS train_search.py: one centre softmax(alpha) + 1e-2 N(0, I)
               drawn once and shared by the N runs; sigma = max(1/(epoch+1), 0.02) with an
               `epoch` that is set to 0 and never incremented, so sigma = 1 at every epoch;
               every run is CMA(centre, 1, 50, seed=1), so the N runs are identical; one
               generation; within a run the lowest fitness is kept, ties to the later
               individual (`value <= best`); across runs the most accurate, ties to the
               earlier run. Here: `as_released=True`, with seed 1 of *this* CMAES
               (numpy default_rng(1)): the same structure (N identical runs), not the same
               numbers as the `cmaes` package's CMA(seed=1).
  ours         (the default) sigma = max(1/(epoch+1), 0.02) with the real epoch; each run its
               own centre noise 1e-2 N(0, I) and its own CMA-ES seed, all drawn from `seed`;
               one generation; ties within a run to the earlier individual, across runs to
               the earlier run.

A quirk of the released code, not reproduced: a run whose kept individual is 0% accurate on
the validation batch gets weights 0 and wins the comparison across runs (it compares
1/accuracy), so alpha moves only by xi * pop_momentum times the previous direction. Here a 0%
run never beats a more accurate one; if every run is at 0%, the first run's individual is
used. The released code's validation batch is one alpha-part batch of half the training
batch size; `explore` takes whatever batch the caller gives.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------
# CMA-ES (numpy only): Hansen, "The CMA Evolution Strategy: A Tutorial" (2016,
# arXiv:1604.00772), Appendix A "Algorithm Summary" and its default parameter table
# (active CMA: negative weights for the worst lambda - mu samples); Appendix B for the lazy
# eigendecomposition and the termination criteria.
# ----------------------------------------------------------------------------------------

class CMAES:
    """(mu/mu_w, lambda)-CMA-ES with active covariance update, for minimization.

    es = CMAES(x0, sigma0, seed=0)
    while not es.stop():
        X = es.ask()                       # (lambda, n): x_k = m + sigma * B D z_k
        es.tell(X, [f(x) for x in X])      # selection, recombination, CSA, C update
    es.best_x, es.best_f

    Attributes: mean, sigma, C, best_x, best_f, evaluations, generation, lam, mu, weights,
    mueff, c1, cmu, cs, ds, cc, ps, pc, B, D (C = B diag(D^2) B^T at the last decomposition).
    """

    def __init__(self, mean, sigma, population_size=None, seed=None, tolfun=1e-12, tolx=None):
        mean = np.array(mean, dtype=float)
        if mean.ndim != 1 or mean.size == 0:
            raise ValueError(f"mean must be a non-empty 1-D array, got shape {mean.shape}")
        if not np.all(np.isfinite(mean)):
            raise ValueError("mean must be finite")
        sigma = float(sigma)
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a finite positive number, got {sigma}")
        n = mean.size
        lam = 4 + int(math.floor(3 * math.log(n))) if population_size is None else population_size
        if int(lam) != lam or lam < 2:
            raise ValueError(f"population_size must be an integer >= 2, got {population_size}")
        lam = int(lam)
        mu = lam // 2

        # Recombination weights: w'_i = ln((lambda+1)/2) - ln i for i = 1..lambda.
        wp = math.log((lam + 1) / 2) - np.log(np.arange(1, lam + 1))
        pos, neg = wp[:mu], wp[mu:]                       # neg may contain a zero (odd lambda)
        mueff = pos.sum() ** 2 / (pos ** 2).sum()
        mueff_neg = neg.sum() ** 2 / (neg ** 2).sum() if np.any(neg) else 0.0

        # Step-size control and covariance adaptation constants, alpha_cov = 2.
        cs = (mueff + 2) / (n + mueff + 5)
        ds = 1 + 2 * max(0.0, math.sqrt((mueff - 1) / (n + 1)) - 1) + cs
        cc = (4 + mueff / n) / (n + 4 + 2 * mueff / n)
        alpha_cov = 2.0
        c1 = alpha_cov / ((n + 1.3) ** 2 + mueff)
        cmu = min(1 - c1, alpha_cov * (mueff - 2 + 1 / mueff) / ((n + 2) ** 2 + alpha_cov * mueff / 2))

        # Negative weights scaled to sum to -min(alpha_mu^-, alpha_mueff^-, alpha_posdef^-).
        alpha_mu_neg = 1 + c1 / cmu if cmu > 0 else math.inf
        alpha_mueff_neg = 1 + 2 * mueff_neg / (mueff + 2)
        alpha_posdef_neg = (1 - c1 - cmu) / (n * cmu) if cmu > 0 else math.inf
        w = np.empty(lam)
        w[:mu] = pos / pos.sum()
        w[mu:] = min(alpha_mu_neg, alpha_mueff_neg, alpha_posdef_neg) * neg / max(np.abs(neg).sum(), 1e-300)

        self.n, self.lam, self.mu, self.weights, self.mueff, self.mueff_neg = n, lam, mu, w, mueff, mueff_neg
        self.cs, self.ds, self.cc, self.c1, self.cmu, self.cm = cs, ds, cc, c1, cmu, 1.0
        self.chiN = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n ** 2))   # E||N(0, I)||
        self.mean, self.sigma, self.sigma0 = mean, sigma, sigma
        self.C, self.ps, self.pc = np.eye(n), np.zeros(n), np.zeros(n)
        self.B, self.D, self.invsqrtC = np.eye(n), np.ones(n), np.eye(n)
        self.eigen_evaluations = 0
        self.lazy_gap = lam / (c1 + cmu) / n / 10         # evaluations between decompositions
        self.evaluations, self.generation = 0, 0
        self.best_x, self.best_f = mean.copy(), math.inf
        self.tolfun = tolfun
        self.tolx = 1e-12 * sigma if tolx is None else tolx
        self.fhist = []                                   # best f of the recent generations
        self.hist_len = 10 + int(math.ceil(30 * n / lam))
        self.last_f = None
        self.rng = np.random.default_rng(seed)

    def _update_eigen(self):
        """C = B diag(D^2) B^T, refreshed when > lambda/(c1+cmu)/n/10 evaluations old (App. B)."""
        if self.evaluations - self.eigen_evaluations <= self.lazy_gap and self.generation > 0:
            return
        self.C = (self.C + self.C.T) / 2                  # enforce symmetry
        d2, self.B = np.linalg.eigh(self.C)
        if not d2[0] > 0:       # lost to round-off (only far past stop()): lift the diagonal
            self.C[np.diag_indices(self.n)] += 1e-14 * abs(d2[-1]) - d2[0] + 1e-300
            d2, self.B = np.linalg.eigh(self.C)
        self.D = np.sqrt(np.maximum(d2, 1e-300))
        self.invsqrtC = (self.B / self.D) @ self.B.T      # C^{-1/2} = B D^{-1} B^T
        self.eigen_evaluations = self.evaluations

    def ask(self):
        """Sample lambda candidates x_k = m + sigma * B D z_k, z_k ~ N(0, I)."""
        self._update_eigen()
        z = self.rng.standard_normal((self.lam, self.n))
        return self.mean + self.sigma * (z * self.D) @ self.B.T

    def tell(self, solutions, fitnesses):
        """Update mean, evolution paths, step size and covariance from lambda evaluated
        candidates (minimization), Hansen (2016) Appendix A."""
        X = np.asarray(solutions, dtype=float)
        f = np.asarray(fitnesses, dtype=float)
        if X.shape != (self.lam, self.n):
            raise ValueError(f"expected {self.lam} solutions of dimension {self.n} (shape "
                             f"{(self.lam, self.n)}), got shape {X.shape}")
        if f.shape != (self.lam,):
            raise ValueError(f"expected {self.lam} fitnesses, got shape {f.shape}")
        if np.isnan(f).any():
            raise ValueError(f"fitness is NaN for candidate(s) {np.flatnonzero(np.isnan(f)).tolist()}")
        n, mu, w, cs, cc, c1, cmu = self.n, self.mu, self.weights, self.cs, self.cc, self.c1, self.cmu
        order = np.argsort(f, kind="stable")
        self.evaluations += self.lam
        if f[order[0]] < self.best_f:
            self.best_f, self.best_x = float(f[order[0]]), X[order[0]].copy()
        self.last_f = f[order]
        self.fhist = (self.fhist + [float(f[order[0]])])[-self.hist_len:]

        # Selection and recombination, c_m = 1.
        y = (X[order] - self.mean) / self.sigma           # y_{i:lambda}
        yw = w[:mu] @ y[:mu]
        self.mean = self.mean + self.cm * self.sigma * yw

        # Cumulative step-size adaptation path and the h_sigma stall of p_c.
        self.ps = (1 - cs) * self.ps + math.sqrt(cs * (2 - cs) * self.mueff) * (self.invsqrtC @ yw)
        self.generation += 1
        ps_norm = np.linalg.norm(self.ps)
        hs = ps_norm / math.sqrt(1 - (1 - cs) ** (2 * self.generation)) < (1.4 + 2 / (n + 1)) * self.chiN
        self.pc = (1 - cc) * self.pc + hs * math.sqrt(cc * (2 - cc) * self.mueff) * yw

        # Rank-one + rank-mu update with active negative weights.
        wo = w.copy()
        zn2 = ((y[mu:] @ self.invsqrtC) ** 2).sum(axis=1)  # ||C^{-1/2} y_i||^2
        wo[mu:] *= n / np.maximum(zn2, 1e-300)
        delta_hs = (1 - hs) * cc * (2 - cc)
        self.C = ((1 + c1 * delta_hs - c1 - cmu * w.sum()) * self.C
                  + c1 * np.outer(self.pc, self.pc) + cmu * (y.T * wo) @ y)

        # Step-size update; the factor is capped at e per generation as in pycma.
        self.sigma *= math.exp(min(1.0, cs / self.ds * (ps_norm / self.chiN - 1)))

    def stop(self):
        """Triggered termination criteria of Hansen (2016) App. B as {name: value}; empty = go on."""
        out = {}
        if self.generation == 0:
            return out
        frange = max(max(self.fhist), self.last_f[-1]) - min(min(self.fhist), self.last_f[0])
        if frange < self.tolfun:
            out["tolfun"] = self.tolfun
        sd = self.sigma * np.sqrt(np.diag(self.C))
        if np.all(sd < self.tolx) and np.all(self.sigma * np.abs(self.pc) < self.tolx):
            out["tolx"] = self.tolx
        d2 = np.linalg.eigvalsh((self.C + self.C.T) / 2)
        cond = d2[-1] / d2[0] if d2[0] > 0 else math.inf
        if cond > 1e14:
            out["conditioncov"] = cond
        if len(self.fhist) >= self.hist_len and max(self.fhist) == min(self.fhist):
            out["equalfunvals"] = self.fhist[-1]
        i = self.generation % self.n                      # principal axis i of the last decomposition
        if np.all(self.mean == self.mean + 0.1 * self.sigma * self.D[i] * self.B[:, i]):
            out["noeffectaxis"] = i
        if np.any(self.mean == self.mean + 0.2 * sd):
            out["noeffectcoord"] = np.flatnonzero(self.mean == self.mean + 0.2 * sd).tolist()
        if self.sigma * self.D.max() > 1e4 * self.sigma0:
            out["tolxup"] = self.sigma * self.D.max() / self.sigma0
        return out


# ----------------------------------------------------------------------------------------
# EG-NAS exploration (BioNAS App. A.4.2; Cai et al. 2024, Sec. 3)
# ----------------------------------------------------------------------------------------

def _accuracy(logits, y):
    return 100.0 * (logits.argmax(1) == y).float().mean().item()


def compound_fitness(model, x, y, individual, alpha_proj, acc_alpha, zeta=1.0, eta=0.4):
    """f(alpha, z) = zeta * L_CE - eta * L_cos if Acc(alpha) > Acc(z), else zeta * L_CE +
    eta * L_cos (App. A.4.2). L_cos = mean over edges of (cos(alpha_e, z_e) + 1) / 2, so an
    individual at least as accurate as alpha is rewarded for being different from it.
    `individual` is a flat vector of both cells' (edges x candidates) values; its rows are
    L2-normalized and softmaxed into mixing weights. Returns (f, accuracy, weights)."""
    z = _normalized(individual, alpha_proj)
    sim = torch.stack([(F.cosine_similarity(a, zi, dim=-1) + 1) / 2
                       for a, zi in zip(alpha_proj, z)]).mean().item()
    wn, wr = F.softmax(z[0], dim=-1), F.softmax(z[1], dim=-1)
    logits = model(x, wn, wr)
    acc = _accuracy(logits, y)
    loss = F.cross_entropy(logits, y).item()
    f = zeta * loss + eta * sim if acc >= acc_alpha else zeta * loss - eta * sim
    return f, acc, (wn, wr)


def _normalized(individual, alpha_proj):
    """The individual as (2, edges, candidates) rows of unit L2 norm."""
    k, n = alpha_proj[0].shape
    z = torch.as_tensor(individual, dtype=torch.float32, device=alpha_proj[0].device)
    z = z.reshape(2, k, n)
    return z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _score(model, x, y, pop, alpha_proj, acc_alpha, zeta, eta, shard, all_sum):
    """[(f, accuracy, weights)] of a population. With shard = (rank, world) this rank scores
    individuals rank, rank + world, ... and all_sum (a sum over the ranks) fills in the others'
    (exact: each entry is one rank's float64 plus zeros), so every rank holds every score.
    The summed tensor sits on the model's device, as a collective (NCCL) needs it."""
    rank, world = shard
    if all_sum is None:
        return [compound_fitness(model, x, y, z, alpha_proj, acc_alpha, zeta, eta) for z in pop]
    vals = torch.zeros(len(pop), 2, dtype=torch.float64, device=alpha_proj[0].device)
    weights = {}
    for i, z in enumerate(pop):
        if i % world == rank:
            f, acc, weights[i] = compound_fitness(model, x, y, z, alpha_proj, acc_alpha, zeta, eta)
            vals[i, 0], vals[i, 1] = f, acc
    vals = all_sum(vals)
    out = []
    for i, ((f, acc), z) in enumerate(zip(vals.tolist(), pop)):
        if i not in weights:                          # another rank's: compound_fitness's weights
            zn = _normalized(z, alpha_proj)
            weights[i] = (F.softmax(zn[0], dim=-1), F.softmax(zn[1], dim=-1))
        out.append((f, acc, weights[i]))
    return out


def exploration_sigma(epoch, as_released=False):
    """CMA-ES step size of the exploration at (0-based) `epoch`: max(1 / (epoch + 1), 0.02)
    (EG-NAS train_search.py); 1 as released, whose epoch counter stays 0."""
    return 1.0 if as_released else max(1.0 / (epoch + 1), 0.02)


RELEASED_SEED = 1          # train_search.py: CMA(..., seed=1) for every one of the N runs


def _check_generations(generations):
    if isinstance(generations, bool) or int(generations) != generations or generations < 1:
        raise ValueError(f"generations must be an integer >= 1, got {generations!r}")
    return int(generations)


@torch.no_grad()
def explore(model, x, y, epoch, samples=3, population_size=50, zeta=1.0, eta=0.4, seed=0, *,
            as_released=False, generations=1, shard=(0, 1), all_sum=None):
    """One EG-NAS exploration around alpha on the validation batch (x, y) (App. A.4.2).

    N = `samples` CMA-ES runs of `population_size` individuals, each individual scored by
    compound_fitness; a run keeps its lowest-fitness individual over its `generations`
    ask/tell generations; the exploration returns the mixing weights (normal, reduce) of the
    most accurate kept individual (ties: the earlier run) and its accuracy.

    ours (default): run n is centred at softmax(alpha) + 1e-2 * N(0, I), a fresh draw per
        run, with its own seed (both from default_rng(`seed`)), sigma = max(1/(epoch+1),
        0.02); fitness ties within a run go to the earlier individual.
    as_released=True (EG-NAS train_search.py): one centre softmax(alpha) + 1e-2 * N(0, I)
        shared by all runs, sigma = 1 at every epoch, every run seeded with 1 (this file's
        CMAES, so identical runs but not the `cmaes` package's numbers); fitness ties within
        a run go to the later individual. Its 0%-accuracy quirk (weights 0 win) is not
        reproduced: see the module docstring.
    generations=G: the paper's iterated CMA-ES (G generations per run); the code runs 1.
    shard=(rank, world), all_sum: a distributed search's split of every population over the
    ranks (same x, y and model on each); the CMA-ES state stays identical on every rank.
    """
    generations = _check_generations(generations)
    was = model.training
    model.eval()
    alpha_proj = [w.detach() for w in model.mixing_weights()]
    acc_alpha = _accuracy(model(x), y)
    sigma = exploration_sigma(epoch, as_released)
    rng = np.random.default_rng(seed)
    center = torch.stack(alpha_proj).flatten().cpu().double().numpy()
    if as_released:                                   # drawn once, shared by the N runs
        center = center + 1e-2 * rng.standard_normal(center.size)
    best = (-1.0, None)
    for _ in range(samples):
        if as_released:
            es = CMAES(center, sigma, population_size=population_size, seed=RELEASED_SEED)
        else:
            es = CMAES(center + 1e-2 * rng.standard_normal(center.size), sigma,
                       population_size=population_size, seed=int(rng.integers(2 ** 31)))
        kept = None                                   # (f, accuracy, weights) of the run
        for _ in range(generations):
            pop = es.ask()
            scored = _score(model, x, y, pop, alpha_proj, acc_alpha, zeta, eta, shard, all_sum)
            es.tell(pop, [f for f, _, _ in scored])
            for f, acc, weights in scored:            # ties: earlier (ours), later (released)
                if kept is None or f < kept[0] or (as_released and f == kept[0]):
                    kept = (f, acc, weights)
        if kept[1] > best[0]:                         # the most accurate run; ties: earlier
            best = (kept[1], kept[2])
    model.train(was)
    return best[1], best[0]


class EGNASSearcher:
    """The alpha update of the EG-NAS search, run once at the start of every epoch after
    `warm_start_epochs` weight-only epochs: alpha <- alpha + xi * s, s the mixing weights of
    the best explored individual (the paper's alpha^t = alpha^{t-1} + xi s^t), blended with
    the previous s by `pop_momentum` (0 in EG-NAS). Defaults are EG-NAS's: N = 3 samples,
    population 50, zeta = 1, eta = 0.4, xi = 0.1, 15 warm-start epochs. `as_released` and
    `generations` choose the version of the exploration (see explore); they are
    configuration, not state, so state_dict leaves them to the run's arguments. Distributed
    (`dist`: (rank, world, all_sum, all_gather, broadcast_state), as harness/run_dir.py has
    them): the ranks' alpha shards are gathered into the whole batch, rank 0's buffers
    broadcast, the population split."""

    def __init__(self, model, samples=3, population_size=50, zeta=1.0, eta=0.4, xi=0.1,
                 warm_start_epochs=15, pop_momentum=0.0, seed=0, log=print, *,
                 as_released=False, generations=1, dist=None):
        self.dist = dist
        self.model, self.samples, self.population_size = model, samples, population_size
        self.zeta, self.eta, self.xi, self.warm_start_epochs = zeta, eta, xi, warm_start_epochs
        self.pop_momentum, self.seed, self.log = pop_momentum, seed, log
        self.as_released, self.generations = bool(as_released), _check_generations(generations)
        self.last_epoch = -1
        self.s = [torch.zeros_like(a) for a in model.arch_parameters()]
        self.log(f"EG-NAS exploration: {self.describe()}")

    def describe(self):
        """The exploration's version in words, for the log."""
        g = f"{self.generations} generation{'s' if self.generations > 1 else ''}"
        runs = f"{self.samples} CMA-ES runs x {g} x {self.population_size} individuals"
        if self.as_released:
            return (f"{runs}, as released (sigma 1, one shared centre, seed "
                    f"{RELEASED_SEED} for every run, ties to the later individual)")
        return f"{runs} (sigma max(1/(epoch+1), 0.02), a centre and a seed per run)"

    def step(self, x, y, xv, yv, lr, optimizer, epoch):
        """Called before every weight step; explores once per epoch, on its first batch."""
        if epoch == self.last_epoch or epoch < self.warm_start_epochs:
            return
        self.last_epoch = epoch
        shard, all_sum = (0, 1), None
        if self.dist is not None:
            rank, world, all_sum, all_gather, broadcast_state = self.dist
            xv, yv, shard = all_gather(xv), all_gather(yv), (rank, world)
            broadcast_state(self.model)                # eval mode: rank 0's BN statistics
        weights, acc = explore(self.model, xv, yv, epoch, self.samples, self.population_size,
                               self.zeta, self.eta, seed=self.seed * 1000 + epoch,
                               as_released=self.as_released, generations=self.generations,
                               shard=shard, all_sum=all_sum)
        with torch.no_grad():
            for a, s_prev, w in zip(self.model.arch_parameters(), self.s, weights):
                s_new = self.pop_momentum * s_prev + (1 - self.pop_momentum) * w.to(a.device)
                s_prev.copy_(s_new)
                a.add_(self.xi * s_new)
        self.log(f"EG-NAS exploration (epoch {epoch + 1}): best individual accuracy "
                 f"{acc:.1f}% on the validation batch, sigma "
                 f"{exploration_sigma(epoch, self.as_released):.3f}"
                 + (", as released" if self.as_released else "")
                 + (f", {self.generations} generations" if self.generations > 1 else ""))

    def state_dict(self):
        return {"last_epoch": self.last_epoch, "s": [t.clone() for t in self.s]}

    def load_state_dict(self, state):
        self.last_epoch = state["last_epoch"]
        for t, v in zip(self.s, state["s"]):
            t.copy_(v)


if __name__ == "__main__":
    # Demo: CMA-ES minimizing the 10-d Rosenbrock function from x = 0 (minimum f(1, ..., 1) = 0),
    # the ask/tell loop of the class docstring; then the exploration's step-size schedule.
    def rosenbrock(x):
        return float(np.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))

    es = CMAES(np.zeros(10), 0.5, seed=1)
    while not es.stop():
        X = es.ask()
        es.tell(X, [rosenbrock(x) for x in X])
        if es.generation % 100 == 0:
            print(f"generation {es.generation:4d}  evaluations {es.evaluations:5d}  best f {es.best_f:.3e}"
                  f"  sigma {es.sigma:.2e}")
    print(f"stopped at generation {es.generation} by {sorted(es.stop())}: best f {es.best_f:.2e} at "
          f"x = {np.round(es.best_x, 4).tolist()}")
    print("EG-NAS exploration sigma by epoch:", [round(exploration_sigma(e), 3) for e in (0, 1, 4, 9, 49, 99)])
