"""Datasets on disk and in-memory mini-batches with augmentation on the whole batch.

CIFAR-10/100 (torchvision, downloaded when online), ImageNet16-120 (NAS-Bench-201 pickles from a
local directory), MNIST and Fashion-MNIST (IDX files in torchvision's layout; Fashion-MNIST is
also found in Debian's /usr/share/datasets/fashion-mnist), rotMNIST (its .amat files, float
images: harness/rotmnist.py, for --equinas). Images stay uint8 in memory and are
returned as float [0, 1] batches: normalization is the network's first module.
ImageNet (an ImageFolder directory) is streamed from disk instead: image_folders, Stream.
"""
import gzip
import math
import os
import pickle
import zlib

import copy

import numpy as np
import torch
import torch.nn.functional as F


DATASETS = {  # name: (in_channels, classes, mean, std, crop padding, flip)
    "cifar10": (3, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 4, True),
    "cifar100": (3, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 4, True),
    "imagenet16-120": (3, 120, (0.4811, 0.4575, 0.4079), (0.2479, 0.2402, 0.2552), 2, True),
    "mnist": (1, 10, (0.1307,), (0.3081,), 2, False),
    "fashion-mnist": (1, 10, (0.2860,), (0.3530,), 2, True),
    # the standard rotMNIST files (harness/rotmnist.py), float images; --equinas only
    "rotmnist": (1, 10, (0.12996,), (0.29698,), 0, False),
    # streamed (Stream); classes: the folders found; DARTS train_imagenet.py's statistics
    "imagenet": (3, 1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0, True),
}
SYSTEM_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def read_idx(path):
    """An IDX file (MNIST format, optionally .gz) of unsigned bytes as a numpy array; a
    truncated, corrupt or foreign file stops with one line naming it."""
    def bad(why):
        return SystemExit(f"error: {path} is not a complete IDX file ({why}); download it "
                          f"again or pass --data DIR holding intact files")
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:           # gzip.BadGzipFile is an OSError
        raise bad(f"{type(e).__name__}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise bad("its header is not that of an IDX file of unsigned bytes")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise bad("its header is cut short")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    need = 4 + 4 * ndim + math.prod(shape)
    if len(data) != need:
        raise bad(f"its header announces {need:,} bytes, the file holds {len(data):,}")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(d, stem):
    for ext in ("", ".gz"):
        p = os.path.join(d, stem + ext)
        if os.path.exists(p):
            return p
    return None


def _mnist_files(name, root):
    """The four IDX files, all from the first directory that holds all four (torchvision's
    ROOT/FashionMNIST/raw or ROOT/MNIST/raw, ROOT/NAME, ROOT, then Debian's copy of
    Fashion-MNIST), downloaded by torchvision if none does; a directory of --data holding only
    some of them is an error, never completed from another copy."""
    sub = "FashionMNIST" if name == "fashion-mnist" else "MNIST"
    dirs = [os.path.join(root, sub, "raw"), os.path.join(root, name), root]
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    for d in dirs:
        found = [_find_idx(d, s) for s in stems]
        if any(found) and not all(found):
            missing = [s for s, p in zip(stems, found) if p is None]
            raise SystemExit(f"error: {d} holds only some of the {name} files: "
                             f"{', '.join(missing)} (.gz or not) missing; add them or remove "
                             f"the others")
    if name == "fashion-mnist":
        dirs.append(SYSTEM_FASHION_MNIST)
    paths = next(([_find_idx(d, s) for s in stems] for d in dirs
                  if all(_find_idx(d, s) for s in stems)), [None])
    if None in paths:
        try:
            import torchvision
            cls = torchvision.datasets.FashionMNIST if name == "fashion-mnist" else \
                torchvision.datasets.MNIST
            cls(root, train=True, download=True)
            cls(root, train=False, download=True)
            paths = [_find_idx(dirs[0], s) for s in stems]
        except Exception as e:                                   # offline, or no write access
            raise SystemExit(
                f"error: dataset {name} not found. Looked for {', '.join(stems)} (.gz or not) in "
                f"{', '.join(dirs)}; downloading failed ({type(e).__name__}: {e}). Put the four "
                f"IDX files in {dirs[0]} (torchvision's layout) or pass --data DIR"
                + ("; on Debian: apt-get install dataset-fashion-mnist" if name ==
                   "fashion-mnist" else "")) from None
    return paths


def _load_mnist_like(paths):
    xtr, ytr, xte, yte = (read_idx(p) for p in paths)
    return xtr[:, None], ytr, xte[:, None], yte


def _load_cifar(name, root):
    import torchvision
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        tr, te = cls(root, train=True, download=True), cls(root, train=False, download=True)
    except Exception as e:
        raise SystemExit(f"error: dataset {name} not found in {root} and could not be downloaded "
                         f"({type(e).__name__}: {e}). Download it on a machine with internet "
                         f"(torchvision.datasets.{cls.__name__}('{root}', download=True)) "
                         f"and pass --data DIR") from None
    return (tr.data.transpose(0, 3, 1, 2), np.array(tr.targets),
            te.data.transpose(0, 3, 1, 2), np.array(te.targets))


def _load_imagenet16(root):
    """NAS-Bench-201's ImageNet16 pickles (train_data_batch_1..10, val_data), first 120 classes."""
    d = next((p for p in (os.path.join(root, "ImageNet16"), root)
              if os.path.exists(os.path.join(p, "val_data"))), None)
    if d is None:
        raise SystemExit(f"error: ImageNet16-120 not found: looked for train_data_batch_1..10 "
                         f"and val_data in {root}/ImageNet16 and {root}. It cannot be downloaded "
                         f"automatically: get the NAS-Bench-201 ImageNet16 pickles "
                         f"(Chrabaszcz et al. 2017) and pass --data DIR")

    def load(files):
        xs, ys = [], []
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                entry = pickle.load(fh, encoding="latin1")
            xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 16, 16))
            ys.append(np.asarray(entry["labels"]) - 1)
        x, y = np.concatenate(xs), np.concatenate(ys)
        keep = y < 120
        return x[keep], y[keep]
    xtr, ytr = load([f"train_data_batch_{i}" for i in range(1, 11)])
    xte, yte = load(["val_data"])
    return xtr, ytr, xte, yte


