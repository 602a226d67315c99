"""Shared test helpers: generated Fashion-MNIST-format files, the tiny command line of the
end-to-end tests, and the environment torchrun gives a spawned rank. Test modules import them
with `from conftest import ...` (tests/ is on sys.path while pytest runs).

Runs the tests on one thread: their tensors are tiny, and two OpenMP threads on a 2-core
machine that is doing anything else can slow torch down by 10-100x. (pytest.ini puts the
project root on sys.path, so the concept files and the harness import as in train.py.)

Renders each plotting function's figure once per test process: later figures drawn by the same
function are written as a 1x1 stub PNG after the figure is built (every plot call runs with its
real arguments) but not rasterized -- rasterizing costs ~1 s a figure and an end-to-end test's
sub-runs draw dozens of the same kind. The figures themselves are checked, rendered, by
tests/test_plots.py (marked `real_figures`: every savefig real)."""
import gzip
import os
import struct
import sys
import zlib

import numpy as np
import pytest
import torch

from harness.launch import free_port  # noqa: F401  (the tests' MASTER_PORT)

torch.set_num_threads(1)

_RENDERED = set()                      # (file, function) of the plot functions rendered so far


def _stub_png(path):
    """A valid 1x1 grey PNG, written from the format's definition."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b""))


@pytest.fixture(autouse=True)
def _figures_rendered_once_per_function(request, monkeypatch):
    if request.node.get_closest_marker("real_figures"):
        return
    from matplotlib.figure import Figure
    real = Figure.savefig

    def savefig(fig, fname, *args, **kwargs):
        f = sys._getframe(1)                   # the plot function: the first caller outside
        while f and (f.f_code.co_name == "_save" or "matplotlib" in f.f_code.co_filename):
            f = f.f_back                       # matplotlib and the shared _save helpers
        key = (f.f_code.co_filename, f.f_code.co_name) if f else None
        if key in _RENDERED and isinstance(fname, (str, os.PathLike)):
            return _stub_png(fname)
        _RENDERED.add(key)
        return real(fig, fname, *args, **kwargs)
    monkeypatch.setattr(Figure, "savefig", savefig)


def write_idx(path, array):
    """An IDX file written by hand from the format's definition (magic, dims, bytes)."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def make_fake_mnist(root, n_train=96, n_test=48, seed=0):
    """Small Fashion-MNIST-format files in torchvision's layout: class = a bright square's
    position, so a tiny network can learn it."""
    rng = np.random.default_rng(seed)
    raw = os.path.join(root, "FashionMNIST", "raw")
    os.makedirs(raw)
    for split, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 40, (n, 28, 28))
        for i, c in enumerate(y):
            r, q = divmod(int(c), 5)
            x[i, 4 + 10 * r:12 + 10 * r, 2 + 5 * q:6 + 5 * q] = 250
        write_idx(os.path.join(raw, f"{split}-images-idx3-ubyte.gz"), x)
        write_idx(os.path.join(raw, f"{split}-labels-idx1-ubyte.gz"), y)
    return raw


def tiny_args(tmp_path, *extra):
    """The command line of a tiny run on 96 + 16 generated images (64 of them trained on, 4
    steps of 16 an epoch; the 16 test images one evaluation batch): a 3-layer, 2-node,
    2-channel network over 8 candidates (the four conv ops in brsf, whose per-step draws make
    the random-generator state matter; skip_connect in usf; the pools; none) -- a test of the
    22-candidate space passes its --rules and --skip_rules."""
    root = str(tmp_path / "data")
    if not os.path.exists(root):
        make_fake_mnist(root, n_test=16)
    return ["--dataset", "fashion-mnist", "--data", root, "--save", str(tmp_path / "runs"),
            "--subset", "64", "--batch_size", "16", "--init_channels", "2", "--layers", "3",
            "--nodes", "2", "--report_freq", "1", "--seed", "5", "--rules", "brsf", "--skip_rules", "usf",
            *extra]


def rank_env(rank, world, port):
    """What torchrun gives process `rank` of `world` (one thread each: 2 ranks share 2 cores)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


def cells_read_by_auxiliary_head(net, x):
    """(indices of the cells whose output the auxiliary head reads, that input): forward hooks
    on every cell and a pre-hook on the head, over one training-mode forward of x."""
    outs, seen = {}, []
    for i, cell in enumerate(net.cells):
        cell.register_forward_hook(lambda m, inp, out, i=i: outs.__setitem__(i, out))
    net.auxiliary_head.register_forward_pre_hook(lambda m, inp: seen.append(inp[0]))
    net(x)
    assert len(seen) == 1
    return [i for i, o in outs.items() if o is seen[0]], seen[0]
