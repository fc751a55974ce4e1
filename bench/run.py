#!/usr/bin/env python3
"""teecast benchmark: teecast against its peers and the limits, on loopback.

    python3 bench/run.py            # full run: 1 GiB source, N = 1, 2, 4, 8, 3 rounds
    python3 bench/run.py --quick    # smoke run: 256 MiB, 1 round, written under target/bench-quick/

A full run writes BENCHMARKS.md, bench/throughput.svg and bench/results.json at the top of the
repository (keeping the "Attempts" section of an existing BENCHMARKS.md). Python 3 standard
library only. Every receiver is its own process, started fresh for each run:

- cheap kind: `teecast-bench drain` splices the socket into /dev/null (no copy); the sender sends the
  bare bytes (teecast `--raw`, and every peer), so the comparison is apples to apples;
- real kind: teecast with its protocol (framing, digest, end-to-end confirmation) into
  `teecast recv --dir` receivers that write the files to tmpfs.
"""

import argparse
import datetime
import json
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e  # noqa: E402  (the end-to-end pass)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "teecast")
BENCH = os.path.join(ROOT, "target", "release", "teecast-bench")
HOST = "127.0.0.1"
GiB = 1 << 30
MiB = 1 << 20

STRATEGIES = ["auto", "readwrite", "mmap-write", "vmsplice", "mmap-pipe", "read-pipe",
              "zerocopy", "direct"]
PEER_PACKAGES = ["mbuffer", "socat", "netcat-openbsd", "pv"]
# The second pass, from a page-cached file on a disk filesystem.
DISK_CONTENDERS = ["teecast auto", "teecast auto --digest none", "teecast readwrite",
                   "teecast read-pipe", "mbuffer -s 1M -m 64M", "socat -b 1M", "cat | tee | nc",
                   "sendfile(2) (limit)"]


# ---------------------------------------------------------------------------------------------
# Contenders


class Contender:
    """One way of sending the source to N destinations."""

    def __init__(self, name, kind, receiver, build, ns=None, chart=True):
        self.name = name          # as shown in tables and the chart
        self.kind = kind          # "teecast", "peer", "limit", "teecast framed"
        self.receiver = receiver  # "drain" or "recv"
        self.build = build        # (source, [addr]) -> argv
        self.ns = ns              # None: every N; else the set of N it runs at
        self.chart = chart

    def runs_at(self, n):
        return self.ns is None or n in self.ns


def teecast_raw(strategy, digest):
    def build(src, addrs):
        return [BIN, "send", "--raw", "--quiet", "--strategy", strategy, "--digest", digest,
                src] + addrs
    return build


def mbuffer(extra):
    def build(src, addrs):
        argv = ["mbuffer", "-q", "-i", src] + extra
        for a in addrs:
            argv += ["-O", a]
        return argv
    return build


def socat(src, addrs):
    return ["socat", "-u", "-b", "1048576", src, "TCP:" + addrs[0]]


def nc_single(src, addrs):
    host, port = addrs[0].rsplit(":", 1)
    return ["bash", "-c", f"exec nc -N {host} {port} < '{src}' > /dev/null"]


def tee_nc(src, addrs):
    """`cat FILE | tee f1 ... | nc` (bench/e2e.py writes the script)."""
    return ["bash", "-c", e2e.tee_nc_script(src, addrs)]


def sendfile_limit(src, addrs):
    return [BENCH, "sendfile", src] + addrs


def teecast_framed(src, addrs):
    return [BIN, "send", "--quiet", src] + addrs


def contenders(have):
    out = []
    for s in STRATEGIES:
        ns = {1} if s == "mmap-write" else None
        out.append(Contender(f"teecast {s}", "teecast", "drain", teecast_raw(s, "xxh3-128"), ns,
                             chart=(s == "auto")))
        if s == "auto":
            out.append(Contender("teecast auto --digest blake3", "teecast", "drain",
                                 teecast_raw(s, "blake3"), chart=False))
        out.append(Contender(f"teecast {s} --digest none", "teecast", "drain",
                             teecast_raw(s, "none"), ns))
    if have.get("mbuffer"):
        out.append(Contender("mbuffer", "peer", "drain", mbuffer([])))
        out.append(Contender("mbuffer -s 1M -m 64M", "peer", "drain",
                             mbuffer(["-s", "1M", "-m", "64M"])))
    if have.get("socat"):
        out.append(Contender("socat -b 1M", "peer", "drain", socat, {1}))
    if have.get("nc"):
        out.append(Contender("nc < file", "peer", "drain", nc_single, {1}))
        out.append(Contender("cat | tee | nc", "peer", "drain", tee_nc, {2, 4}))
    out.append(Contender("sendfile(2) (limit)", "limit", "drain", sendfile_limit))
    out.append(Contender("teecast framed -> recv --dir", "teecast framed", "recv", teecast_framed))
    return out