def _files_key(paths):
    """Which files were read, as they are now: (resolved path, size, mtime) of each. Two
    --data roots that lead to the same files share one decoded copy; a rewritten file is read
    again."""
    stats = [(os.path.realpath(p), os.stat(p)) for p in paths]
    return tuple((p, st.st_size, st.st_mtime_ns) for p, st in stats)


def _dataset_files(name, root):
    """The files load_dataset reads for `name` (MNIST-like: found or downloaded first), or None
    when they are only known after loading (CIFAR not downloaded yet)."""
    if name in ("mnist", "fashion-mnist"):
        return _mnist_files(name, root)
    if name == "rotmnist":
        from harness.rotmnist import find_files
        return find_files(root)
    if name == "imagenet16-120":
        d = next((p for p in (os.path.join(root, "ImageNet16"), root)
                  if os.path.exists(os.path.join(p, "val_data"))), None)
        return None if d is None else \
            [os.path.join(d, f"train_data_batch_{i}") for i in range(1, 11)] + [os.path.join(d, "val_data")]
    d = os.path.join(root, "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    files = sorted(os.path.join(d, f) for f in os.listdir(d)) if os.path.isdir(d) else []
    return [f for f in files if os.path.isfile(f)] or None


_LAST = {}           # the last dataset loaded, keyed by its files: train.py checks, then runs


def load_dataset(name, root):
    """(train_x, train_y, test_x, test_y): uint8 NCHW images and int64 labels, as tensors.
    The last dataset loaded is kept, keyed by the files read (a run checks its sizes before it
    starts, then trains on it; experiments load it for every sub-run); callers must not modify
    the tensors."""
    if name not in DATASETS:
        raise SystemExit(f"error: unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    files = _dataset_files(name, root)
    key = (name, _files_key(files)) if files else None
    if key is not None and key in _LAST:
        return _LAST[key]
    if name in ("mnist", "fashion-mnist"):
        arrays = _load_mnist_like(files)
    elif name == "rotmnist":
        from harness.rotmnist import load_rotmnist
        arrays = load_rotmnist(root)
    elif name == "imagenet16-120":
        arrays = _load_imagenet16(root)
    else:
        arrays = _load_cifar(name, root)
        files = _dataset_files(name, root)                       # downloaded just now
        key = (name, _files_key(files)) if files else (name, os.path.abspath(root))
    xtr, ytr, xte, yte = (a if torch.is_tensor(a) else torch.from_numpy(np.array(a)) for a in arrays)
    _LAST.clear()
    _LAST[key] = (xtr, ytr.long(), xte, yte.long())
    return _LAST[key]


class Batches:
    """Mini-batches of in-memory uint8 images, as float [0, 1] on `device`, augmented on the
    whole batch (random crop with padding, horizontal flip, cutout filled with `fill`, per
    channel: train.py passes the dataset mean, so that after the network's normalization the
    hole is 0 as in DARTS, whose Cutout follows Normalize). The order and the
    augmentation of epoch e depend only on (seed, e), so a resumed run sees the same data.
    In training, a last batch of a single image is dropped (BatchNorm cannot normalize one
    image on a 1x1 map, e.g. in the auxiliary head)."""

    def __init__(self, x, y, batch_size, device, train=True, pad=0, flip=False, cutout=0,
                 seed=0, memory_format=torch.contiguous_format, rank=0, world=1, fill=0.0):
        self.x, self.y, self.bs, self.device = x, y, batch_size, device
        self.fill = torch.as_tensor(fill, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.train, self.pad, self.flip, self.cutout, self.seed = train, pad, flip, cutout, seed
        self.memory_format, self.epoch, self.rank, self.world = memory_format, 0, rank, world

    def __len__(self):
        n = len(self.x) // self.world if self.world > 1 else len(self.x)
        return n // self.bs if self.train and n % self.bs == 1 and n > 1 else math.ceil(n / self.bs)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        order = torch.randperm(len(self.x), generator=g) if self.train else \
            torch.arange(len(self.x))
        if self.world > 1:       # DistributedSampler's split: every rank the same number of images
            order = order[self.rank:len(order) // self.world * self.world:self.world]
            g = torch.Generator().manual_seed((self.seed * 100003 + self.epoch) * 1009 + self.rank)
        for i in range(0, len(order), self.bs):
            idx = order[i:i + self.bs]
            if self.train and len(idx) == 1 and len(order) > 1:
                break
            xb = self.x[idx].float().div_(255)
            if self.train:
                xb = self.augment(xb, g)
            xb = xb.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            yield xb, self.y[idx].to(self.device, non_blocking=True)

    def augment(self, x, g):
        n, _, h, w = x.shape
        if self.pad:
            p = self.pad
            xp = F.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (n,), generator=g)
            dx = torch.randint(0, 2 * p + 1, (n,), generator=g)
            rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, x.shape[1], h, w + 2 * p)
            xp = xp.gather(2, rows)
            cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, x.shape[1], h, w)
            x = xp.gather(3, cols)
        if self.flip:
            f = torch.rand(n, generator=g) < 0.5
            x[f] = x[f].flip(3)
        if self.cutout:
            cy = torch.randint(0, h, (n,), generator=g)[:, None, None]
            cx = torch.randint(0, w, (n,), generator=g)[:, None, None]
            yy, xx = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
            half = self.cutout // 2                          # DARTS's Cutout: an L x L hole
            hole = (yy >= cy - half) & (yy < cy + half) & (xx >= cx - half) & (xx < cx + half)
            x = torch.where(hole[:, None], self.fill.to(x.dtype), x)   # `fill`: the data mean
        return x


# ----------------------------------------------------------------------------- ImageNet

def image_folders(root):
    """(train, val): torchvision ImageFolders of root/train and root/val, one folder of images
    per class (labels: the sorted folder names, the same in both), without transforms; kept as
    the last dataset loaded. A missing directory or another layout stops with one line."""
    key = ("imagenet", os.path.abspath(root))
    if key in _LAST:
        return _LAST[key]
    import torchvision
    layout = (f"expected {os.path.join(root, 'train')}/<class>/*.JPEG and "
              f"{os.path.join(root, 'val')}/<class>/*.JPEG (torchvision's ImageFolder layout)")
    if not os.path.isdir(root):
        raise SystemExit(f"error: ImageNet directory {root} does not exist; {layout}")
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(root, split)):
            raise SystemExit(f"error: ImageNet directory {root} has no {split}/; {layout}")
    try:
        folders = tuple(torchvision.datasets.ImageFolder(os.path.join(root, s))
                        for s in ("train", "val"))
    except (FileNotFoundError, OSError) as e:       # no class folders, or no images in one
        raise SystemExit(f"error: ImageNet in {root}: {str(e).splitlines()[0][:200]}; {layout} "
                         f"(a flat val/ of ILSVRC must be sorted into class folders)") from None
    train, val = folders
    if train.classes != val.classes:
        odd = sorted(set(train.classes) ^ set(val.classes))
        raise SystemExit(f"error: ImageNet in {root}: train/ has {len(train.classes)} class "
                         f"folders, val/ {len(val.classes)}, not the same names (e.g. "
                         f"{', '.join(odd[:3])}); {layout}")
    _LAST.clear()
    _LAST[key] = folders
    return folders


