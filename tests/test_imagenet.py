"""ImageNet transfer: DARTS's NetworkImageNet and its size, the streamed ImageFolder
pipeline (layout errors, transforms, labels, DistributedSampler shards), the train_imagenet.py
defaults, and a retraining through the command line with resume, top-5 and an attack.
Every number is worked out by hand or from DARTS's code, never read back from the code under
test."""
import ast
import json
import os
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

import darts
from harness import data
import genotypes
from harness import options
from harness import retrain
from harness import run_dir
import train
from conftest import cells_read_by_auxiliary_head, free_port, rank_env

CLASSES = ("n01440764", "n01443537", "n01484850")       # sorted: labels 0, 1, 2
SIZES = ((40, 30), (33, 47), (50, 50), (29, 41))         # (width, height), odd on purpose
# a 2-node genotype with rules: parameterized ops, identities and a pool in both cells
G_SMALL = darts.Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3_fa", 1), ("skip_connect", 0),
            ("dil_conv_3x3_usf", 2)], normal_concat=[2, 3],
    reduce=[("max_pool_3x3", 0), ("skip_connect_brsf", 1), ("skip_connect", 2),
            ("max_pool_3x3", 1)], reduce_concat=[2, 3])


def make_image_folder(root, classes=CLASSES, splits=("train", "val")):
    """3 classes x 4 JPEGs of odd sizes per split; class k's images have channel k bright
    (k = 0 red, 1 green, 2 blue), so a label can be checked against its pixels."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in splits:
        for k, name in enumerate(classes):
            d = os.path.join(root, split, name)
            os.makedirs(d)
            for i, (w, h) in enumerate(SIZES):
                a = rng.integers(0, 60, (h, w, 3))
                a[..., k % 3] += 180
                Image.fromarray(a.astype(np.uint8)).save(os.path.join(d, f"im{i}.JPEG"))
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(str(tmp_path_factory.mktemp("imagenet")))


# ============================================================================ the network

def darts_v2_imagenet_params_by_hand(C=48, layers=14, classes=1000):
    """DARTS's NetworkImageNet(48, 1000, 14, darts.DARTS_V2) counted from its parts, the way DARTS's
    count_parameters_in_MB counts (the auxiliary head left out). Every conv is bias-free and
    every BN affine (2 parameters per channel):
        stem0: conv 3x3 3 -> C/2, BN, conv 3x3 C/2 -> C, BN; stem1: conv 3x3 C -> C, BN
        ReLUConvBN(Cin, C) and FactorizedReduce(Cin, C) (two Cin -> C/2 1x1 convs): Cin*C + 2C
        sep_conv_3x3(C): twice (depthwise 9C + pointwise C*C + BN 2C); dil_conv_3x3: once
        darts.DARTS_V2 normal cell: 5 sep_conv_3x3, 1 dil_conv_3x3, 2 identities (skip_connect at
        stride 1); reduction cell: 5 max pools and 3 skip_connects from node 2 (stride 1,
        identities): no parameters but its two preprocessing blocks
        cells: the first reads the stem's reduced output (FactorizedReduce), reductions at
        layers//3 = 4 and 2*layers//3 = 9 double C; a cell outputs 4 C (4 nodes concatenated)
        classifier: 4 * 4C_last x classes + classes."""
    def relu_conv_bn(c_in, c):
        return c_in * c + 2 * c
    sep = lambda c: 2 * (9 * c + c * c + 2 * c)                     # noqa: E731
    dil = lambda c: 9 * c + c * c + 2 * c                            # noqa: E731
    n = 3 * (C // 2) * 9 + 2 * (C // 2) + (C // 2) * C * 9 + 2 * C   # stem0
    n += C * C * 9 + 2 * C                                           # stem1
    c_pp, c_p, c = C, C, C
    for i in range(layers):
        reduction = i in (4, 9)
        c = 2 * c if reduction else c
        n += relu_conv_bn(c_pp, c) + relu_conv_bn(c_p, c)           # FR has the same count
        n += 0 if reduction else 5 * sep(c) + dil(c)
        c_pp, c_p = c_p, 4 * c
    return n + c_p * classes + classes


def test_network_imagenet_has_darts_parameter_count_and_shapes():
    """DARTS (Liu et al. 2019, Table 3) reports 4.7M parameters for its ImageNet network;
    counted by hand (above) that is 4,718,752. The auxiliary head (AuxiliaryHeadImageNet,
    no BN after its 2x2 conv): 1x1 conv 768*128 + BN 2*128 + 2x2 conv 128*768*4 + linear
    768*1000 + 1000 = 1,260,776, reading 768 = 4 * 4 * 48 channels of 7x7 maps. 224x224 input:
    stems 224 -> 28, cells 0-3 at 28, 4-8 at 14, 9-13 at 7; logits (B, 1000)."""
    assert darts_v2_imagenet_params_by_hand() == 4_718_752
    torch.manual_seed(0)
    net = darts.NetworkImageNet(48, 1000, 14, darts.DARTS_V2, auxiliary=True,
                                mean=data.DATASETS["imagenet"][2], std=data.DATASETS["imagenet"][3])
    assert sum(p.numel() for n, p in net.named_parameters() if "auxiliary" not in n) == 4_718_752
    head = 768 * 128 + 2 * 128 + 128 * 768 * 4 + 768 * 1000 + 1000
    assert head == 1_260_776 and sum(p.numel() for p in net.auxiliary_head.parameters()) == head
    assert [type(m).__name__ for m in net.auxiliary_head.features] == \
        ["RuleConv2d", "BatchNorm2d", "ReLU", "RuleConv2d", "ReLU"]
    first, module = next(net.named_children())                        # the first module
    assert first == "normalize" and type(module).__name__ == "Normalize"
    sizes, head_in = [], []
    for cell in net.cells:
        cell.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    net.auxiliary_head.register_forward_pre_hook(lambda m, i: head_in.append(i[0].shape))
    with torch.no_grad():
        out = net.train()(torch.rand(2, 3, 224, 224))
    assert out.shape == (2, 1000) and net.logits_aux.shape == (2, 1000)
    assert sizes == [28] * 4 + [14] * 5 + [7] * 5 and head_in == [(2, 768, 7, 7)]
    assert net.eval()(torch.rand(1, 3, 224, 224)).shape == (1, 1000) and net.logits_aux is None


@pytest.mark.parametrize("layers, aux_cell", [(3, 2), (5, 3), (6, 4), (8, 5), (14, 9)])
def test_network_imagenet_auxiliary_head_reads_the_cell_two_thirds_deep(layers, aux_cell):
    """DARTS's NetworkImageNet computes its auxiliary logits from the output of cell
    2*layers//3 (the second reduction cell). aux_cell worked out by hand; the head's input must
    be exactly that cell's output (forward hooks), with the second reduction's channels:
    multiplier 2 x C 4 x 4 = 32."""
    torch.manual_seed(0)
    net = darts.NetworkImageNet(4, 10, layers, G_SMALL, auxiliary=True).train()
    read, head_input = cells_read_by_auxiliary_head(net, torch.rand(2, 3, 64, 64))
    assert read == [aux_cell], f"the auxiliary head reads the output of cell(s) {read}; " \
        f"DARTS puts it after cell 2*{layers}//3 = {aux_cell}"
    assert head_input.shape[1] == 32 and net.auxiliary_head.features[0].in_channels == 32
    assert [i for i, c in enumerate(net.cells) if c.reduction][-1] == aux_cell   # the second


def test_genotypes_module_is_reexported_and_imports_only_ops_and_torch():
    for name in ("Genotype", "save_genotype", "load_genotype", "check_genotype", "force_rule",
                 "random_rules", "random_genotype"):
        assert getattr(darts, name) is getattr(genotypes, name)
    tree = ast.parse(open(genotypes.__file__).read())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names} | {n.module.split(".")[0] for n in ast.walk(tree)
                                     if isinstance(n, ast.ImportFrom)}
    assert imported - set(sys.stdlib_module_names) <= {"torch", "ops"}, imported


# ============================================================================ the pipeline

def test_layout_errors_are_one_line(tmp_path):
    """Missing directory, missing train/ or val/, a flat val/ (ILSVRC's as downloaded), other
    classes in val/: one line each, through the command line before a run directory exists."""
    def stop(root):
        with pytest.raises(SystemExit) as e:
            data.image_folders(str(root))
        assert "\n" not in str(e.value) and "<class>/*.JPEG" in str(e.value)
        return str(e.value)
    assert "does not exist" in stop(tmp_path / "nowhere")
    make_image_folder(str(tmp_path / "a"), splits=("val",))
    assert "has no train/" in stop(tmp_path / "a")
    make_image_folder(str(tmp_path / "b"), splits=("train",))
    assert "has no val/" in stop(tmp_path / "b")
    make_image_folder(str(tmp_path / "c"), splits=("train",))
    os.makedirs(tmp_path / "c" / "val")
    open(tmp_path / "c" / "val" / "ILSVRC2012_val_00000001.JPEG", "wb").close()
    assert "class folder" in stop(tmp_path / "c")
    make_image_folder(str(tmp_path / "d"), splits=("train",))
    make_image_folder(str(tmp_path / "d"), classes=CLASSES[:2] + ("n99",), splits=("val",))
    assert "not the same names" in stop(tmp_path / "d")
    darts.save_genotype(G_SMALL, str(tmp_path / "g.json"))
    with pytest.raises(SystemExit, match="has no train/"):
        train.main(["--train", "--dataset", "imagenet", "--data", str(tmp_path / "a"),
                    "--genotype", str(tmp_path / "g.json"), "--save", str(tmp_path / "runs")])
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_transforms_shapes_labels_and_epochs(folder):
    """DARTS's shapes at the default 224 (two images), then streams at crop 32: [0, 1] floats,
    labels = the sorted folder names (checked against each image's bright channel), len()
    as Batches (12 images, batch 5: 3; batch 11: 12 % 11 = 1 image left, dropped in training),
    one epoch's data the same on every pass, another epoch another order."""
    from PIL import Image
    for w, h in SIZES[:2]:
        img = Image.new("RGB", (w, h), (10, 200, 30))
        for is_train in (True, False):
            x = data.imagenet_transform(is_train)(img)
            assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    train_s = data.imagenet_stream(folder, True, 5, torch.device("cpu"), workers=0, crop_size=32)
    val_s = data.imagenet_stream(folder, False, 5, torch.device("cpu"), workers=2, crop_size=32)
    assert len(train_s) == 3 and len(val_s) == 3
    assert len(data.imagenet_stream(folder, True, 11, torch.device("cpu"), workers=0,
                                    crop_size=32)) == 1
    xs, ys = zip(*val_s)
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.shape == (12, 3, 32, 32) and 0 <= x.min() and x.max() <= 1
    assert y.tolist() == [0] * 4 + [1] * 4 + [2] * 4                 # val/ in folder order
    assert torch.equal(x.mean((2, 3)).argmax(1), y)                   # the bright channel
    xt, yt = zip(*train_s)
    assert torch.cat(xt).shape == (12, 3, 32, 32) and sorted(torch.cat(yt).tolist()) == y.tolist()
    train_w = data.imagenet_stream(folder, True, 4, torch.device("cpu"), workers=2, crop_size=32,
                                   seed=1)
    first = [b for b in train_w]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, train_w))   # (seed, epoch) fixed
    train_w.epoch = 1
    assert not torch.equal(torch.cat([b[1] for b in first]), torch.cat([b[1] for b in train_w]))


