"""Keep freed memory in the process (Linux, glibc): a training step on the CPU frees and
allocates the same large activations again every step.

glibc's malloc serves an allocation above its mmap threshold (128 KiB, raised adaptively to at
most 32 MiB) with a fresh mmap and returns it to the kernel on free, and trims the heap's free
top: every step then touches new pages, and the kernel zero-fills each 4 KiB page on first touch.
Measured on a quick retraining step (8 channels, 28x28 cells; one thread): 19,400 page faults
and 53 ms of system time a step of 211 ms; with the thresholds below, 118 faults, no system
time, 163 ms. The price: the process keeps its peak heap until it exits (it never shrinks).
BIONAS_KEEP_FREED_MEMORY=0 leaves malloc as it is, to measure the difference; on other C
libraries this does nothing.
"""
import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3      # glibc's mallopt parameter numbers (malloc.h)
KEEP = (1 << 30, 32 << 20)                       # bytes: the first value glibc accepts is used


def keep_freed_memory():
    """Serve allocations below ~1 GiB from the heap and never trim it; True if glibc took it."""
    if not sys.platform.startswith("linux") or os.environ.get("BIONAS_KEEP_FREED_MEMORY") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt      # the C library this process runs on
    except (OSError, AttributeError):            # not glibc (musl has no mallopt): nothing to do
        return False
    mmap_ok = any(mallopt(M_MMAP_THRESHOLD, n) for n in KEEP)
    return bool(mmap_ok and mallopt(M_TRIM_THRESHOLD, KEEP[0]))
