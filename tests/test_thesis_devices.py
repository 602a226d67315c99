"""--equinas and the thesis --experiment drivers on the device train.py picks (--gpu N), and
their single runs spread over --gpus, end to end on small generated Fashion-MNIST files.

On this CPU-only machine the device is faked: train.pick_device returns torch.device("meta"),
and `FakeDevice` records every tensor and module sent there while leaving it on the CPU (so the
run completes), and records every module sent to any other explicit device. A driver that builds
its networks where it likes (the CPU) is seen doing so. The CUDA tests at the end run the same
commands on a real GPU (BIONAS_TEST_DEVICE, as tests/test_cuda.py; skipped without one)."""
import json
import os
import re

import pytest
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from harness import data, run_dir
from harness.presets import THESIS_EXPERIMENTS
import train
from conftest import make_fake_mnist

META = torch.device("meta")
TINY_EQUINAS = "n_train=60,n_test=30,fields=1,layers=2,kernel_size=3,hidden=8,bn_images=0"
TINY = {   # each thesis experiment at a size of seconds
    "north-generated": "n_fs=2,hidden=1,samples=100,epochs_per_layer=1",
    "north-pareto": "epochs=1",
    "dyno-transfer": "source_images=32,pretrain_epochs=1,iterations=2",
    "north-cost": "cost_steps=1",
    "dyno-phi": "source_images=32,pretrain_epochs=1,buffer=40,wide=0",
    "dyno-moving": "source_images=32,pretrain_epochs=1,iterations=2",
    "equinas-table3": TINY_EQUINAS + ",generations=1,parent_size=2",
    "equinas-table4": TINY_EQUINAS + ",epochs_d=1",
    "equinas-fig12": TINY_EQUINAS + ",fig12_train=40,fig12_epochs=1",
    "equinas-cost": "cost=1/8/2,cost_repeats=1",
}
MODELS = {"equinas": "EquiCNN", "north": "GrowableNet", "dyno": "GrowableNet"}


@pytest.fixture
def fake(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST", str(tmp_path / "nowhere"))
    monkeypatch.delenv(run_dir.AT_WORLD_1, raising=False)
    root = str(tmp_path / "d")
    make_fake_mnist(root, n_train=96, n_test=48)
    return ["--data", root, "--save", str(tmp_path / "runs"), "--seeds", "1"]


class FakeDevice(TorchFunctionMode):
    """Tensors sent to torch.device("meta") (Tensor.to, a factory's device=) stay where they are
    and are recorded in `tensors`; Module.to(meta) likewise in `modules`, and Module.to of any
    other explicit device is recorded there too (Module.to(tensor), following a tensor, is not)."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.tensors, self.modules, self.sent = [], [], []
        to = nn.Module.to

        def module_to(module, *args, **kwargs):
            device = torch._C._nn._parse_to(*args, **kwargs)[0]
            if device is not None and not (args and isinstance(args[0], torch.Tensor)):
                self.modules.append((type(module).__name__, device.type))
                if device == META:
                    self.sent.append(module)
                    return module
            return to(module, *args, **kwargs)
        monkeypatch.setattr(nn.Module, "to", module_to)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.to:
            device, dtype = torch._C._nn._parse_to(*args[1:], **kwargs)[:2]
            if device == META:
                self.tensors.append(tuple(args[0].shape))
                return args[0] if dtype is None else args[0].to(dtype)
        elif "device" in kwargs and kwargs["device"] is not None and \
                torch.device(kwargs["device"]) == META:
            kwargs["device"] = "cpu"
            self.tensors.append(("factory", func.__name__))
        return func(*args, **kwargs)


def run_on_fake_device(monkeypatch, argv):
    """train.main(argv) with pick_device giving the fake device; the FakeDevice's records."""
    monkeypatch.setattr(train, "pick_device", lambda gpu: META)
    rec = FakeDevice(monkeypatch)
    with rec:
        train.main(argv)
    return rec


def assert_on_fake_device(rec, model):
    """`model` networks were sent to the device, no network anywhere else, and so was data."""
    assert (model, "meta") in rec.modules, rec.modules
    assert [m for m in rec.modules if m[1] != "meta"] == []
    assert any(len(s) >= 2 and s[0] != "factory" for s in rec.tensors), rec.tensors


@pytest.mark.parametrize("method", ["evolutionary", "differentiable"])
def test_equinas_builds_its_networks_on_the_picked_device(tmp_path, fake, monkeypatch, method):
    """Catches: --equinas ignoring the device (its searches building their networks on the
    CPU: EquiCNN.to('cpu') seen, nothing sent to the device), and the data left behind."""
    rec = run_on_fake_device(monkeypatch, ["--equinas", method, "--quick", "--epochs", "1",
                                           "--batch_size", "16", "--run_name", "e"] + fake)
    assert_on_fake_device(rec, "EquiCNN")
    log = (tmp_path / "runs" / "e" / "log.txt").read_text()
    assert "on meta" in log and "note:" not in log


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TINY))
def test_thesis_experiments_build_their_networks_on_the_picked_device(tmp_path, fake, monkeypatch,
                                                                      name):
    """Catches: a thesis experiment building its networks on the CPU whatever --gpu says (the
    drivers' fit/search with device 'cpu', GrowableMLP never moved), or its batches left there."""
    rec = run_on_fake_device(monkeypatch, ["--experiment", name, "--quick", "--sizes", TINY[name],
                                           "--run_name", "x"] + fake)
    if name == "equinas-cost":                        # layers, not networks: timed on the device
        assert {("GroupConv2d", "meta"), ("MixedGroupConv2d", "meta")} <= set(rec.modules)
        assert ("factory", "randn") in rec.tensors and all(m[1] == "meta" for m in rec.modules)
    else:
        assert_on_fake_device(rec, MODELS[name.split("-")[0]])
    if name in ("dyno-transfer", "north-cost", "dyno-moving"):     # the CNNs too
        assert any("conv" in getattr(m, "kinds", ()) for m in rec.sent)
    assert (tmp_path / "runs" / "x" / f"{THESIS_EXPERIMENTS[name][1]}.md").exists()


