"""The project's main job, `python train.py --search darts --quick`, over seeds: accuracy, time,
the ETA's error and the search's alpha per edge, from the run directories it leaves.

    python benchmarks/main_job.py [--seeds 1,2,3,4,5] [--save runs/main-job] [--against CSV]
                                  [-- FLAGS...]

Each seed runs the whole command as its own process (`--seed S`, nothing else changed; FLAGS
are appended to every run), timed by the wall clock. A seed whose run directory already holds a
finished retraining is read, not run again, so an interrupted study continues where it stopped.
Writes, in --out (default benchmarks/results/bionas/):

    main-job_seeds.csv   per seed: test accuracy of the retraining, search / retraining / whole
                         seconds, the first ETA the run printed and its error, the genotype
    main-job_alpha.csv   per seed and edge of the final search epoch: the softmax weight of every
                         candidate, the strongest, its ratio to uniform (1 / number of candidates)
    main-job.md          mean ± sample std over the seeds and the alpha summary
    main-job_against.md  with --against (another study's main-job_seeds.csv, e.g. of another
                         commit): the two seed by seed, time ratios and paired accuracy
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from experiments.seeds import fmt, paired_t, wins  # noqa: E402  (root on the path now)
from harness.run_dir import write_csv      # noqa: E402


def _hms(text):
    h, m, s = (int(v) for v in text.split(":"))
    return 3600 * h + 60 * m + s


def first_eta(log_path):
    """(seconds from the first log line to the first 'run ETA', that ETA) from log.txt: the run
    predicted it would end at the sum of the two."""
    t0 = None
    with open(log_path) as f:
        for line in f:
            stamp = _hms(line[:8]) if re.match(r"\d\d:\d\d:\d\d ", line) else None
            if stamp is not None and t0 is None:
                t0 = stamp
            m = re.search(r"run ETA (\d+:\d\d:\d\d)", line)
            if m and stamp is not None:
                return (stamp - t0) % 86400, _hms(m.group(1))
    return None, None


def finished(run):
    """True when the run's retraining wrote its last epoch."""
    path = os.path.join(run, "retrain", "history.json")
    if not os.path.exists(path):
        return False
    with open(os.path.join(run, "retrain", "args.json")) as f:
        epochs = json.load(f)["epochs"]
    with open(path) as f:
        return len(json.load(f)) >= epochs


def run_seed(seed, save, flags, log):
    """Run (or resume) the main job at `seed`; the whole command's wall seconds (None if read)."""
    run = os.path.join(save, f"seed-{seed}")
    if finished(run):
        return None
    cmd = [sys.executable, "train.py", "--search", "darts", "--quick", "--seed", str(seed),
           "--save", save, "--run_name", f"seed-{seed}"] + list(flags)
    if os.path.exists(run):                      # an interrupted run: continue it
        cmd = [sys.executable, "train.py", "--resume", run]
    log(f"seed {seed}: {' '.join(cmd[1:])}")
    t = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.time() - t


def read_seed(seed, save, wall):
    """The per-seed row and the alpha rows of one finished run directory."""
    import ops
    run = os.path.join(save, f"seed-{seed}")
    with open(os.path.join(run, "history.json")) as f:
        search = json.load(f)
    with open(os.path.join(run, "retrain", "history.json")) as f:
        retrain = json.load(f)
    with open(os.path.join(run, "args.json")) as f:
        args = json.load(f)
    search_s, retrain_s = sum(h["seconds"] for h in search), sum(h["seconds"] for h in retrain)
    at, eta = first_eta(os.path.join(run, "log.txt"))
    meta, whole = os.path.join(run, "main-job.json"), wall
    if wall is not None:                         # kept, for a later read of a finished run
        with open(meta, "w") as f:
            json.dump(dict(wall_seconds=wall), f)
    elif os.path.exists(meta):
        with open(meta) as f:
            whole = json.load(f)["wall_seconds"]
    predicted = None if eta is None else at + eta
    row = dict(seed=seed, test_acc=round(retrain[-1]["test_acc"], 2),
               search_seconds=round(search_s), retrain_seconds=round(retrain_s),
               wall_seconds=None if whole is None else round(whole),
               first_eta_at=at, first_eta=eta, predicted_seconds=predicted,
               eta_error=None if predicted is None or whole is None
               else round(predicted / whole - 1, 3),
               genotype=json.dumps(search[-1]["genotype"]))
    cands = ops.search_space(args["rules"].split(","), args["skip_rules"].split(","))
    alpha = []
    for cell in ("normal", "reduce"):
        for e, w in enumerate(search[-1][f"weights_{cell}"]):
            top = max(range(len(w)), key=lambda i: w[i])
            alpha.append(dict(seed=seed, cell=cell, edge=e, top_op=cands[top],
                              top_weight=round(w[top], 4), candidates=len(w),
                              top_over_uniform=round(w[top] * len(w), 3),
                              weights=" ".join(f"{v:.4f}" for v in w)))
    return row, alpha


