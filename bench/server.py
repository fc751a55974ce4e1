#!/usr/bin/env python3
"""One receiving server taking K streams at once, against K mbuffer receivers each followed by
`sync FILE`.

    python3 bench/server.py                      # K = 1 2 4 8, tmpfs and ext4, idle and pressed
    python3 bench/server.py --ks 4 8 --fs disk --pressure 9 --rounds 5
    python3 bench/server.py --teecast before=/path/to/old/teecast --teecast after=target/release/teecast

Each run: K `teecast send` processes (distinct names, one source in /dev/shm, page-cached) into
one `teecast recv --dir DIR` started for the run, against K `mbuffer -I PORT -o FILE && sync
FILE` fed by K `mbuffer -O` senders. The wall time runs from starting the senders until every
sender (teecast's: confirmed, which is after the receiver's fsync) and every receiver has
exited. Receiver CPU is user + system time from wait4() (of the shells around mbuffer, with the
mbuffer and the sync inside) per GiB stored; RSS is teecast's one receiver's peak and the sum of
the K mbuffer receivers' peaks. Contenders alternate inside each round (rotated, reversed every
other round). Before each run the stored files are deleted and the filesystem synced.

"Pressure" holds a file of that many GiB in /dev/shm (tmpfs: unreclaimable without swap) for
the whole pass, the way a busy server's page cache is never idle: the kernel's dirty limits
shrink with the memory left, and writers are throttled sooner.

Prints one table per condition (median wall s, min–max, x mbuffer paired per round, CPU s/GiB,
RSS MiB) and writes bench/server.json.
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

HOST = "127.0.0.1"
GiB = 1 << 30
MiB = 1 << 20
MB = "-s 1M -m 64M"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def reap(pid):
    _, status, ru = os.wait4(pid, 0)
    return status, ru


def clear(d):
    for n in os.listdir(d):
        os.unlink(os.path.join(d, n))
    subprocess.run(["sync", "-f", d], check=True)


def run_teecast(binary, src, k, d):
    """One recv --dir for the run, K senders; (wall, cpu s, peak RSS MiB)."""
    port = free_port()
    # Something else listening would be connected to by wait_listening(): the port is ours.
    recv = subprocess.Popen([binary, "recv", "--quiet", "--listen", f"{HOST}:{port}", "--dir", d,
                             "--max-per-peer", "64"], stderr=subprocess.DEVNULL)
    wait_listening_teecast(recv, port)
    t0 = time.perf_counter()
    senders = [subprocess.Popen([binary, "send", "--quiet", "--name", f"s{i}.bin", src,
                                 f"{HOST}:{port}"], stdout=subprocess.DEVNULL) for i in range(k)]
    bad = [s for s in senders if s.wait() != 0]
    wall = time.perf_counter() - t0
    with open(f"/proc/{recv.pid}/status") as f:
        hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
    recv.send_signal(signal.SIGTERM)
    _, ru = reap(recv.pid)
    recv.returncode = 0
    if bad:
        raise RuntimeError(f"{len(bad)} teecast senders failed")
    return wall, ru.ru_utime + ru.ru_stime, hwm


def wait_listening_teecast(recv, port):
    # Poll /proc/net/tcp for the listening socket rather than connecting (a connection would be
    # a stream to the receiver).
    end = time.time() + 30
    hexport = f":{port:04X}"
    while time.time() < end:
        with open("/proc/net/tcp") as f:
            if any(l.split()[1].endswith(hexport) and l.split()[3] == "0A" for l in f):
                return
        if recv.poll() is not None:
            raise RuntimeError("teecast recv exited")
        time.sleep(0.005)
    raise RuntimeError("teecast recv does not listen")


def run_mbuffer(src, k, d):
    ports = [free_port() for _ in range(k)]
    recvs = []
    for i, p in enumerate(ports):
        path = os.path.join(d, f"m{i}.bin")
        recvs.append(subprocess.Popen(
            ["sh", "-c", f"mbuffer -q {MB} -I {HOST}:{p} -o '{path}' && sync '{path}'"],
            stderr=subprocess.DEVNULL))
    end = time.time() + 30
    for p in ports:
        hexport = f":{p:04X}"
        while True:
            with open("/proc/net/tcp") as f:
                if any(l.split()[1].endswith(hexport) and l.split()[3] == "0A" for l in f):
                    break
            if time.time() > end:
                raise RuntimeError("mbuffer does not listen")
            time.sleep(0.005)
    t0 = time.perf_counter()
    senders = [subprocess.Popen(["sh", "-c", f"exec mbuffer -q {MB} -i '{src}' -O {HOST}:{p}"],
                                stderr=subprocess.DEVNULL) for p in ports]
    bad = [s for s in senders if s.wait() != 0]
    cpu, rss = 0.0, 0.0
    for r in recvs:
        status, ru = reap(r.pid)
        r.returncode = 0
        if status != 0:
            bad.append(r)
        cpu += ru.ru_utime + ru.ru_stime
        rss += ru.ru_maxrss / 1024
    wall = time.perf_counter() - t0
    if bad:
        raise RuntimeError(f"{len(bad)} mbuffer processes failed")
    return wall, cpu, rss


def order(todo, r):
    k = r % len(todo)
    o = todo[k:] + todo[:k]
    return o[::-1] if r % 2 else o


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--fs", nargs="+", default=["tmpfs", "disk"], choices=["tmpfs", "disk"])
    ap.add_argument("--pressure", type=float, nargs="+", default=[0, 9],
                    help="GiB held in /dev/shm during a pass (0: idle)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mib", type=int, default=0,
                    help="MiB per stream (default: 512, 256 at K = 8)")
    ap.add_argument("--teecast", action="append", default=[],
                    help="NAME=BINARY (default: teecast=target/release/teecast)")
    ap.add_argument("--disk-dir", default="/var/tmp/teecast-bench-server")
    ap.add_argument("--json", default=os.path.join(ROOT, "bench", "server.json"))
    a = ap.parse_args()
    builds = [t.split("=", 1) for t in a.teecast] or [
        ["teecast", os.path.join(ROOT, "target", "release", "teecast")]]
    dirs = {"tmpfs": "/dev/shm/teecast-bench-server", "disk": a.disk_dir}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    results = []
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
          f"kernel {os.uname().release}, load average before {os.getloadavg()}", flush=True)
    for pressure in a.pressure:
        ballast = "/dev/shm/teecast-bench-ballast"
        if pressure:
            subprocess.run(["fallocate", "-l", str(int(pressure * GiB)), ballast], check=True)
        try:
            for fs in a.fs:
                d = dirs[fs]
                for k in a.ks:
                    mib = a.mib or (256 if k >= 8 else 512)
                    src = f"/dev/shm/teecast-bench-src-{mib}"
                    if not os.path.exists(src) or os.path.getsize(src) != mib * MiB:
                        with open(src, "wb") as f:
                            for _ in range(mib):
                                f.write(os.urandom(MiB))
                    todo = [n for n, _ in builds] + ["mbuffer"]
                    got = {n: [] for n in todo}
                    for r in range(a.rounds):
                        for name in order(todo, r):
                            clear(d)
                            if name == "mbuffer":
                                got[name].append(run_mbuffer(src, k, d))
                            else:
                                got[name].append(run_teecast(dict(builds)[name], src, k, d))
                    clear(d)
                    gib = k * mib / 1024
                    cond = f"{fs}, {'%g GiB in tmpfs' % pressure if pressure else 'idle'}"
                    print(f"\n{cond}, K = {k} x {mib} MiB, {a.rounds} rounds, load {os.getloadavg()}")
                    print("| contender | wall s | x mbuffer | recv CPU s/GiB | recv RSS MiB |")
                    print("|---|---:|---:|---:|---:|")
                    for name in todo:
                        w = [x[0] for x in got[name]]
                        ratio = statistics.median(m[0] / x[0] for m, x in zip(got["mbuffer"], got[name]))
                        cpu = statistics.median(x[1] for x in got[name]) / gib
                        rss = max(x[2] for x in got[name])
                        print(f"| {name} | {statistics.median(w):.2f} ({min(w):.2f}–{max(w):.2f}) "
                              f"| {ratio:.2f} | {cpu:.2f} | {rss:.0f} |", flush=True)
                        results.append({"fs": fs, "pressure_gib": pressure, "k": k, "mib": mib,
                                        "contender": name, "runs": got[name], "x_mbuffer": ratio})
        finally:
            if pressure and os.path.exists(ballast):
                os.unlink(ballast)
    with open(a.json, "w") as f:
        json.dump({"load_after": os.getloadavg(), "results": results}, f, indent=1)
    print(f"\nload average after {os.getloadavg()}")


if __name__ == "__main__":
    sys.exit(main())
