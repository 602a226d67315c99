"""Each copyable concept file runs alone as a short demo (`python rules.py`, `python darts.py`,
...): run its `__main__` block (runpy, in this test process on one thread: a fresh process per
demo would spend most of its time importing torch), and check one line a student recognizes
(closed-form values where they are cheap). One demo also runs as a reader runs it: a copy of the
file alone in an empty folder, in a fresh process."""
import ast
import os
import re
import runpy
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow          # each demo trains or searches something for a few seconds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def run_demo(capsys):
    """run_demo(name) -> what `python name` prints, run in this process."""
    def run(name):
        runpy.run_path(os.path.join(ROOT, name), run_name="__main__")
        return capsys.readouterr().out
    return run


def test_rules_demo_bp_has_the_true_gradient_and_fa_aligns(tmp_path):
    """As a reader runs it: a copy of rules.py and the one file it imports (conv_routes.py) in
    an empty folder, in a fresh process."""
    for name in ("rules.py", "conv_routes.py"):
        shutil.copy(os.path.join(ROOT, name), tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH="")
    p = subprocess.run([sys.executable, "rules.py"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    out = p.stdout
    assert re.search(r"^bp .* 0\.0 ->\s+0\.0 deg\s+0\.0 deg$", out, re.M), out      # B = W: angles 0
    before, after = map(float, re.search(r"^fa .*?([\d.]+) ->\s+([\d.]+) deg", out, re.M).groups())
    assert before > 80 and after < before, out                                       # W aligns with B


def test_egnas_demo_cmaes_finds_the_rosenbrock_minimum(run_demo):
    out = run_demo("egnas.py")
    best = float(re.search(r"stopped at generation \d+ by .*: best f (\S+) at", out).group(1))
    assert best < 1e-8 and "x = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]" in out, out


def test_attacks_demo_fgsm_equals_the_linear_closed_form(run_demo):
    out = run_demo("attacks.py")
    rows = [list(map(float, line.split())) for line in out.splitlines() if re.match(r"\s+0\.\d+\s", line)]
    assert len(rows) == 4, out
    for _, closed, fgsm_exact, pgd_exact, _, _ in rows:
        assert fgsm_exact == closed and pgd_exact == closed, out                   # optimal for a linear model


def test_plasticity_demo_meta_learning_reaches_the_perceptron_sign_pattern(run_demo):
    out = run_demo("plasticity.py")
    assert "sign pattern [[-1, 1], [1, -1]], Theorem 1: [[-1, 1], [1, -1]]" in out, out
    accs = [float(a) for a in re.findall(r"test accuracy ([\d.]+)%", out)]
    assert len(accs) == 2 and min(accs) > 70, out                                    # chance 50%


def test_resnet_demo_has_he_et_al_parameter_counts(run_demo):
    out = run_demo("resnet.py")
    assert "ResNet-20: 0.27M parameters" in out and "ResNet-56: 0.85M parameters" in out, out
    assert "ResNet-20: 20 layers trained by {'fa'}; logits (8, 10)" in out, out


def test_equinas_demo_group_convolution_is_equivariant(run_demo):
    out = run_demo("equinas.py")
    c4, plain = map(float, re.search(r"C4 group convolution (\S+), plain convolution (\S+)", out).groups())
    assert c4 < 1e-4 and plain > 0.1, out
    d4 = re.search(r"z = \[0\.0, 0\.0, 0\.0, 0\.0, 0\.0, 1\.0\]: (\S+), (\S+)", out)
    assert d4 and max(float(v) for v in d4.groups()) < 1e-4, out                     # z on D4: exact
    assert float(re.search(r"elements of D4 (\S+)", out).group(1)) < 1e-4, out


def test_neurogenesis_demo_grows_and_north_weight_stops_at_the_input_size(run_demo):
    out = run_demo("neurogenesis.py")
    widths = {m.group(1): ast.literal_eval(m.group(2)) for m in re.finditer(r"^\s+(\S+)\s+(\[[\d, ]+\])", out, re.M)}
    assert set(widths) == {"NORTH-Select", "NORTH-Weight", "GradMax"}, out
    assert all(w[0] == 4 and w[-1] > 4 for w in widths.values()) and widths["NORTH-Weight"][-1] <= 32, out


def test_neurogenesis_init_demo_keeps_outputs_and_solves_eqs_33_34(run_demo):
    out = run_demo("neurogenesis_init.py")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    for s in ("NORTH-Random", "NORTH-Select", "NORTH-Pre", "NORTH-Weight", "GradMax"):
        assert float(rows[s][4]) == 0.0, out                                         # outputs unchanged
    assert float(rows["NORTH-Pre"][6]) < 1e-5 and float(rows["NORTH-Weight"][7]) < 1e-5, out


def test_dyno_demo_triggers_prune_and_grow(run_demo):
    out = run_demo("dyno.py")
    assert "phi 0.5: prune 47, phi 0.9: prune 7, phi 0.97: prune 0" in out, out      # floor(100 (0.97 - phi))
    assert "phi 0.5: grow 0, phi 0.6: grow 8, phi 0.9: grow 38" in out, out         # floor(100 (phi - 0.515))
    assert "(layer, pruned, grown) [(0, 11, 0)], widths [21]" in out, out           # floor(32 (0.97 - 20/32))
    assert "phi* = 0.125" in out and "step  0: grown [13]" in out, out               # floor(16 (1 - 1.03 / 8))


# the DARTS side: a line each demo prints
DARTS_DEMOS = {
    "darts.py": "derived genotype: Genotype(",
    "ops.py": "BioNAS-DARTS search space: 22 (operation, rule) candidates",
    "genotypes.py": "saved and loaded back unchanged: True",
    "darts_prime.py": "alive after pruning (normal, reduce): (33, 35)",
    "pc_darts.py": "PC-DARTS derived genotype: Genotype(",
    "fused.py": "genotype plain == fused: True",
}


@pytest.mark.parametrize("name", sorted(DARTS_DEMOS))
def test_darts_side_demo_runs_alone(name, run_demo):
    out = run_demo(name)
    assert DARTS_DEMOS[name] in out, out[-2000:]
