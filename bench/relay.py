#!/usr/bin/env python3
"""teecast relays against direct fan-out, on shaped links between network namespaces.

    sudo python3 bench/relay.py                  # 64 MiB, N = 1 2 4 8, 3 rounds, 200 Mbit/s links
    sudo python3 bench/relay.py --quick          # 16 MiB, N = 1 4, 1 round
    sudo python3 bench/relay.py --rate 1gbit --size-mib 256

Every host has a network namespace of its own (the sender h0, the receivers h1..hN), joined by a
veth pair to a bridge in a namespace of its own; each host's link is shaped with a token bucket
(`tc qdisc … tbf rate RATE`), so each host can send RATE and the sender's one link is what direct
fan-out shares. Every receiver is `teecast recv --relay --once --key-file K --dir D` (keyed, as on
a real network), started fresh for each run, storing under /dev/shm. The modes alternate inside
each round: direct (the sender sends to every host), chain (`--tree 1`) and tree (`--tree 2`).

Figures, medians over the rounds: wall seconds from the sender's start until every receiver has
exited with its verified copy; MB/s per host (size / wall); relay CPU seconds (user + system) per
GiB forwarded (over the hosts that forwarded); the largest relay peak RSS. Results go to
bench/relay.json and bench/relay.svg; the table is printed for BENCHMARKS.md. Python 3 standard
library only; needs root and iproute2. The namespaces and files are removed at exit.
"""

import argparse
import signal
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "teecast")
BENCH = os.path.join(ROOT, "target", "release", "teecast-bench")
PREFIX = f"tcbr{os.getpid()}"
PORT = 7000
GiB = 1 << 30
MiB = 1 << 20


def sh(*args):
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"relay.py: {' '.join(args)}: {r.stderr.strip()}")


def ns(i):
    return f"{PREFIX}h{i}"


def ip_of(i):
    return f"10.78.0.{i + 1}"