# ---------------------------------------------------------------------------------------------
# Processes


class Failure(Exception):
    pass


def start_receiver(kind, outdir):
    if kind == "drain":
        argv = [BENCH, "drain", "--listen", f"{HOST}:0", "--count", "1"]
    else:
        argv = [BIN, "recv", "--listen", f"{HOST}:0", "--dir", outdir, "--once"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    deadline = time.monotonic() + 10
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([p.stderr], [], [], left)[0]:
            kill(p)
            raise Failure(f"{' '.join(argv)}: no 'listening on' line within 10 s")
        b = os.read(p.stderr.fileno(), 1)
        if not b:
            kill(p)
            raise Failure(f"{' '.join(argv)}: exited before listening")
        line += b
    m = re.search(rb"listening on (\S+)", line)
    if not m:
        kill(p)
        raise Failure(f"{' '.join(argv)}: unexpected first line {line!r}")
    return p, m.group(1).decode()


def kill(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait4(p):
    """Waits for p with os.wait4: (exit code, rusage of p and the children it waited for)."""
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, ru


def cpu(ru):
    return ru.ru_utime + ru.ru_stime


def run_once(c, n, src, size, shm):
    """One transfer; returns a dict of figures or raises Failure."""
    outdir = None
    rufile = None
    receivers = []
    sender = None
    try:
        if c.receiver == "recv":
            outdir = tempfile.mkdtemp(prefix="teecast-bench-recv-", dir=shm)
        for _ in range(n):
            d = None
            if outdir is not None:
                d = os.path.join(outdir, str(len(receivers)))
                os.mkdir(d)
            receivers.append((start_receiver(c.receiver, d), d))
        addrs = [addr for (_, addr), _ in receivers]
        argv = c.build(src, addrs)
        errf = tempfile.TemporaryFile()
        rufd, rufile = tempfile.mkstemp(prefix="teecast-bench-rusage-")
        os.close(rufd)
        timeout = 60 + size * n / 100e6
        t0 = time.perf_counter()
        sender = subprocess.Popen([BENCH, "rusage", "--out", rufile, "--"] + argv,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=errf, start_new_session=True)
        everyone = [sender] + [p for (p, _), _ in receivers]
        timed_out = threading.Event()

        def watchdog():
            timed_out.set()
            for p in everyone:
                kill(p)
        timer = threading.Timer(timeout, watchdog)
        timer.start()
        try:
            rc, _ = wait4(sender)
            recv_cpu = 0.0
            results = []
            for (p, addr), d in receivers:
                prc, pru = wait4(p)
                recv_cpu += cpu(pru)
                results.append((p, addr, d, prc))
            wall = time.perf_counter() - t0
        finally:
            timer.cancel()
        errf.seek(0)
        err = errf.read().decode(errors="replace").strip()
        cmd = " ".join(argv)
        if timed_out.is_set():
            raise Failure(f"timed out after {timeout:.0f} s: {cmd}\n{err[-2000:]}")
        if rc != 0:
            raise Failure(f"sender exit {rc}: {cmd}\n{err[-2000:]}")
        for p, addr, d, prc in results:
            out = p.stdout.read().decode(errors="replace")
            perr = p.stderr.read().decode(errors="replace").strip()
            if prc != 0:
                raise Failure(f"receiver {addr} exit {prc} for: {cmd}\n{perr[-2000:]}")
            if c.receiver == "drain":
                got = sum(int(line.split()[1]) for line in out.splitlines() if line.strip())
            else:
                files = os.listdir(d)
                got = sum(os.path.getsize(os.path.join(d, f)) for f in files)
            if got != size:
                raise Failure(f"receiver {addr} got {got} bytes, expected {size}: {cmd}")
        with open(rufile) as f:
            user, system, rss_kib = f.read().split()
        sender_cpu = float(user) + float(system)
        return {
            "wall": wall,
            "gbps": size / wall / 1e9,
            "cpu": sender_cpu,
            "cpu_per_gib": sender_cpu / (size * n / GiB),
            "recv_cpu_per_gib": recv_cpu / (size * n / GiB),
            "rss_mib": int(rss_kib) / 1024,
        }
    finally:
        for p in [sender] + [p for (p, _), _ in receivers]:
            if p is not None and p.returncode is None:
                kill(p)
                try:
                    wait4(p)
                except ChildProcessError:
                    pass
            if p is not None:
                for f in (p.stdout, p.stderr):
                    if f:
                        f.close()
        if outdir:
            shutil.rmtree(outdir, ignore_errors=True)
        if rufile:
            os.unlink(rufile)


# ---------------------------------------------------------------------------------------------
# Setup


def sh(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, **kw)


def ensure_peers(notes):
    def present():
        nc_ok = shutil.which("nc") and "-N" in sh(["nc", "-h"]).stderr
        return {"mbuffer": bool(shutil.which("mbuffer")), "socat": bool(shutil.which("socat")),
                "nc": bool(nc_ok)}
    have = present()
    if not all(have.values()) or not shutil.which("pv"):
        if os.geteuid() == 0:
            r = sh(["apt-get", "install", "-y"] + PEER_PACKAGES,
                   env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
            if r.returncode != 0:
                last = (r.stderr.strip().splitlines() or ["?"])[-1]
                notes.append(f"apt-get install of the peers failed ({last}); missing peers "
                             f"were skipped")
        else:
            notes.append("not root: missing peers were not installed and were skipped")
        have = present()
    for k, v in have.items():
        if not v:
            notes.append(f"{k} is not available (netcat-openbsd for nc): skipped")
    return have


def peer_versions(have):
    v = {}
    if have.get("mbuffer"):
        v["mbuffer"] = (sh(["mbuffer", "-V"]).stderr.strip().splitlines() or ["?"])[0]
    if have.get("socat"):
        v["socat"] = next((l for l in sh(["socat", "-V"]).stdout.splitlines()
                           if "version" in l), "?").strip()
    if have.get("nc"):
        r = sh(["dpkg-query", "-W", "-f=${Version}", "netcat-openbsd"])
        v["nc"] = "netcat-openbsd " + (r.stdout.strip() or "?")
    return v


def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
                break
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(), "memory": mem}


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def filesystem(path):
    return sh(["stat", "-f", "-c", "%T", path]).stdout.strip() or "?"


def make_source(path, size):
    chunk = 16 * MiB
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n
    # Read it once so it is cached (on tmpfs it always is).
    with open(path, "rb") as f:
        while f.read(chunk):
            pass


def memcpy_bandwidth():
    vals = []
    for _ in range(3):
        r = sh([BENCH, "memcpy", "--size-mib", "256", "--rounds", "5"])
        if r.returncode == 0:
            vals.append(float(r.stdout.strip()))
    return statistics.median(vals) if vals else None


# ---------------------------------------------------------------------------------------------
# Report


def med_range(vals, fmt):
    if not vals:
        return "—"
    m = statistics.median(vals)
    if len(vals) == 1:
        return fmt.format(m)
    return f"{fmt.format(m)} ({fmt.format(min(vals))}–{fmt.format(max(vals))})"


def median_of(results, name, n, key):
    runs = results.get(n, {}).get(name, [])
    vals = [r[key] for r in runs if "error" not in r]
    return statistics.median(vals) if vals else None


def meaning(results, names, ns, memcpy):
    """Sentences computed from the numbers: ratios inside the same run."""
    out = []
    g = lambda name, n, key="gbps": median_of(results, name, n, key)  # noqa: E731

    def ratio(a, b):
        return f"{a / b:.2f}×" if a and b else "n/a"

    for n in ns:
        auto = g("teecast auto", n)
        auto_none = g("teecast auto --digest none", n)
        mt = g("mbuffer -s 1M -m 64M", n)
        md = g("mbuffer", n)
        sf = g("sendfile(2) (limit)", n)
        framed = g("teecast framed -> recv --dir", n)
        stable = [s for s in STRATEGIES if s not in ("zerocopy", "mmap-write")]
        best = max(((g(f"teecast {s} --digest none", n) or 0, s) for s in stable),
                   default=(0, None))
        parts = [f"**N = {n}:** teecast auto delivers {fmt(auto)} GB/s per destination"]
        for peer in ("socat -b 1M", "cat | tee | nc"):
            pv = g(peer, n)
            if pv:
                parts.append(f"{ratio(auto, pv)} {peer}")
        if mt or md:
            parts.append(f"{ratio(auto, mt)} mbuffer tuned and {ratio(auto, md)} mbuffer default")
        parts.append(f"without the digest {fmt(auto_none)} GB/s "
                     f"({ratio(auto_none, mt)} mbuffer tuned)")
        if best[1]:
            parts.append(f"the fastest stable strategy without digest is {best[1]} at "
                         f"{fmt(best[0])} GB/s, {ratio(best[0], sf)} plain sendfile "
                         f"({fmt(sf)} GB/s, zero copy, not stable)")
        cpu_auto = g("teecast auto --digest none", n, "cpu_per_gib")
        cpu_mt = g("mbuffer -s 1M -m 64M", n, "cpu_per_gib")
        if cpu_auto and cpu_mt:
            parts.append(f"sender CPU per GiB delivered: teecast auto (no digest) "
                         f"{cpu_auto:.2f} s, mbuffer tuned {cpu_mt:.2f} s")
        if framed:
            parts.append(f"with its protocol into real receivers writing tmpfs files teecast "
                         f"delivers {fmt(framed)} GB/s ({ratio(framed, auto)} of raw auto "
                         f"into drains)")
        out.append("; ".join(parts) + ".")
    spreads = []
    for n in ns:
        for runs in results.get(n, {}).values():
            ok = [r["gbps"] for r in runs if "error" not in r]
            if len(ok) >= 2:
                spreads.append(max(ok) / min(ok))
    if spreads:
        wide = sum(1 for x in spreads if x > 1.5)
        out.append(f"Noise: in {wide} of {len(spreads)} (contender, N) cells the fastest round "
                   f"was more than 1.5× faster than the slowest (largest ratio "
                   f"{max(spreads):.1f}×), so a ratio between two medians means little unless "
                   f"it is larger than the spreads beside them.")
    if memcpy:
        out.append(f"One CPU copy of 1 GiB at this machine's memcpy bandwidth ({memcpy:.1f} GB/s) "
                   f"costs {GiB / memcpy / 1e9:.3f} s: the floor for every stable path's sender "
                   f"CPU per GiB delivered, before syscalls, the digest and loopback TCP itself "
                   f"(whose receive side copies again, in the receiver's CPU time).")
    return out


def disk_section(data, names, ns):
    """The second pass: the same contenders from a page-cached file on a disk filesystem."""
    disk = data.get("disk")
    if not disk:
        return []
    results = {int(n): v for n, v in disk["results"].items()}
    g = lambda name, n: median_of(results, name, n, "wall")  # noqa: E731
    L = [f"## From a page-cached file on a disk filesystem", "",
         f"The same runs with the source in {disk['dir']}, read once before (so it is in the "
         "page cache), for a narrower set of contenders: wall seconds, median (spread) over "
         "the rounds.", "",
         "| contender | " + " | ".join(f"N = {n}" for n in ns) + " |",
         "|---|" + "---:|" * len(ns)]
    for c in names:
        cells = []
        for n in ns:
            runs = [r for r in results.get(n, {}).get(c.name, []) if "error" not in r]
            cells.append(med_range([r["wall"] for r in runs], "{:.2f}") if runs else "")
        if any(cells):
            L.append(f"| {c.name.replace('|', chr(92) + '|')} | " + " | ".join(cells) + " |")
    L.append("")
    ratios = []
    for n in ns:
        auto = g("teecast auto", n)
        peers = [(p, g(p, n)) for p in ("mbuffer -s 1M -m 64M", "socat -b 1M", "cat | tee | nc")]
        said = [f"{v / auto:.2f}× faster than {p}" for p, v in peers if v and auto]
        if said:
            ratios.append(f"N = {n}: teecast auto is " + ", ".join(said))
    if ratios:
        L.append("In this pass: " + "; ".join(ratios) + ".")
        L.append("")
    return L


def fmt(v):
    return "n/a" if v is None else f"{v:.2f}"


def write_report(path, svg_rel, data, results, names, ns, attempts):
    info, memcpy, notes, failures = (data["machine"], data["memcpy_gbps"], data["notes"],
                                     data["failures"])
    L = []
    L.append("# Benchmarks")
    L.append("")
    L.append("teecast against its peers and the limits, on loopback, every receiver in its own "
             "process. One command runs it all and rewrites this file and the chart:")
    L.append("")
    L.append("```sh")
    L.append("python3 bench/run.py            # full: 1 GiB source, N = 1, 2, 4, 8, 3 rounds "
             "(~6 min on 2 cores, then ~9 min for the end-to-end pass; --no-e2e skips it)")
    L.append("python3 bench/run.py --quick    # smoke: 256 MiB, 1 round, "
             "written under target/bench-quick/ (~1-2 min)")
    L.append("python3 bench/run.py --e2e-only # the end-to-end pass alone (receivers that "
             "store the file), merged into this file")
    L.append("```")
    L.append("")
    L.append("It needs Python 3 (standard library only) and Rust; it builds "
             "`cargo build --release`, and as root installs the peers with "
             "`apt-get install -y mbuffer socat netcat-openbsd pv` (a peer that cannot be "
             "installed is skipped, with a note). `--rounds`, `--size-mib`, `--ns` and `--only "
             "REGEX` narrow a run; the raw figures go to `bench/results.json`, and "
             "`python3 bench/run.py --report-from bench/results.json` rewrites this file and the "
             "chart from them without measuring. The section \"Attempts\" at the end is kept "
             "when the file is rewritten. A second, narrower pass repeats the main contenders "
             "from a page-cached file on a disk filesystem (`--disk-dir`, default the "
             "repository's `target/`; `--no-disk` skips it). `python3 bench/ab.py` alternates "
             "any commands into fresh drains, and `python3 bench/e2e.py` teecast builds and "
             "mbuffer into receivers that store the file, for experiments (\"Attempts\"). "
             "The end-to-end pass (section \"End to end\") stores on /dev/shm and on "
             "`--e2e-disk-dir` (default /var/tmp).")
    L.append("")
    L.append("**How it measures.** The source file sits on tmpfs (`/dev/shm`) unless "
             "`--source-dir` puts it elsewhere, so it is in memory; it is read once before the "
             "runs. For each N the contenders alternate inside each "
             "round, and every run starts fresh receivers, one process per destination. Two "
             "kinds of receiver:")
    L.append("")
    L.append("- *cheap*: `teecast-bench drain` splices the socket into `/dev/null` "
             "through a pipe: no copy on the receiving side beyond what loopback TCP itself does. "
             "Into these, teecast sends with `--raw` (bare bytes, no framing, no "
             "acknowledgement), exactly like the peers, so the comparison is apples to apples. "
             "The digest (xxh3-128 by default) is still computed by the sender unless "
             "`--digest none`.")
    L.append("- *real*: teecast with its protocol (framing, digest, end-to-end confirmation) "
             "into `teecast recv --dir` receivers that write and verify the files on tmpfs.")
    L.append("")
    L.append("Figures per run: **wall** seconds from starting the sender until the sender and "
             "every receiver have exited (each receiver exits when its connection closes, after "
             "having everything; the harness checks the byte count of every receiver); **GB/s "
             "per destination** = file size / wall (10^9 bytes); **sender CPU s/GiB** = "
             "user + system time of the whole sender process tree per GiB "
             "*delivered* (size × N); **recv CPU s/GiB** the same for all receivers together; "
             "**RSS** peak resident size of the sender (`ru_maxrss`; for a pipeline, its largest "
             "process). Sender CPU and RSS come from `teecast-bench rusage`, a small process "
             "that runs the sender and reads `getrusage(RUSAGE_CHILDREN)` after waiting for it "
             "(so a shell pipeline counts every process it waited for, and the harness's own "
             "memory does not leak into the child's peak RSS at fork); receiver CPU from "
             "`wait4`. A sender that maps the file (mmap-write, mmap-pipe, and mbuffer's large "
             "buffer) counts the touched pages in its RSS. Tables show the median "
             "and, in brackets, the spread min–max over the rounds.")
    L.append("")
    L.append("The limits: **memcpy** is this machine's copy bandwidth (`teecast-bench memcpy`, "
             "256 MiB buffers, best of 5, median of 3); **sendfile(2)** is `"
             "teecast-bench sendfile`, a plain kernel send of the file to each destination (one thread "
             "each, no protocol, no digest, zero copy and not stable): what the kernel alone "
             "does on the same drains.")
    L.append("")
    L.append("![throughput per destination against N](" + svg_rel + ")")
    L.append("")
    L.append("## Machine and settings")
    L.append("")
    L.append(f"- CPU: {info['cpu']}, `nproc` = {info['nproc']}; memory {info['memory']}; "
             f"kernel {info['kernel']}")
    L.append(f"- Load average (1, 5, 15 min) before: {data['load_before']}; after: "
             f"{data['load_after']}. "
             + (data["note"] or "The machine is shared; other load may have been present."))
    L.append(f"- Date: {data['date']}; "
             f"teecast {info.get('commit', '?')}")
    L.append(f"- Source: {data['size_mib']} MiB of random bytes in "
             f"{info.get('source_dir', info['shm'])}; rounds: "
             f"{data['rounds']}; N: {', '.join(map(str, ns))}")
    if memcpy:
        L.append(f"- memcpy bandwidth: {memcpy:.2f} GB/s")
    for k, v in data["versions"].items():
        L.append(f"- {k}: {v}")
    for note in notes:
        L.append(f"- Note: {note}")
    L.append("")
    L.append("## What they mean")
    L.append("")
    for s in meaning(results, names, ns, memcpy):
        L.append(s)
        L.append("")
    for n in ns:
        L.append(f"## N = {n}")
        L.append("")
        L.append("| contender | kind | wall s | GB/s per destination | sender CPU s/GiB "
                 "| recv CPU s/GiB | sender RSS MiB |")
        L.append("|---|---|---:|---:|---:|---:|---:|")
        for c in names:
            runs = results.get(n, {}).get(c.name)
            if runs is None:
                continue
            ok = [r for r in runs if "error" not in r]
            bad = len(runs) - len(ok)
            kind = c.kind + (" (real)" if c.receiver == "recv" else "")
            cell = c.name.replace("|", "\\|")
            if not ok:
                L.append(f"| {cell} | {kind} | failed | | | | |")
                continue
            col = lambda k, f: med_range([r[k] for r in ok], f)  # noqa: E731
            failed = f" ({bad} failed)" if bad else ""
            L.append(f"| {cell}{failed} | {kind} | {col('wall', '{:.2f}')} | "
                     f"{col('gbps', '{:.2f}')} | {col('cpu_per_gib', '{:.2f}')} | "
                     f"{col('recv_cpu_per_gib', '{:.2f}')} | "
                     f"{statistics.median(r['rss_mib'] for r in ok):.0f} |")
        L.append("")
    L.extend(disk_section(data, names, ns))
    if data.get("e2e"):
        e = data["e2e"]
        L.extend(e2e.section(e["parts"], e["size_mib"], e["rounds"]))
        L.append(f"Machine for this pass: {e['machine_note']}")
        L.append("")
        failures = failures + e.get("failures", [])
    if failures:
        L.append("## Failures")
        L.append("")
        for f in failures:
            L.append("```")
            L.append(f)
            L.append("```")
        L.append("")
    L.append("## Attempts")
    L.append("")
    L.append(attempts.strip() if attempts.strip() else
             "Later experiments are recorded here: what was tried, the command, and what it "
             "changed.")
    L.append("")
    with open(path, "w") as f:
        f.write("\n".join(L))


PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#bcbd22", "#7f7f7f", "#393b79", "#637939", "#843c39", "#7b4173",
           "#3182bd", "#e6550d"]


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def svg_frame(values, ns, title, xlabel, ylabel):
    """The frame of a chart of `values` against `ns`: its SVG lines so far, the x of each n, the
    y of a value, and the plot area (left, top, width, height)."""
    W, H = 980, 560
    left, right, top, bottom = 70, 330, 50, 60
    pw, ph = W - left - right, H - top - bottom
    ymax = max(list(values) + [0.1]) * 1.1
    step = nice_step(ymax / 6)
    ymax = step * (int(ymax / step) + 1)
    xs = {n: left + (pw * i / max(1, len(ns) - 1) if len(ns) > 1 else pw / 2)
          for i, n in enumerate(ns)}
    y = lambda v: top + ph - ph * v / ymax  # noqa: E731
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
         f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{left}" y="28" font-size="15">{esc(title)}</text>']
    v = 0.0
    while v <= ymax + 1e-9:
        o.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{left + pw}" y2="{y(v):.1f}" '
                 f'stroke="#ddd"/>')
        o.append(f'<text x="{left - 8}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
        v += step
    for n, x in xs.items():
        o.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#eee"/>')
        o.append(f'<text x="{x:.1f}" y="{top + ph + 18}" text-anchor="middle">{n}</text>')
    o.append(f'<text x="{left + pw / 2}" y="{H - 15}" text-anchor="middle">{esc(xlabel)}</text>')
    o.append(f'<text transform="translate(18 {top + ph / 2}) rotate(-90)" '
             f'text-anchor="middle">{esc(ylabel)}</text>')
    o.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" '
             f'stroke="#333"/>')
    return o, xs, y, (left, top, pw, ph)


