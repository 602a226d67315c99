"""benchmarks/gpu_runs.py's machinery (the run checks of gpu_check.py), without running them:
its generated data load as Fashion-MNIST, a failing check prints FAIL with the error's last line
and is counted, torchrun's failure output yields the cause. (The checks themselves: `python
benchmarks/gpu_check.py --device cpu --tiny`, ~7 minutes here; docs/running-at-scale.md.)"""
import os
import sys

from harness.data import load_dataset

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import gpu_runs  # noqa: E402

ABORT = """04:55:05 attacks done in 1s: runs/w2-attack/robustness.md
terminate called without an active exception
W1207 04:55:05.255000 32258 api.py:1028] Sending process 32390 closing signal SIGTERM
E1207 04:55:05.428000 32258 api.py:1002] failed (exitcode: -6) local_rank: 1 (pid: 32391)
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
=======================================================
  exitcode  : -6 (pid: 32391)  (SIGABRT)
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
======================================================="""
RANK_ERROR = """[rank1]: Traceback (most recent call last):
[rank1]:   File "train.py", line 1, in <module>
[rank1]: RuntimeError: No backend type associated with device type cpu
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
======================================================="""


def test_generated_files_load_as_fashion_mnist(tmp_path):
    """Catches: the benchmark's IDX writer giving files harness.data cannot read (every run
    check would fail on the data)."""
    root = gpu_runs.fake_fashion_mnist(str(tmp_path / "d"), n_train=20, n_test=10)
    xtr, ytr, xte, yte = load_dataset("fashion-mnist", root)
    assert xtr.shape == (20, 1, 28, 28) and xte.shape == (10, 1, 28, 28) and ytr.max() <= 9
    r, q = divmod(int(ytr[0]), 5)                         # the class's square is bright
    assert xtr[0, 0, 4 + 10 * r:12 + 10 * r, 2 + 5 * q:6 + 5 * q].min() == 250


def test_last_error_names_the_cause_under_torchrun():
    """Catches: torchrun's summary ('=====', ChildFailedError, the docs link) or the run's last
    log line reported instead of the rank's error or abort."""
    assert gpu_runs.last_error(RANK_ERROR) == \
        "[rank1]: RuntimeError: No backend type associated with device type cpu"
    assert gpu_runs.last_error(ABORT, "04:55:05 attacks done") == \
        "terminate called without an active exception"
    assert gpu_runs.last_error("error: --gpus 'x': give CUDA indices\n") == \
        "error: --gpus 'x': give CUDA indices"
    assert gpu_runs.last_error("", "last line\n") == "last line"


def test_checks_print_pass_or_fail_and_count_failures(tmp_path, capsys):
    """Catches: a non-zero exit or an unmet expectation printed as PASS, or not counted (the
    exit status would say all passed)."""
    c = gpu_runs.Checks(str(tmp_path), dict(os.environ), timeout=60)
    py = [sys.executable, "-c"]
    assert c.run("ok", py + ["print('fine')"])
    assert not c.run("dies", py + ["import sys; print('log'); sys.exit('error: planted fault')"])
    assert not c.run("no file", py + ["pass"], c.has("r", "model.pt"))
    out = capsys.readouterr().out.splitlines()
    assert out == ["PASS ok", "FAIL dies: error: planted fault", "FAIL no file: r has no model.pt"]
    assert c.failed == ["dies", "no file"] and c.passed == ["ok"]
