"""Genotypes: the discrete cells a search derives and a retraining builds (DARTS's genotypes.py).

A Genotype names, per cell type (normal, reduce), two (operation, input node) edges per
intermediate node and the nodes concatenated into the cell's output. BioNAS operation names
carry their learning rule (sep_conv_3x3_usf; ops.parse_candidate), so original DARTS genotypes
load unchanged (their ops train by backprop).

    save_genotype, load_genotype, check_genotype   JSON files and their checks
    force_rule, random_rules, random_genotype      the rule and architecture controls of BioNAS
"""
import json
from collections import namedtuple

import torch

import ops

Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")


# DARTS genotypes.py's DARTS_V2 (Liu et al. 2019, second order; every op backprop)
DARTS_V2 = Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    reduce_concat=[2, 3, 4, 5])


def save_genotype(genotype, path):
    """Write a Genotype as JSON (op names keep their rule)."""
    with open(path, "w") as f:
        json.dump(genotype._asdict(), f, indent=1)


def load_genotype(path):
    """Read a Genotype from JSON, with an error naming what is wrong in a malformed file."""
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"genotype file {path} is not valid JSON: {e}") from None
    try:
        g = Genotype(**{k: data[k] for k in Genotype._fields})
        check_genotype(g)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"malformed genotype file {path}: {e}. Expected JSON with keys "
                         f"{', '.join(Genotype._fields)}; 'normal' and 'reduce' are lists of "
                         f"[op_name, input_node] pairs") from None
    return Genotype([tuple(e) for e in g.normal], list(g.normal_concat),
                    [tuple(e) for e in g.reduce], list(g.reduce_concat))


def check_genotype(g):
    """Raise ValueError unless g is a well-formed genotype with known op names."""
    for cell in ("normal", "reduce"):
        edges = getattr(g, cell)
        if not isinstance(edges, (list, tuple)) or len(edges) == 0 or len(edges) % 2:
            raise ValueError(f"'{cell}' must be a non-empty list with two edges per node")
        for k, e in enumerate(edges):
            if not isinstance(e, (list, tuple)) or len(e) != 2 or not isinstance(e[0], str) \
                    or not isinstance(e[1], int):
                raise ValueError(f"{cell} edge {k} is {e!r}, not [op_name, input_node]")
            ops.parse_candidate(e[0])
            if not 0 <= e[1] < 2 + k // 2:
                raise ValueError(f"{cell} edge {k} reads node {e[1]}, which does not exist yet")
        concat = getattr(g, cell + "_concat")
        if not concat or any(not isinstance(c, int) or not 0 <= c < 2 + len(edges) // 2
                             for c in concat):
            raise ValueError(f"'{cell}_concat' {concat!r} names nodes that do not exist")


def force_rule(genotype, rule):
    """The genotype with every ruled op (convolutions and skip_connect) trained by `rule`:
    BioNAS Fig. 4's architecture "converted" to one learning rule."""
    ops.check_rule(rule)

    def conv(edges):
        return [(ops.candidate_name(op, rule if r is not None else None), j)
                for (op, r), j in ((ops.parse_candidate(n), j) for n, j in edges)]
    return Genotype(conv(genotype.normal), list(genotype.normal_concat),
                    conv(genotype.reduce), list(genotype.reduce_concat))


def random_rules(genotype, seed, rules=("fa", "usf", "brsf", "frsf"),
                 skip_rules=("usf", "brsf", "frsf")):
    """The genotype's ops with each edge's rule drawn uniformly at random (convolutions from
    `rules`, skip_connect from `skip_rules`): the random assignments of BioNAS (arXiv) Table 5."""
    g = torch.Generator().manual_seed(seed)

    def draw(edges):
        out = []
        for name, j in edges:
            op, r = ops.parse_candidate(name)
            if r is not None:
                pool = skip_rules if op == "skip_connect" else rules
                r = pool[int(torch.randint(len(pool), (1,), generator=g))]
            out.append((ops.candidate_name(op, r), j))
        return out
    return Genotype(draw(genotype.normal), list(genotype.normal_concat),
                    draw(genotype.reduce), list(genotype.reduce_concat))


def random_genotype(seed, steps=4, rules=("fa", "usf", "brsf", "frsf"),
                    skip_rules=("usf", "brsf", "frsf")):
    """A genotype drawn uniformly from the search space (the random-architecture baseline of
    DARTS Sec. 3.3 / Li & Talwalkar 2019 with BioNAS's rules): per cell and intermediate node,
    two distinct inputs among the earlier nodes, on each an op uniform over the 7 non-`none`
    ops, then its rule uniform over that op's rules (as `random_rules`)."""
    g = torch.Generator().manual_seed(seed)
    names = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
             "dil_conv_3x3", "dil_conv_5x5")

    def pick(seq):
        return seq[int(torch.randint(len(seq), (1,), generator=g))]

    def cell():
        edges = []
        for i in range(steps):
            for j in sorted(torch.randperm(2 + i, generator=g)[:2].tolist()):
                op = pick(names)
                rule = None if op.endswith("pool_3x3") else pick(
                    skip_rules if op == "skip_connect" else rules)
                edges.append((ops.candidate_name(op, rule), j))
        return edges
    concat = list(range(2, 2 + steps))
    return Genotype(cell(), concat, cell(), list(concat))


if __name__ == "__main__":
    import os
    import tempfile

    def show(title, g):
        print(title)
        for cell in ("normal", "reduce"):
            e = getattr(g, cell)
            print(f"  {cell:6s} " + "; ".join(
                f"node {2 + k // 2} = {e[k][0]}({e[k][1]}) + {e[k + 1][0]}({e[k + 1][1]})"
                for k in range(0, len(e), 2)))
    show("DARTS_V2 (Liu et al. 2019), every op trained by backprop:", DARTS_V2)
    show("DARTS_V2 converted to uniform sign feedback (force_rule usf):",
         force_rule(DARTS_V2, "usf"))
    show("DARTS_V2 with random rules (random_rules, seed 0):", random_rules(DARTS_V2, 0))
    show("a random genotype of the BioNAS space (random_genotype, seed 0):", random_genotype(0))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "genotype.json")
        save_genotype(DARTS_V2, path)
        print(f"saved and loaded back unchanged: {load_genotype(path) == DARTS_V2}")