def write_svg(path, results, names, ns, title):
    series = []
    for c in names:
        if not c.chart:
            continue
        pts = [(n, median_of(results, c.name, n, "gbps")) for n in ns]
        pts = [(n, v) for n, v in pts if v is not None]
        if pts:
            series.append((c, pts))
    o, xs, y, (left, top, pw, ph) = svg_frame(
        [v for _, pts in series for _, v in pts], ns, title, "destinations N",
        "GB/s per destination (median)")
    for i, (c, pts) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        dash = {"limit": ' stroke-dasharray="6 4"', "peer": ' stroke-dasharray="2 3"'}.get(
            c.kind, "")
        width = 3 if c.name in ("teecast auto", "teecast framed -> recv --dir") else 1.6
        d = " ".join(f"{'M' if j == 0 else 'L'}{xs[n]:.1f},{y(v):.1f}"
                     for j, (n, v) in enumerate(pts))
        o.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="{width}"{dash}/>')
        for n, v in pts:
            o.append(f'<circle cx="{xs[n]:.1f}" cy="{y(v):.1f}" r="3" fill="{color}"/>')
        ly = top + 8 + i * 18
        lx = left + pw + 16
        o.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 26}" y2="{ly}" stroke="{color}" '
                 f'stroke-width="{width}"{dash}/>')
        o.append(f'<text x="{lx + 32}" y="{ly + 4}">{esc(c.name)}</text>')
    o.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(o) + "\n")


