"""The standard rotMNIST files (Larochelle et al. 2007, "mnist_rotation_new"), the data set of
Maile's thesis Sec. 4.5: 12,000 training + validation images and 50,000 test images, MNIST digits
each rotated by its own angle in [0, 2π).

Each file is text (.amat): one image per row, 784 floats in [0, 1] then the label. Rows are read
as the authors' code reads them (k8lion/equiNAS utilities.py: the 784 values reshaped to 28 x 28
row by row, labels as integers) and normalized by their constants, NORM (the pixel mean and std
of the training file). The thesis holds out 10% of the 12,000 for validation
(experiments/thesis_equinas.prepare).

    python train.py --equinas evolutionary --dataset rotmnist --data DIR
    python train.py --experiment equinas-table3 --dataset rotmnist --data DIR --sizes thesis=1

DIR (or DIR/mnist_rotation_new, or DIR/rotmnist) holds the two files of
http://www.iro.umontreal.ca/~lisa/icml2007data/mnist_rotation_new.zip, unzipped.
"""
import os

import numpy as np
import torch

FILES = ("mnist_all_rotation_normalized_float_train_valid.amat",
         "mnist_all_rotation_normalized_float_test.amat")
SIZES = (12000, 50000)               # rows of the two files
NORM = (0.12996, 0.29698)            # the authors' Normalize(mean, std) for rotMNIST


def find_files(root):
    """The (train_valid, test) paths in the first of ROOT/mnist_rotation_new, ROOT/rotmnist,
    ROOT that holds both; a directory holding one of them only, or none found, stops with one
    line."""
    dirs = [os.path.join(root, "mnist_rotation_new"), os.path.join(root, "rotmnist"), root]
    for d in dirs:
        found = [os.path.exists(os.path.join(d, f)) for f in FILES]
        if all(found):
            return [os.path.join(d, f) for f in FILES]
        if any(found):
            raise SystemExit(f"error: {d} holds only {FILES[found.index(True)]}; put "
                             f"{FILES[found.index(False)]} beside it")
    raise SystemExit(f"error: rotMNIST not found: looked for {' and '.join(FILES)} in "
                     f"{', '.join(dirs)}. Download mnist_rotation_new.zip (see harness/rotmnist.py), "
                     f"unzip it there or pass --data DIR")


def read_amat(path, rows=None):
    """(images (N, 1, 28, 28) float32, labels (N,) int64) of one .amat file; `rows`: the count
    expected (None: any)."""
    data = np.loadtxt(path, dtype=np.float64, ndmin=2)
    if data.shape[1] != 785 or (rows is not None and len(data) != rows):
        raise SystemExit(f"error: {path}: expected {rows or 'N'} rows of 784 pixels and a label, "
                         f"got {data.shape[0]} rows of {data.shape[1]} values; download it again")
    labels = data[:, -1]
    if (labels != np.round(labels)).any() or labels.min() < 0 or labels.max() > 9:
        raise SystemExit(f"error: {path}: the last column must hold the labels 0-9")
    images = torch.from_numpy(data[:, :-1].reshape(-1, 1, 28, 28).astype(np.float32))
    return images, torch.from_numpy(labels.astype(np.int64))


def load_rotmnist(root):
    """(train_x, train_y, test_x, test_y) of the two files (the standard ones: SIZES rows),
    images float [0, 1] (N, 1, 28, 28), labels int64."""
    (xtr, ytr), (xte, yte) = (read_amat(p) for p in find_files(root))
    return xtr, ytr, xte, yte