def imagenet_transform(train, crop_size=224, augment=True):
    """DARTS train_imagenet.py's transforms without Normalize (the network normalizes):
    training RandomResizedCrop, horizontal flip, ColorJitter(0.4, 0.4, 0.4, 0.2); validation
    (and training with augment=False) Resize to 256/224 of the crop, CenterCrop. [0, 1] tensors."""
    import torchvision.transforms as T
    if train and augment:
        return T.Compose([T.RandomResizedCrop(crop_size), T.RandomHorizontalFlip(),
                          T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2),
                          T.ToTensor()])
    return T.Compose([T.Resize(round(crop_size * 256 / 224)), T.CenterCrop(crop_size),
                      T.ToTensor()])


class Stream:
    """Mini-batches decoded from image files by a DataLoader with `workers` processes (DARTS's
    train_imagenet.py), with the interface of Batches: iterating yields float [0, 1] images on
    `device` (in `memory_format`, from pinned memory on CUDA) and their labels; len() is the
    batches of an epoch; `epoch`, set by the loop, fixes that epoch's order and the workers'
    random seeds (augmentation), so the data of epoch e depend only on (seed, e) and a resumed
    run sees the same. Under torchrun each of the `world` ranks takes a disjoint 1/world of the
    images (DistributedSampler with set_epoch, drop_last as Batches). In training, a last batch
    of a single image is dropped (as Batches). `dataset` yields (image tensor, label)."""

    def __init__(self, dataset, batch_size, device, train=True, workers=4, seed=0,
                 memory_format=torch.contiguous_format, rank=0, world=1):
        from torch.utils.data import DataLoader, DistributedSampler
        self.dataset, self.bs, self.device, self.train = dataset, batch_size, device, train
        self.seed, self.memory_format, self.epoch, self.rank = seed, memory_format, 0, rank
        self.sampler = DistributedSampler(dataset, world, rank, shuffle=train, seed=seed * 100003,
                                          drop_last=True) if train or world > 1 else None
        self.generator = torch.Generator()             # the workers' base seed
        self.loader = DataLoader(dataset, batch_size, sampler=self.sampler, num_workers=workers,
                                 pin_memory=device.type == "cuda", generator=self.generator)

    def __len__(self):
        n = len(self.sampler) if self.sampler is not None else len(self.dataset)
        return n // self.bs if self.train and n % self.bs == 1 and n > 1 else math.ceil(n / self.bs)

    def __iter__(self):
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch)
        self.generator.manual_seed((self.seed * 100003 + self.epoch) * 1009 + self.rank)
        for i, (x, y) in enumerate(self.loader):
            if self.train and len(y) == 1 and i > 0:
                break
            yield (x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format),
                   y.to(self.device, non_blocking=True))


