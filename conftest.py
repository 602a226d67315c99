# Makes the top-level modules (rules.py, ops.py, ...) importable from tests/, and runs the
# tests on one thread: their tensors are tiny, and two OpenMP threads on a 2-core machine that
# is doing anything else can slow torch down by 10-100x.
import torch

torch.set_num_threads(1)
