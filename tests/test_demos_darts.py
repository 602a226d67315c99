"""Each DARTS-side concept file runs alone as a short demo (`python darts.py`, ...): exit code 0
and a line a student recognizes."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMOS = {   # file: a line its demo prints
    "darts.py": "derived genotype: Genotype(",
    "ops.py": "BioNAS-DARTS search space: 22 (operation, rule) candidates",
    "genotypes.py": "saved and loaded back unchanged: True",
    "darts_prime.py": "alive after pruning (normal, reduce): (33, 35)",
    "pc_darts.py": "PC-DARTS derived genotype: Genotype(",
    "fused.py": "genotype plain == fused: True",
}


@pytest.mark.parametrize("name", sorted(DEMOS))
def test_demo_runs_alone(name):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH="")   # the file alone, one thread
    out = subprocess.run([sys.executable, name], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert DEMOS[name] in out.stdout, out.stdout[-2000:]