def imagenet_stream(root, train, batch_size, device, workers=4, crop_size=224, augment=True,
                    seed=0, memory_format=torch.contiguous_format, rank=0, world=1, subset=None):
    """A Stream of root/train (train=True: augmented, shuffled) or root/val; `subset`: only the
    first `subset` images of a permutation drawn from `seed`."""
    from torch.utils.data import Subset
    folder = image_folders(root)[0 if train else 1]
    dataset = copy.copy(folder)                      # the cached scan, with this transform
    dataset.transform = imagenet_transform(train, crop_size, augment)
    if subset:
        perm = torch.randperm(len(folder), generator=torch.Generator().manual_seed(seed))
        dataset = Subset(dataset, perm[:subset].tolist())
    return Stream(dataset, batch_size, device, train, workers, seed, memory_format, rank, world)


# ----------------------------------------------------------------------------- batches of a run

def place(model, args, device):
    """The model on `device` in the --memory_format (channels_last: 2-20x faster on CPU); on
    the CPU in channels_last, with gradients kept in that format (grads_channels_last)."""
    model = model.to(device)
    if args.memory_format != "channels_last":
        return model
    model = model.to(memory_format=torch.channels_last)
    return grads_channels_last(model) if device.type == "cpu" else model


def _dense_channels_last(grad):
    cl = torch.channels_last
    return grad if grad.is_contiguous(memory_format=cl) else grad.contiguous(memory_format=cl)