def _rank_images(rank, world, port, root, out):
    rank_env(rank, world, port)
    import torch.distributed as dist
    r, w = run_dir.distributed(torch.device("cpu"))                 # gloo
    seen = {}
    s = data.imagenet_stream(root, True, 2, torch.device("cpu"), workers=0, crop_size=16,
                             augment=False, seed=3, rank=r, world=w)
    for epoch in (0, 1):
        s.epoch = epoch
        seen[epoch] = (len(s), [(x, y) for xb, yb in s for x, y in zip(xb, yb)])
    everything = [None] * w
    dist.all_gather_object(everything, seen)
    if r == 0:
        torch.save(everything, out)
    dist.destroy_process_group()


def test_distributed_sampler_gives_ranks_disjoint_images(folder, tmp_path):
    """2 gloo processes (forked): in each epoch the ranks stream 6 images each, disjoint, together all
    12, each with its folder's label; each rank's order changes with the epoch (set_epoch).
    Images are identified by exact equality with the deterministic (no augmentation)
    transform of every file."""
    out = str(tmp_path / "seen.pt")
    ctx = mp.start_processes(_rank_images, args=(2, free_port(), folder, out), nprocs=2,
                             join=False, start_method="fork")      # fork: no second torch import
    assert ctx.join(timeout=120) or ctx.join(timeout=120), "the 2-process run did not finish"
    ranks = torch.load(out, weights_only=False)
    tf = data.imagenet_transform(False, 16)
    from PIL import Image
    files = sorted((c, os.path.join(folder, "train", c, f)) for c in CLASSES
                   for f in os.listdir(os.path.join(folder, "train", c)))
    ref = [(tf(Image.open(p).convert("RGB")), CLASSES.index(c)) for c, p in files]

    def ident(x, y):
        hits = [i for i, (r, label) in enumerate(ref) if torch.equal(r, x)]
        assert len(hits) == 1 and ref[hits[0]][1] == int(y)
        return hits[0]
    for epoch in (0, 1):
        ids = []
        for seen in ranks:
            n_batches, images = seen[epoch]
            assert n_batches == 3 and len(images) == 6
            ids.append([ident(x, y) for x, y in images])
        assert not set(ids[0]) & set(ids[1]) and sorted(ids[0] + ids[1]) == list(range(12))
    orders = [[ident(x, y) for x, y in ranks[0][e][1]] for e in (0, 1)]
    assert orders[0] != orders[1]