def nice_step(raw):
    import math
    e = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * e:
            return m * e
    return 10 * e


def read_attempts(path):
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return ""
    m = re.search(r"^## Attempts\s*\n(.*)", text, re.S | re.M)
    if not m:
        return ""
    body = m.group(1)
    nxt = re.search(r"^## ", body, re.M)
    return body[: nxt.start()] if nxt else body


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 256 MiB, 1 round, output under target/bench-quick/")
    ap.add_argument("--size-mib", type=int)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--ns", default="1,2,4,8", help="numbers of destinations (default 1,2,4,8)")
    ap.add_argument("--only", help="run only contenders whose name matches this regex")
    ap.add_argument("--note", help="a sentence about the machine's load, for the report")
    ap.add_argument("--out", help="directory for BENCHMARKS.md, the chart and results.json")
    ap.add_argument("--source-dir", help="where the source file goes (default /dev/shm, tmpfs); "
                    "a disk filesystem measures a page-cached file instead")
    ap.add_argument("--disk-dir", help="where the second, narrower pass puts its page-cached "
                    "source file (default: target/ of the repository)")
    ap.add_argument("--no-disk", action="store_true", help="skip that second pass")
    ap.add_argument("--no-e2e", action="store_true",
                    help="skip the end-to-end pass (receivers that store the file)")
    ap.add_argument("--e2e-only", action="store_true",
                    help="run only the end-to-end pass and merge it into the existing "
                    "results.json and report")
    ap.add_argument("--e2e-disk-dir", default="/var/tmp",
                    help="where the end-to-end pass's receivers store on a disk filesystem "
                    "(default /var/tmp; 'none' skips it)")
    ap.add_argument("--report-from", metavar="RESULTS_JSON",
                    help="measure nothing: rewrite the report and chart from a results.json")
    args = ap.parse_args()
    if args.report_from:
        with open(args.report_from) as f:
            data = json.load(f)
        d = os.path.dirname(os.path.abspath(args.report_from))
        render(data, os.path.abspath(args.out) if args.out else
               (ROOT if d == os.path.join(ROOT, "bench") else d), d)
        return
    args.size_mib = args.size_mib or (256 if args.quick else 1024)
    args.rounds = args.rounds or (1 if args.quick else 3)
    ns = [int(x) for x in args.ns.split(",")]
    if args.out:
        out_dir = os.path.abspath(args.out)
        svg_dir = out_dir
    elif args.quick:
        out_dir = svg_dir = os.path.join(ROOT, "target", "bench-quick")
    else:
        out_dir, svg_dir = ROOT, os.path.join(ROOT, "bench")
    os.makedirs(svg_dir, exist_ok=True)
    os.makedirs(out_dir, exist_ok=True)

    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    log("building: cargo build --release")
    if subprocess.run(["cargo", "build", "--release"], cwd=ROOT).returncode != 0:
        sys.exit("cargo build --release failed")
    notes = []
    have = ensure_peers(notes)
    versions = peer_versions(have)
    info = machine()
    info["commit"] = sh(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]).stdout.strip()
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    info["shm"] = shm + (" (tmpfs)" if shm == "/dev/shm" else "")
    src_dir = args.source_dir or shm
    info["source_dir"] = f"{src_dir} ({filesystem(src_dir)})"
    size = args.size_mib * MiB
    free = shutil.disk_usage(shm).free
    src = os.path.join(src_dir, f"teecast-bench-source-{os.getpid()}")
    load_before = loadavg()
    if args.e2e_only:
        main_e2e_only(args, have, src, size, ns, out_dir, svg_dir, log)
        return
    log("memcpy bandwidth: teecast-bench memcpy")
    memcpy = memcpy_bandwidth()
    log(f"  {memcpy} GB/s")
    log(f"source: {args.size_mib} MiB of random bytes at {src}")
    make_source(src, size)
    all_contenders = contenders(have)
    if args.only:
        all_contenders = [c for c in all_contenders if re.search(args.only, c.name)]
    failures = []
    try:
        results = measure(all_contenders, ns, args.rounds, src, size, shm, free, notes, failures,
                          log)
        ends = None if args.no_e2e else run_e2e(args, have, src, size, ns, log)
    finally:
        os.unlink(src)
    disk = None
    disk_dir = None if args.no_disk else (args.disk_dir or os.path.join(ROOT, "target"))
    if disk_dir and filesystem(disk_dir) == "tmpfs":
        notes.append(f"{disk_dir} is on tmpfs: no page-cached disk file to measure")
        disk_dir = None
    disk_todo = [c for c in all_contenders if c.name in DISK_CONTENDERS]
    if disk_dir and disk_todo:
        os.makedirs(disk_dir, exist_ok=True)
        dsrc = os.path.join(disk_dir, f"teecast-bench-source-{os.getpid()}")
        log(f"source: {args.size_mib} MiB of random bytes at {dsrc} (page-cached)")
        make_source(dsrc, size)
        try:
            disk = {"dir": f"{disk_dir} ({filesystem(disk_dir)})",
                    "results": {str(n): v for n, v in measure(
                        disk_todo, ns, args.rounds, dsrc, size, shm, free, notes, failures,
                        log, "disk ").items()}}
        finally:
            os.unlink(dsrc)
    data = {
        "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "machine": info, "size_mib": args.size_mib, "rounds": args.rounds, "quick": args.quick,
        "ns": ns, "note": args.note, "notes": notes, "versions": versions, "have": have,
        "memcpy_gbps": memcpy, "load_before": load_before, "load_after": loadavg(),
        "failures": failures, "results": {str(n): v for n, v in results.items()},
        "disk": disk, "e2e": ends,
    }
    with open(os.path.join(svg_dir, "results.json"), "w") as f:
        json.dump(data, f, indent=1)
    render(data, out_dir, svg_dir)
    if failures:
        log(f"{len(failures)} run(s) failed; see the Failures section")