def summary(rows, alpha, cmd):
    """main-job.md: mean ± sample std over seeds and the alpha counts."""
    def ms(key):
        return fmt(r[key] for r in rows) or "—"
    n = len(alpha)
    ratios = [a["top_over_uniform"] for a in alpha]
    lines = [f"The main job over seeds {', '.join(str(r['seed']) for r in rows)} "
             f"(`{cmd}`; mean ± sample std)", "",
             "| seeds | test accuracy % | whole command s | search s | retraining s | "
             "first ETA / real − 1 |", "|---|---|---|---|---|---|",
             f"| {len(rows)} | {ms('test_acc')} | {ms('wall_seconds')} | "
             f"{ms('search_seconds')} | {ms('retrain_seconds')} | {ms('eta_error')} |", "",
             "Per seed: " + ", ".join(f"seed {r['seed']} {r['test_acc']:.2f}%" for r in rows)
             + ".", "",
             f"Alpha after the search's last epoch, {n} edges ({n // len(rows)} per seed): the "
             f"strongest candidate's softmax weight is ≥ 2× uniform on "
             f"{sum(x >= 2 for x in ratios)} of {n} edges, ≥ 1.5× on "
             f"{sum(x >= 1.5 for x in ratios)}; median ratio {statistics.median(ratios):.2f}, "
             f"range {min(ratios):.2f}–{max(ratios):.2f} (per edge in main-job_alpha.csv)."]
    return "\n".join(lines) + "\n"


def against(rows, path):
    """main-job_against.md: this study beside another one's main-job_seeds.csv, seed by seed
    (the whole command's time ratio; the accuracy's paired difference, t and p)."""
    import csv
    with open(path) as f:
        other = {int(r["seed"]): r for r in csv.DictReader(f)}
    pairs = [(r, other[r["seed"]]) for r in rows if r["seed"] in other and r["wall_seconds"]]
    if not pairs:
        return ""
    ratio = [r["wall_seconds"] / float(o["wall_seconds"]) for r, o in pairs]
    diff = [r["test_acc"] - float(o["test_acc"]) for r, o in pairs]
    t, p = paired_t(diff)
    lines = [f"Against {os.path.relpath(path, ROOT)}, seed by seed", "",
             "| seed | this s | other s | this / other | this % | other % | this − other |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['wall_seconds']} | {o['wall_seconds']} | {q:.2f} | "
              f"{r['test_acc']:.2f} | {float(o['test_acc']):.2f} | {d:+.2f} |"
              for (r, o), q, d in zip(pairs, ratio, diff)]
    lines += ["", f"Time ratio {fmt(ratio)} (mean ± sample std over {len(pairs)} seeds); "
              f"accuracy {fmt(diff)} points paired, {wins(diff)} ahead"
              + ("" if t is None else f", t = {t:.2f}, p = {p:.3f}") + "."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="1,2,3,4,5")
    ap.add_argument("--save", default=os.path.join(ROOT, "runs", "main-job"))
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "bionas"))
    ap.add_argument("--against", help="another study's main-job_seeds.csv: writes "
                    "main-job_against.md, the two seed by seed")
    ap.add_argument("flags", nargs="*", help="after --: flags appended to every run")
    a = ap.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    os.makedirs(a.save, exist_ok=True)
    log = lambda m: print(time.strftime("%H:%M:%S ") + m, flush=True)
    rows, alpha = [], []
    for s in seeds:
        wall = run_seed(s, a.save, a.flags, log)
        row, al = read_seed(s, a.save, wall)
        rows.append(row)
        alpha.extend(al)
        log(f"seed {s}: {row['test_acc']:.2f}% in {row['wall_seconds']}s "
            f"(first ETA predicted {row['predicted_seconds']}s)")
    os.makedirs(a.out, exist_ok=True)
    write_csv(rows, os.path.join(a.out, "main-job_seeds.csv"))
    write_csv(alpha, os.path.join(a.out, "main-job_alpha.csv"))
    cmd = "python train.py --search darts --quick --seed S" + "".join(" " + f for f in a.flags)
    text = summary(rows, alpha, cmd)
    with open(os.path.join(a.out, "main-job.md"), "w") as f:
        f.write(text)
    print(text)
    if a.against:
        text = against(rows, a.against)
        with open(os.path.join(a.out, "main-job_against.md"), "w") as f:
            f.write(text)
        print(text)


if __name__ == "__main__":
    main()
