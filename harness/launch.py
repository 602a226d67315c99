"""--procs N: data parallel over N processes on this machine's CPU cores, from one command.

The small networks of a --quick run make little use of a second core through PyTorch's threads
(their per-layer tensors are too small to split well: the quick retraining at two threads ran at
0.9-1.2x the images/s of one), while two processes that each take half of every batch use it
(1.5x). This starts them as
`torchrun --standalone --nproc_per_node N train.py ...` would: the same command line in N child
processes, each told its RANK, WORLD_SIZE and a free local port, one OpenMP thread each (unless
OMP_NUM_THREADS says otherwise). train.py's torchrun path does the rest (gloo, DDP, rank 0
writes the run directory). If a rank fails the others are stopped and its exit code returned;
Ctrl-C reaches every rank, each prints where to resume, and the launcher waits for them; a
SIGTERM to the launcher is passed on to the ranks.
"""
import os
import signal
import socket
import subprocess
import sys
import time

from harness.options import LAUNCHED


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now (rank 0's store binds it next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(script, argv, procs, poll=0.2):
    """Run `python script argv` as `procs` ranks; the exit code of the first rank that fails,
    else 0."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               WORLD_SIZE=str(procs), LOCAL_WORLD_SIZE=str(procs), GROUP_RANK="0",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), **{LAUNCHED: "1"})
    ranks = [subprocess.Popen([sys.executable, script] + list(argv),
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r)))
             for r in range(procs)]

    def terminated(signum, frame):          # a scheduler's SIGTERM: no rank is left behind
        stop(ranks)
        raise SystemExit(128 + signum)
    before = signal.signal(signal.SIGTERM, terminated)
    try:
        while True:
            codes = [p.poll() for p in ranks]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:                      # the others would wait forever in a collective
                stop(ranks)
                return failed[0]
            if all(c == 0 for c in codes):
                return 0
            time.sleep(poll)
    except KeyboardInterrupt:               # the terminal sent SIGINT to every rank as well
        for p in ranks:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        return 130
    finally:
        signal.signal(signal.SIGTERM, before)


def stop(ranks, grace=10.0):
    """SIGTERM to the ranks still running, SIGKILL to those still there after `grace` s."""
    for p in ranks:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    end = time.time() + grace
    for p in ranks:
        try:
            p.wait(timeout=max(0.1, end - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