def run_e2e(args, have, src, size, ns, log):
    """The end-to-end pass (bench/e2e.py): into tmpfs and, unless told not to, a disk."""
    dirs = [("tmpfs", "tmpfs", "/dev/shm")]
    disk = args.e2e_disk_dir
    if disk and disk != "none":
        kind = sh(["df", "--output=fstype", disk]).stdout.split()[-1:] or ["?"]
        kind = kind[0] if kind[0] != "?" else filesystem(disk)
        if kind == "tmpfs":
            log(f"{disk} is on tmpfs: the end-to-end pass stores on /dev/shm only")
        else:
            dirs.append((f"a disk filesystem ({kind})", "disk", disk))
    bins = {"teecast": BIN, "bench": BENCH}
    before = loadavg()
    parts, failures = e2e.measure(bins, have, src, size, dirs, ns, args.rounds, log, args.only)
    note = (f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, teecast "
            f"{sh(['git', '-C', ROOT, 'rev-parse', '--short', 'HEAD']).stdout.strip()}, "
            f"{os.cpu_count()} cores, kernel {platform.release()}, load average before "
            f"{before}, after {loadavg()}. " + (args.note or ""))
    return {"parts": parts, "size_mib": args.size_mib, "rounds": args.rounds,
            "machine_note": note.strip(), "failures": failures}


