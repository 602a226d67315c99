# Runs the tests on one thread: their tensors are tiny, and two OpenMP threads on a 2-core
# machine that is doing anything else can slow torch down by 10-100x. (pytest.ini puts the
# project root on sys.path, so the concept files and the harness import as in train.py.)
import torch

torch.set_num_threads(1)