def test_top5_against_hand_ranks():
    """Logits whose true class ranks 1st, 3rd, 5th, 6th: top-1 25%, top-5 75%."""
    y = torch.tensor([0, 1, 2, 3])
    logits = torch.zeros(4, 8)
    logits[0, 0] = 9                                     # rank 1
    logits[1, [5, 6]] = 9; logits[1, 1] = 5              # noqa: E702   rank 3
    logits[2, [4, 5, 6, 7]] = 9; logits[2, 2] = 5        # noqa: E702   rank 5
    logits[3, [0, 4, 5, 6, 7]] = 9; logits[3, 3] = 5     # noqa: E702   rank 6

    class Fixed(nn.Module):
        def forward(self, x):
            return x
    top1, loss, top5 = run_dir.evaluate(Fixed(), [(logits, y)], top5=True)
    assert (top1, top5) == (25.0, 75.0)
    assert loss == pytest.approx(F.cross_entropy(logits, y).item())
    assert len(run_dir.evaluate(Fixed(), [(logits, y)])) == 2


# ============================================================================ the defaults

def test_train_imagenet_defaults_and_schedule():
    """DARTS train_imagenet.py / DARTS Sec. A.2: batch 128, lr 0.1, momentum 0.9, weight decay
    3e-5, 250 epochs, 48 channels, 14 cells, auxiliary 0.4, label smoothing 0.1, lr x0.97 per
    epoch, grad clip 5, no drop path. The schedule after 3 epochs: 0.1 * 0.97^3. DARTS's
    CrossEntropyLabelSmooth (written out) equals the smoothed cross-entropy the loop uses."""
    args = options.build_parser().parse_args(["--train", "--dataset", "imagenet"])
    options.apply_defaults(args, "train")
    want = dict(batch_size=128, learning_rate=0.1, momentum=0.9, weight_decay=3e-5, epochs=250,
                init_channels=48, layers=14, auxiliary=True, auxiliary_weight=0.4,
                label_smoothing=0.1, lr_schedule="exponential", lr_gamma=0.97, grad_clip=5.0,
                drop_path_prob=0.0, cutout=0, nesterov=False, workers=4, crop_size=224)
    assert {k: getattr(args, k) for k in want} == want
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], 0.1)
    sched = retrain.make_scheduler(args, opt)
    for _ in range(3):
        opt.step()
        sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(0.1 * 0.97 ** 3, rel=1e-12)
    torch.manual_seed(0)
    z, y, eps, k = torch.randn(6, 10), torch.randint(0, 10, (6,)), 0.1, 10
    target = (1 - eps) * F.one_hot(y, k).float() + eps / k
    darts_loss = (-target * F.log_softmax(z, 1)).mean(0).sum()
    assert F.cross_entropy(z, y, label_smoothing=eps).item() == pytest.approx(darts_loss.item())
    for bad in (["--search", "darts"], ["--train", "--model", "resnet20"],
                ["--train", "--cutout", "16"]):
        a = options.build_parser().parse_args(bad + ["--dataset", "imagenet"])
        mode = options.mode_of(a)
        options.apply_defaults(a, mode)
        with pytest.raises(SystemExit, match="imagenet|ImageNet"):
            options.check_args(a, mode)