def main_e2e_only(args, have, src, size, ns, out_dir, svg_dir, log):
    """Measures the end-to-end pass alone and merges it into results.json and the report."""
    path = os.path.join(svg_dir, "results.json")
    log(f"source: {args.size_mib} MiB of random bytes at {src}")
    make_source(src, size)
    try:
        ends = run_e2e(args, have, src, size, ns, log)
    finally:
        os.unlink(src)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        data = None
    if data is None:
        report = os.path.join(out_dir, "BENCHMARKS.md")
        lines = ["# Benchmarks", ""] + e2e.section(ends["parts"], ends["size_mib"],
                                                  ends["rounds"])
        lines += [f"Machine for this pass: {ends['machine_note']}", ""]
        lines += [f"Failed: {f}" for f in ends["failures"]]
        with open(report, "w") as f:
            f.write("\n".join(lines) + "\n")
        log(f"wrote {report}")
        return
    data["e2e"] = ends
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
    render(data, out_dir, svg_dir)


def measure(todo_all, ns, rounds, src, size, shm, free, notes, failures, log, tag=""):
    """Every contender at every N, alternating inside each round; {n: {name: [figures]}}."""
    results = {}
    for n in ns:
        todo = [c for c in todo_all if c.runs_at(n)]
        if size * (n + 1) + 256 * MiB > free:
            skipped = [c.name for c in todo if c.receiver == "recv"]
            if skipped:
                notes.append(f"N = {n}: not enough room on {shm} for {n} received copies; "
                             f"skipped {', '.join(skipped)}")
            todo = [c for c in todo if c.receiver != "recv"]
        results[n] = {c.name: [] for c in todo}
        for r in range(rounds):
            for c in e2e.round_order(todo, r):
                try:
                    fig = run_once(c, n, src, size, shm)
                    log(f"{tag}N={n} round {r + 1}/{rounds} {c.name}: "
                        f"{fig['wall']:.2f} s, {fig['gbps']:.2f} GB/s/dest, "
                        f"{fig['cpu_per_gib']:.2f} CPU s/GiB, {fig['rss_mib']:.0f} MiB")
                except Failure as e:
                    fig = {"error": str(e)}
                    failures.append(f"{tag}N = {n}, round {r + 1}, {c.name}:\n{e}")
                    log(f"{tag}N={n} round {r + 1}/{rounds} {c.name}: FAILED\n{e}")
                results[n][c.name].append(fig)
    return results


def render(data, out_dir, svg_dir):
    """Writes BENCHMARKS.md and throughput.svg from the figures of a run."""
    ns = data["ns"]
    results = {int(n): v for n, v in data["results"].items()}
    names = [c for c in contenders(data["have"])
             if any(c.name in results.get(n, {}) for n in ns)]
    report = os.path.join(out_dir, "BENCHMARKS.md")
    svg = os.path.join(svg_dir, "throughput.svg")
    attempts = read_attempts(report)
    write_svg(svg, results, names, ns,
              f"teecast and peers on loopback, {data['size_mib']} MiB, "
              f"{data['machine']['nproc']} cores "
              f"({'quick' if data['quick'] else 'median of ' + str(data['rounds'])})")
    write_report(report, os.path.relpath(svg, out_dir), data, results, names, ns, attempts)
    print(f"wrote {report} and {svg}", file=sys.stderr)

if __name__ == "__main__":
    main()
