#!/usr/bin/env python3
"""Alternating A/B runs of arbitrary senders into fresh `teecast drain` receivers.

    python3 bench/ab.py N ROUNDS 'NAME=COMMAND' ...

Each round runs every command once, in turn, each against N fresh drains (one process each, on
loopback ports chosen by the kernel); `{addrs}` in a command becomes the drains' addresses
separated by spaces, `{mbo}` becomes `-O ADDR` for each (mbuffer's form). Prints, per command, the
median wall seconds from start until the sender and every drain have exited, the spread, and the
median CPU seconds of the sender's process tree. Used for the experiments in BENCHMARKS.md
("Attempts"); `bench/run.py` is the full benchmark. Needs `cargo build --release` first.
"""
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import start_receiver  # noqa: E402  (the benchmark's own drains)


def run(n, cmd):
    drains, addrs = [], []
    for _ in range(n):
        p, addr = start_receiver("drain", None)
        drains.append(p)
        addrs.append(addr)
    full = cmd.replace("{addrs}", " ".join(addrs)).replace(
        "{mbo}", " ".join("-O " + a for a in addrs))
    t0 = time.monotonic()
    sender = subprocess.Popen(["bash", "-c", full], stdout=subprocess.DEVNULL)
    _, status, ru = os.wait4(sender.pid, 0)
    got = []
    for p in drains:
        try:
            out = p.communicate(timeout=None if status == 0 else 1)[0]
        except subprocess.TimeoutExpired:
            p.kill()
            out = p.communicate()[0]
        got += [int(line.split()[1]) for line in out.splitlines()]
    wall = time.monotonic() - t0
    if status != 0 or len(got) != n or len(set(got)) != 1:
        sys.exit(f"failed: {full}: status {status}, drains got {got}")
    return wall, ru.ru_utime + ru.ru_stime


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    n, rounds = int(sys.argv[1]), int(sys.argv[2])
    cands = [a.split("=", 1) for a in sys.argv[3:]]
    walls = {name: [] for name, _ in cands}
    cpus = {name: [] for name, _ in cands}
    for _ in range(rounds):
        for name, cmd in cands:
            wall, cpu = run(n, cmd)
            walls[name].append(wall)
            cpus[name].append(cpu)
    for name, _ in cands:
        w = walls[name]
        print(f"{name:24s} wall {statistics.median(w):.3f} s ({min(w):.3f}–{max(w):.3f}), "
              f"sender CPU {statistics.median(cpus[name]):.3f} s")


if __name__ == "__main__":
    main()