# ============================================================================ command line

@pytest.mark.slow
def test_retrain_resume_top5_and_attack(folder, tmp_path):
    """train.py --train --dataset imagenet at toy sizes (crop 32, 4 channels, 3 cells, 1
    worker): 2 epochs uninterrupted equal 1 epoch, --stop_after, then --resume (weights,
    buffers, history); top-5 in history and log; the lr of epoch 2 is 0.1 * 0.97; an attack on
    the checkpoint streams val/."""
    gpath = str(tmp_path / "g.json")
    darts.save_genotype(G_SMALL, gpath)
    argv = ["--train", "--dataset", "imagenet", "--data", folder, "--genotype", gpath,
            "--save", str(tmp_path / "runs"), "--batch_size", "4", "--init_channels", "4",
            "--layers", "3", "--crop_size", "32", "--epochs", "2", "--workers", "1",
            "--report_freq", "1", "--seed", "5"]
    train.main(argv + ["--run_name", "full"])
    train.main(argv + ["--run_name", "cut", "--stop_after", "1"])
    cut, full = tmp_path / "runs" / "cut", tmp_path / "runs" / "full"
    assert len(json.loads((cut / "history.json").read_text())) == 1
    train.main(["--resume", str(cut)])
    a = torch.load(full / "checkpoint.pt", weights_only=False)
    b = torch.load(cut / "checkpoint.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 1 and a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ha, hb = (json.loads((d / "history.json").read_text()) for d in (full, cut))
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(ha) == strip(hb)
    assert all(0 <= e["test_acc"] <= e["test_top5"] <= 100 for e in ha)
    assert "top-5" in (full / "log.txt").read_text()
    assert a["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.1 * 0.97 ** 2)
    assert a["config"]["num_classes"] == 3 and "stem0.0.weight" in a["model"]
    rows = train.main(["--attack", "fgsm", "--checkpoint", str(full / "checkpoint.pt"),
                       "--attack_grad", "exact", "--batch_size", "6", "--workers", "0",
                       "--save", str(tmp_path / "runs"), "--run_name", "attack"])
    assert rows and (tmp_path / "runs" / "attack" / "robustness.csv").exists()
    assert "of 6" in (tmp_path / "runs" / "attack" / "log.txt").read_text()
