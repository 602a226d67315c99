"""Search memory of the BioNAS supernet (the paper's configuration: 22 candidates, 16 channels,
5 cells, 4 nodes, 32x32x3 images) with --partial_channels and --checkpoint_cells.

    python benchmarks/search_memory.py [--batch 2] [--gpu 0]

On CUDA: peak allocated memory (torch.cuda.max_memory_allocated) of one weight step. On the CPU:
the bytes autograd keeps for backward (saved-tensor hooks) -- the activation memory, without the
allocator's temporaries; with checkpointed cells, what is kept outside the cells plus every
cell's two inputs plus the largest cell's activations (the one being recomputed). Prints per-sample memory, step time, and the largest batch that fits 16, 40 and
80 GB once parameters, gradients and momentum are set aside.
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import ops  # noqa: E402
from harness.search import make_supernet  # noqa: E402


def activation_bytes(net, x, y):
    """(bytes autograd saves for backward, [bytes saved inside each cell])."""
    total, seen, cell_bytes, current = [0], set(), [0] * len(net.cells), [None]

    def pack(t):
        key = (t.data_ptr(), t.numel(), t.dtype)
        if key not in seen:
            seen.add(key)
            total[0] += t.numel() * t.element_size()
            if current[0] is not None:
                cell_bytes[current[0]] += t.numel() * t.element_size()
        return t
    handles = []
    for i, c in enumerate(net.cells):
        handles.append(c.register_forward_pre_hook(lambda *_, i=i: current.__setitem__(0, i)))
        handles.append(c.register_forward_hook(lambda *_: current.__setitem__(0, None)))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(net(x), y)
    loss.backward()
    for h in handles:
        h.remove()
    return total[0], cell_bytes


def sum_inputs(net, x):
    """Bytes of the (s0, s1) inputs of every cell, which a checkpointed forward keeps."""
    total = [0]
    hs = [c.register_forward_pre_hook(lambda _, inp: total.__setitem__(
        0, total[0] + sum(t.numel() * t.element_size() for t in inp[:2]))) for c in net.cells]
    with torch.no_grad():
        net(x)
    for h in hs:
        h.remove()
    return total[0]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--gpu", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(f"cuda:{a.gpu}") if a.gpu is not None else torch.device("cpu")
    cands = ops.search_space()
    print(f"torch {torch.__version__}, {dev}, batch {a.batch}, {len(cands)} candidates, C=16, "
          f"5 cells, 4 nodes, 32x32x3\n")
    print("| configuration | activation memory per image | step time per image | "
          "fixed (weights, grads, momentum) | largest batch 16 / 40 / 80 GB |")
    print("|---|---|---|---|---|")
    for k, ckpt in ((1, False), (4, False), (1, True), (4, True)):
        torch.manual_seed(0)
        net = make_supernet(16, 10, 5, cands, partial_channels=k, checkpoint_cells=ckpt).to(dev)
        x = torch.rand(a.batch, 3, 32, 32, device=dev)
        y = torch.randint(0, 10, (a.batch,), device=dev)
        fixed = 3 * sum(p.numel() * p.element_size() for p in net.parameters())
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
            t0 = time.perf_counter()
            F.cross_entropy(net(x), y).backward()
            torch.cuda.synchronize(dev)
            dt = time.perf_counter() - t0
            per = (torch.cuda.max_memory_allocated(dev) - base) / a.batch
        else:
            torch.manual_seed(0)                   # the same network, cells not checkpointed
            total, cells = activation_bytes(make_supernet(16, 10, 5, cands, partial_channels=k)
                                            .to(dev), x, y)
            t0 = time.perf_counter()
            F.cross_entropy(net(x), y).backward()
            dt = time.perf_counter() - t0
            if ckpt:   # peak: what is saved outside the cells, every cell's two inputs, and
                       # the activations of the one cell being recomputed (the largest)
                per = (total - sum(cells) + max(cells) + sum_inputs(net, x)) / a.batch
            else:
                per = total / a.batch
        fits = [max(0, int((gb * 2 ** 30 - fixed) // per)) for gb in (16, 40, 80)]
        name = (f"partial_channels {k}" if k > 1 else "full channels") + (" + checkpoint_cells" if ckpt else "")
        print(f"| {name} | {per / 2 ** 20:.1f} MiB | {1000 * dt / a.batch:.0f} ms | "
              f"{fixed / 2 ** 20:.1f} MiB | {' / '.join(map(str, fits))} |", flush=True)


if __name__ == "__main__":
    main()