def test_equinas_honours_epochs_learning_rate_and_batch_size(tmp_path, fake, monkeypatch):
    """Catches: --epochs, --learning_rate or --batch_size of --equinas not reaching the search
    (the quick size's 2 epochs, Adam 0.01 and batch 64 used instead)."""
    import equinas
    seen = {}
    search = equinas.search_differentiable
    monkeypatch.setattr(equinas, "search_differentiable",
                        lambda *a, **k: seen.update(k) or search(*a, **k))
    train.main(["--equinas", "differentiable", "--quick", "--epochs", "1", "--learning_rate",
                "0.003", "--batch_size", "16", "--run_name", "h"] + fake)
    assert (seen["epochs"], seen["lr"], seen["batch_size"]) == (1, 0.003, 16)
    hist = json.loads((tmp_path / "runs" / "h" / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [0.0, 1.0]             # one epoch of 86 // 16 steps


@pytest.mark.slow
def test_gpus_deals_thesis_single_runs_to_processes_and_reuses_them(tmp_path, fake, monkeypatch):
    """Catches: --gpus refused for thesis experiments, a single run trained by two processes or
    by none, the report written from one process's share, the group of a transfer split, a
    --resume training again."""
    def trained(log):                  # a single run's line when trained (not when reused)
        return [line for line in log.splitlines() if "earlier" not in line and
                re.match(r"\d\d:\d\d:\d\d (\S+: test error|\[\d+/\d+ finished\] )", line)]
    # north-generated: its 7 strategies and the static-64 baseline
    for name, n in (("equinas-table4", 10), ("north-generated", 8)):
        argv = fake + ["--experiment", name, "--quick", "--sizes", TINY[name], "--seeds", "1,2"]
        rows = train.main(argv + ["--gpus", "cpu,cpu", "--run_name", f"{name}-2"])
        one = train.main(argv + ["--run_name", f"{name}-1"])
        strip = lambda rs: [{k: v for k, v in r.items() if "seconds" not in k} for r in rs]  # noqa: E731
        assert len(rows) == n and strip(rows) == strip(one)
        run = tmp_path / "runs" / f"{name}-2"
        log = (run / "log.txt").read_text()
        assert log.count("started on cpu") == 2 and len(trained(log)) == n
        assert log.count("earlier") == n                       # the report's pass reuses all
        train.main(["--resume", str(run), "--gpus", "cpu"])
        log = (run / "log.txt").read_text()
        assert log.count("started on cpu") == 3 and len(trained(log)) == n
    assert (tmp_path / "runs" / "north-generated-2" / "generated.md").exists()


def test_shares_deal_groups_round_robin_in_meeting_order():
    """Catches: a group given to two processes or to none, a repeated group changing hands."""
    from experiments.thesis_runs import shares
    groups = ["a", "b", "a", "c", "d", "b", "e"]
    deal = [shares(i, 3) for i in range(3)]
    owners = [[i for i in range(3) if deal[i](g)] for g in groups]
    assert all(len(o) == 1 for o in owners)
    assert [o[0] for o in owners] == [0, 1, 0, 2, 0, 1, 1]


def test_shared_runs_eta_is_the_whole_runs_over_its_processes(tmp_path, monkeypatch):
    """Catches an ETA that counts the runs this process visited rather than those not finished by
    any process (a resumed run, or one shared by --gpus, then shows hours for minutes), or that
    ignores the processes sharing the run: 6 runs, 2 finished before, one more trained in 10 s of
    a fake clock by one of 2 processes: 3 left, 10 s each, over 2 processes: 15 s."""
    from experiments.thesis_neurogenesis import SharedRuns
    from experiments.thesis_runs import shares
    clock = [100.0]
    monkeypatch.setattr(run_dir.time, "perf_counter", lambda: clock[0])
    folder = tmp_path / "x.runs"
    folder.mkdir()
    for key in ("a", "b"):
        (folder / f"{key}.json").write_text("[]")
    lines = []
    runs = SharedRuns(str(folder), {"n": 1}, 6, lines.append, share=shares(0, 2))

    def work(state, checkpoint):
        clock[0] += 10.0
        return [{"k": 1}]
    runs("c", work, lambda rows: "c done")
    assert lines[-1].startswith("[3/6 finished] c done") and lines[-1].endswith("ETA 15s)")


# ------------------------------------------------------------------ on a real GPU

DEVICE = os.environ.get("BIONAS_TEST_DEVICE", "cuda:0")


def _cuda_index():
    try:
        dev = torch.device(DEVICE)
    except (RuntimeError, ValueError):
        return None
    if dev.type != "cuda" or not torch.cuda.is_available() or \
            (dev.index or 0) >= torch.cuda.device_count():
        return None
    return dev.index or 0


cuda = pytest.mark.skipif(_cuda_index() is None, reason=f"{DEVICE} is not a CUDA device here")


@cuda
@pytest.mark.parametrize("argv", [["--equinas", "evolutionary"], ["--equinas", "differentiable"]]
                         + [["--experiment", n, "--sizes", s] for n, s in TINY.items()])
def test_thesis_runs_on_the_gpu(tmp_path, fake, argv):
    """The same commands with --gpu N on a real GPU: they finish, the GPU did the work, and an
    --equinas checkpoint holds CUDA tensors."""
    gpu = _cuda_index()
    torch.cuda.reset_peak_memory_stats(gpu)
    extra = ["--epochs", "1", "--batch_size", "16"] if argv[0] == "--equinas" else []
    train.main(argv + ["--quick", "--gpu", str(gpu), "--run_name", "g"] + extra + fake)
    assert torch.cuda.max_memory_allocated(gpu) > 0
    if argv[0] == "--equinas":
        state = torch.load(tmp_path / "runs" / "g" / "checkpoint.pt", weights_only=False)["state"]
        model = state["model"] if "model" in state else state["population"][0]["model"]
        assert all(t.device == torch.device("cuda", gpu) for t in model.values())


@cuda
def test_thesis_experiment_gpus_on_the_gpu(tmp_path, fake):
    """--gpus N,N: two processes on the GPU share equinas-table4's single runs."""
    gpu = _cuda_index()
    rows = train.main(["--experiment", "equinas-table4", "--quick", "--sizes", TINY["equinas-table4"],
                       "--gpus", f"{gpu},{gpu}", "--run_name", "g"] + fake)
    log = (tmp_path / "runs" / "g" / "log.txt").read_text()
    assert len(rows) == 5 and log.count(f"started on cuda:{gpu}") == 2