def setup(hosts, rate):
    bridge = f"{PREFIX}br"
    sh("ip", "netns", "add", bridge)
    sh("ip", "-n", bridge, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", bridge, "link", "set", "br0", "up")
    for i in range(hosts):
        sh("ip", "netns", "add", ns(i))
        sh("ip", "link", "add", f"p{i}", "netns", bridge, "type", "veth", "peer", "name", "eth0",
           "netns", ns(i))
        sh("ip", "-n", bridge, "link", "set", f"p{i}", "master", "br0", "up")
        sh("ip", "-n", ns(i), "addr", "add", f"{ip_of(i)}/24", "dev", "eth0")
        sh("ip", "-n", ns(i), "link", "set", "eth0", "up")
        sh("ip", "-n", ns(i), "link", "set", "lo", "up")
        sh("ip", "netns", "exec", ns(i), "tc", "qdisc", "add", "dev", "eth0", "root", "tbf",
           "rate", rate, "burst", "256kb", "latency", "200ms")


def teardown(hosts):
    for i in range(hosts):
        subprocess.run(["ip", "netns", "del", ns(i)], capture_output=True)
    subprocess.run(["ip", "netns", "del", f"{PREFIX}br"], capture_output=True)


def key_and_source(work, size):
    """A fresh key file and a source of `size` random bytes under `work`."""
    key = os.path.join(work, "key")
    sh(BIN, "keygen", key)
    src = os.path.join(work, "image.bin")
    with open(src, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
    return key, src


def children(fanout, position, hosts):
    """Positions of position's children in a tree of `hosts` (the sender is 0)."""
    if fanout is None:
        return list(range(1, hosts + 1)) if position == 0 else []
    first = fanout * position + 1
    return list(range(first, min(first + fanout, hosts + 1)))


def run_once(mode, fanout, n, src, size, key, work):
    """One transfer to n hosts; returns the figures. Leaves no receiver running."""
    receivers = []
    try:
        return transfer(mode, fanout, n, src, size, key, work, receivers)
    finally:
        for _, p, _, _ in receivers:
            if p.poll() is None:
                p.kill()
                p.wait()


def transfer(mode, fanout, n, src, size, key, work, receivers):
    for i in range(1, n + 1):
        out = os.path.join(work, f"{mode}-{i}")
        os.makedirs(out)
        # Measured by the small teecast-bench process, not by this one: a child forked from
        # Python starts with Python's resident set.
        rufile = os.path.join(work, f"rusage-{mode}-{i}")
        argv = ["ip", "netns", "exec", ns(i), BENCH, "rusage", "--out", rufile, "--",
                BIN, "recv", "--relay", "--once",
                "--listen", f"{ip_of(i)}:{PORT}", "--dir", out, "--key-file", key]
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines = []
        while not lines or "listening on" not in lines[-1]:
            lines.append(p.stderr.readline())
            if not lines[-1] or len(lines) > 5:
                p.kill()
                raise SystemExit(f"relay.py: receiver {i}: {''.join(lines)!r}")
        receivers.append((i, p, out, rufile))
    argv = ["ip", "netns", "exec", ns(0), BIN, "send", "--quiet", "--key-file", key, src]
    argv += [f"{ip_of(i)}:{PORT}" for i in range(1, n + 1)]
    if fanout is not None:
        argv += ["--tree", str(fanout)]
    start = time.monotonic()
    sender = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    figures = {"relay_cpu": 0.0, "forwarded": 0, "relay_rss_kib": 0}
    for i, p, out, rufile in receivers:
        p.wait()
        if p.returncode != 0:
            raise SystemExit(f"relay.py: {mode} N={n}: receiver {i} exited {p.returncode}: "
                             f"{p.stderr.read().strip()}")
        with open(rufile) as f:
            user, system, rss_kib = f.read().split()
        os.unlink(rufile)
        kids = len(children(fanout, i, n))
        if kids:
            figures["relay_cpu"] += float(user) + float(system)
            figures["forwarded"] += kids * size
            figures["relay_rss_kib"] = max(figures["relay_rss_kib"], int(rss_kib))
    wall = time.monotonic() - start
    if sender.wait() != 0:
        raise SystemExit(f"relay.py: {mode} N={n}: sender: {sender.stderr.read().strip()}")
    for i, p, out, _ in receivers:
        with open(os.path.join(out, os.path.basename(src)), "rb") as f:
            if os.fstat(f.fileno()).st_size != size:
                raise SystemExit(f"relay.py: {mode} N={n}: host {i} stored a wrong size")
        shutil.rmtree(out)
    figures["wall"] = wall
    return figures


def chart(results, ns_list, path):
    """A grouped bar chart of wall seconds per N and mode, as SVG."""
    modes = ["direct", "chain", "tree"]
    colors = {"direct": "#c0504d", "chain": "#4f81bd", "tree": "#9bbb59"}
    top = max(r["wall"] for r in results) * 1.1
    w, h, left, bottom = 640, 320, 50, 40
    group = (w - left - 20) / len(ns_list)
    bar = group / (len(modes) + 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
             'font-family="sans-serif" font-size="11">',
             f'<text x="{left}" y="14">seconds until every host has its verified copy</text>']
    for gi, n in enumerate(ns_list):
        x0 = left + gi * group
        parts.append(f'<text x="{x0 + group / 2 - 10}" y="{h - 20}">N = {n}</text>')
        for mi, m in enumerate(modes):
            r = next((r for r in results if r["mode"] == m and r["n"] == n), None)
            if r is None:
                continue
            bh = (h - bottom - 30) * r["wall"] / top
            x = x0 + mi * bar + bar / 2
            y = h - bottom - bh
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar * 0.9:.1f}" '
                         f'height="{bh:.1f}" fill="{colors[m]}"/>')
            parts.append(f'<text x="{x:.1f}" y="{y - 3:.1f}">{r["wall"]:.1f}</text>')
    for mi, m in enumerate(modes):
        parts.append(f'<rect x="{left + mi * 90}" y="{h - 12}" width="10" height="10" '
                     f'fill="{colors[m]}"/><text x="{left + mi * 90 + 14}" y="{h - 3}">{m}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ns", default="1 2 4 8")
    ap.add_argument("--rate", default="200mbit")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.size_mib, args.rounds, args.ns = 16, 1, "1 4"
    if os.geteuid() != 0:
        raise SystemExit("relay.py: needs root (network namespaces)")
    if not (os.path.exists(BIN) and os.path.exists(BENCH)):
        raise SystemExit("relay.py: build first: cargo build --release")
    # SIGTERM (timeout, a closed terminal) still removes the namespaces.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    ns_list = [int(x) for x in args.ns.split()]
    size = args.size_mib * MiB
    hosts = max(ns_list) + 1
    work = tempfile.mkdtemp(prefix="teecast-relay-", dir="/dev/shm")
    try:
        setup(hosts, args.rate)
        key, src = key_and_source(work, size)
        runs = {}
        for rnd in range(args.rounds):
            for n in ns_list:
                for mode, fanout in [("direct", None), ("chain", 1), ("tree", 2)]:
                    if n == 1 and mode != "direct":
                        continue  # one host: every mode is the same transfer
                    r = run_once(mode, fanout, n, src, size, key, work)
                    runs.setdefault((mode, n), []).append(r)
                    print(f"round {rnd + 1} {mode:6} N={n}: {r['wall']:.2f} s", file=sys.stderr)
        results = []
        for (mode, n), rs in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            wall = statistics.median(r["wall"] for r in rs)
            fwd = sum(r["forwarded"] for r in rs)
            results.append({
                "mode": mode, "n": n, "wall": wall,
                "mb_per_s_per_host": size / wall / 1e6,
                "relay_cpu_s_per_gib": (sum(r["relay_cpu"] for r in rs) / (fwd / GiB)) if fwd else None,
                "relay_peak_rss_mib": max(r["relay_rss_kib"] for r in rs) / 1024 if fwd else None,
            })
        meta = {"size_mib": args.size_mib, "rounds": args.rounds, "rate": args.rate,
                "nproc": os.cpu_count(), "kernel": os.uname().release,
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        if not args.quick:
            with open(os.path.join(ROOT, "bench", "relay.json"), "w") as f:
                json.dump({"meta": meta, "results": results}, f, indent=1)
            chart(results, ns_list, os.path.join(ROOT, "bench", "relay.svg"))
        print(f"\n{args.size_mib} MiB, links {args.rate}, {args.rounds} rounds, "
              f"{meta['nproc']} CPUs, kernel {meta['kernel']}, {meta['date']}\n")
        print("| N | mode | wall s | MB/s per host | relay CPU s per GiB forwarded | relay peak RSS MiB |")
        print("|---:|---|---:|---:|---:|---:|")
        for r in results:
            cpu = "–" if r["relay_cpu_s_per_gib"] is None else f"{r['relay_cpu_s_per_gib']:.2f}"
            rss = "–" if r["relay_peak_rss_mib"] is None else f"{r['relay_peak_rss_mib']:.1f}"
            print(f"| {r['n']} | {r['mode']} | {r['wall']:.2f} | {r['mb_per_s_per_host']:.1f} "
                  f"| {cpu} | {rss} |")
    finally:
        teardown(hosts)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