def _hook_output(module, inputs, out):
    if isinstance(out, torch.Tensor) and out.dim() == 4 and out.requires_grad and \
            out.is_contiguous(memory_format=torch.channels_last):
        out.register_hook(_dense_channels_last)


def grads_channels_last(model):
    """Every BatchNorm2d's and ReLU's channels_last output gets its gradient as a dense
    channels_last tensor. Backward hands some gradients back in NCHW (global pooling's, a
    rule convolution's grad_input) or as strided slices (torch.cat's backward), and the
    elementwise and BatchNorm backward kernels take a slow path on the CPU when the layouts
    differ: ReLU's threshold_backward at 64 x 8 x 28 x 28, 99 us with both operands
    channels_last, 2,360 us with the gradient in NCHW (one thread); a copy costs ~100 us.
    Measured on a quick retraining step (8 channels, 28x28 cells), paired: 0.93x the time with
    these hooks (hooks on every module: 0.89-0.98x; the search step: 1.00x with them, 1.10x
    with hooks on every module). Values are the same up to rounding (kernels sum in another
    order)."""
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.ReLU)):
            m.register_forward_hook(_hook_output)
    return model


def make_batches(args, x, y, device, train, cutout=0, seed_offset=0, rank=0, world=1,
                 batch_size=None):
    """Batches of --batch_size (or `batch_size`) images; under torchrun each of the `world`
    ranks takes its share of every epoch's shuffled order and batch / world images per step.
    Cutout fills its hole with the dataset mean (zero after the network's normalization, as
    DARTS's cutout after its Normalize transform)."""
    _, _, mean, _, pad, flip = DATASETS[args.dataset]
    bs = batch_size or args.batch_size
    if getattr(args, "augment", True) is False:
        pad, flip = 0, False
    mf = torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format
    if bs % world:
        raise SystemExit(f"error: --batch_size {bs} does not split over {world} "
                         f"processes; use a multiple of {world}")
    return Batches(x, y, max(1, bs // world), device, train=train, pad=pad if train else 0,
                   flip=flip and train, cutout=cutout, seed=args.seed + seed_offset,
                   memory_format=mf, rank=rank, world=world, fill=mean)
