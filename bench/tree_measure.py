#!/usr/bin/env python3
"""Measured tree transfers on shaped links between network namespaces, to validate bench/tree_model.py.

    sudo python3 bench/tree_measure.py                 # every case, 3 rounds, 64 MiB, 200 Mbit/s
    sudo python3 bench/tree_measure.py --rounds 1 --only kill

The namespaces, bridge and shaping are bench/relay.py's (each host's link shaped with `tc … tbf`
to RATE, egress). Cases: one host; a chain of 8 (`--tree 1`); trees of 8 and 15 (`--tree 2`) and
of 15 with fan-out 4; a tree of 15 whose first relay (position 1) is killed with SIGKILL
mid-stream; and a tree of 15 whose relay at position 3 is blackholed mid-stream (its bridge port set
down: every packet to and from it dropped, no RST, noticed only by a stall timeout; this
kernel has neither netem nor iptables). Every
receiver is `teecast recv --relay --once --stall-timeout STALL`, the sender `teecast send --json
--tree K --stall-timeout STALL --connect-timeout 2s`; cases alternate inside each round.

Recorded per run: seconds from the sender's start until every host that was not killed or
blackholed has exited with its verified copy (`finish`), until the sender exited (`sender`), the
moment of the kill or blackhole, and each host's status and parent from the sender's report.
Results go to bench/tree_measured.json (read by `python3 bench/tree_model.py check`, which
needs no root). Python 3 standard library only; needs root, iproute2 and the release build.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import relay
from relay import BIN, MiB, ip_of, ns, sh
from tree_model import EFFICIENCY, parse_rate

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "tree_measured.json")
PORT = relay.PORT

# name: (receivers, fan-out, failure or None); a failure is (kind, position, fraction of the
# no-failure time at which it strikes).
CASES = {
    "one": (1, 1, None),
    "chain8": (8, 1, None),
    "tree8": (8, 2, None),
    "tree15": (15, 2, None),
    "tree15k4": (15, 4, None),
    "kill15": (15, 2, ("kill", 1, 0.5)),
    "blackhole15": (15, 2, ("blackhole", 3, 0.4)),
}


def blackhole(i, on):
    """Drops every packet to and from host i (on: its bridge port set down, so its link has no
    carrier; nothing reaches it and nothing it sends leaves, no RST), or gives it back."""
    sh("ip", "-n", f"{relay.PREFIX}br", "link", "set", f"p{i}", "down" if on else "up")


def run_case(name, src, size, key, work, args, expected):
    n, fanout, failure = CASES[name]
    procs = {}
    try:
        for i in range(1, n + 1):
            out = os.path.join(work, f"{name}-{i}")
            os.makedirs(out)
            argv = ["ip", "netns", "exec", ns(i), BIN, "recv", "--relay", "--once", "--quiet",
                    "--listen", f"{ip_of(i)}:{PORT}", "--dir", out, "--key-file", key,
                    "--stall-timeout", args.stall]
            p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True)
            procs[i] = (p, out)
        for i, (p, _) in procs.items():
            wait_listening(i, f"{ip_of(i)}:{PORT}")
        argv = ["ip", "netns", "exec", ns(0), BIN, "send", "--quiet", "--json", "--key-file",
                key, "--tree", str(fanout), "--stall-timeout", args.stall,
                "--connect-timeout", "2s", src] + [f"{ip_of(i)}:{PORT}" for i in range(1, n + 1)]
        start = time.monotonic()
        sender = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        struck = None
        victim = None
        if failure is not None:
            kind, victim, fraction = failure
            delay = fraction * expected
            while time.monotonic() - start < delay:
                time.sleep(0.005)
            struck = time.monotonic() - start
            if kind == "kill":
                procs[victim][0].send_signal(signal.SIGKILL)
            else:
                blackhole(victim, True)
        exits = {}
        limit = start + args.limit
        while len(exits) < n and time.monotonic() < limit:
            for i, (p, _) in procs.items():
                if i not in exits and p.poll() is not None:
                    exits[i] = (time.monotonic() - start, p.returncode)
            time.sleep(0.005)
        stdout, _ = sender.communicate(timeout=args.limit)
        sender_s = time.monotonic() - start
        report = json.loads(stdout) if stdout.strip() else {"destinations": []}
        hosts = []
        for i, d in enumerate(report["destinations"], start=1):
            exit_s, code = exits.get(i, (None, None))
            hosts.append({"position": i, "status": d["status"], "parent": d["parent"],
                          "note": d["note"], "exit_s": exit_s, "exit_code": code})
        healthy = [h for h in hosts if h["position"] != victim]
        done = all(h["status"] == "ok" and h["exit_code"] == 0 for h in healthy)
        for h in healthy:
            if h["exit_code"] == 0:
                with open(os.path.join(procs[h["position"]][1], os.path.basename(src)), "rb") as f:
                    if os.fstat(f.fileno()).st_size != size:
                        raise SystemExit(f"tree_measure.py: {name}: host {h['position']} "
                                         "stored a wrong size")
        finish = max(h["exit_s"] for h in healthy) if done else None
        return {"case": name, "finish": finish, "sender": sender_s,
                "struck": struck, "all_healthy_ok": done,
                "healthy_without_copy": [h["position"] for h in healthy
                                         if h["exit_code"] != 0],
                "hosts": hosts}
    finally:
        for p, out in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
            shutil.rmtree(out, ignore_errors=True)
        if failure is not None and failure[0] == "blackhole":
            blackhole(failure[1], False)


def wait_listening(i, addr):
    """Until host i's receiver listens (ss inside its namespace), within 5 s."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        r = subprocess.run(["ip", "netns", "exec", ns(i), "ss", "-Hltn", f"src {addr}"],
                           capture_output=True, text=True)
        if r.stdout.strip():
            return
        time.sleep(0.01)
    raise SystemExit(f"tree_measure.py: receiver {i} does not listen on {addr}")


def ssh_launch(n):
    """n ssh sessions from this one machine at once, as `teecast push` opens them, through a
    real sshd on 127.0.0.1: seconds until every remote command has started, and the client
    side's CPU seconds and largest RSS per session (from wait4)."""
    work = tempfile.mkdtemp(prefix="teecast-ssh-")
    sshd = None
    try:
        for name in ("host_key", "user_key"):
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(work, name))
        shutil.copy(os.path.join(work, "user_key.pub"), os.path.join(work, "authorized_keys"))
        os.makedirs("/run/sshd", exist_ok=True)
        port = 22000 + os.getpid() % 10000
        config = os.path.join(work, "sshd_config")
        with open(config, "w") as f:
            f.write(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {work}/host_key\n"
                    f"AuthorizedKeysFile {work}/authorized_keys\nPidFile none\nStrictModes no\n"
                    "UsePAM no\nPasswordAuthentication no\nPermitRootLogin prohibit-password\n"
                    "MaxStartups 10000\nMaxSessions 10000\nLogLevel ERROR\n")
        sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", config],
                                stderr=subprocess.DEVNULL)
        argv = ["ssh", "-p", str(port), "-i", f"{work}/user_key", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "127.0.0.1", "echo started; sleep 1"]
        deadline = time.monotonic() + 10
        while subprocess.run(argv[:-1] + ["true"], capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise SystemExit("tree_measure.py: sshd does not answer")
            time.sleep(0.05)
        start = time.monotonic()
        procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(n)]
        started = []
        for p in procs:
            if p.stdout.readline().strip() == "started":
                started.append(time.monotonic() - start)
        cpu, rss = 0.0, 0
        for p in procs:
            _, _, ru = os.wait4(p.pid, 0)
            p.returncode = 0
            cpu += ru.ru_utime + ru.ru_stime
            rss = max(rss, ru.ru_maxrss)
        return {"sessions": n, "started": len(started), "all_started_s": max(started),
                "client_cpu_s_per_session": cpu / n, "client_rss_kib": rss}
    finally:
        if sshd:
            sshd.kill()
            sshd.wait()
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", default="200mbit")
    ap.add_argument("--stall", default="3s", help="stall timeout of the sender and receivers")
    ap.add_argument("--limit", type=float, default=60, help="seconds a run may take at most")
    ap.add_argument("--only", default="", help="run the cases whose name contains this")
    ap.add_argument("--out", default=OUT, help="where the runs go (merged by case with --only)")
    ap.add_argument("--ssh", type=int, default=0, metavar="N",
                    help="only measure N ssh sessions launched at once (push's launch)")
    args = ap.parse_args()
    if args.ssh:
        print(json.dumps(ssh_launch(args.ssh)))
        return
    if os.geteuid() != 0:
        raise SystemExit("tree_measure.py: needs root (network namespaces)")
    if not os.path.exists(BIN):
        raise SystemExit("tree_measure.py: build first: cargo build --release")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    names = [c for c in CASES if args.only in c]
    hosts = max(CASES[c][0] for c in names) + 1
    size = args.size_mib * MiB
    # The no-failure time of a tree of fan-out 2, to strike at a fraction of it.
    expected = size / (parse_rate(args.rate) * EFFICIENCY / 2)
    work = tempfile.mkdtemp(prefix="teecast-tree-", dir="/dev/shm")
    runs = []
    try:
        relay.setup(hosts, args.rate)
        key, src = relay.key_and_source(work, size)
        for rnd in range(args.rounds):
            for name in names:
                r = run_case(name, src, size, key, work, args, expected)
                r["round"] = rnd + 1
                runs.append(r)
                fin = "–" if r["finish"] is None else f"{r['finish']:.2f}"
                print(f"round {rnd + 1} {name:12} finish {fin} s, sender {r['sender']:.2f} s"
                      + (f", struck at {r['struck']:.2f} s" if r["struck"] else "")
                      + (f", healthy without a copy: {r['healthy_without_copy']}"
                         if r["healthy_without_copy"] else ""), file=sys.stderr)
    finally:
        relay.teardown(hosts)
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()
    commit = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    meta = {"commit": commit, "size_mib": args.size_mib, "rounds": args.rounds, "rate": args.rate,
            "stall_timeout": args.stall, "connect_timeout": "2s", "nproc": os.cpu_count(),
            "kernel": os.uname().release, "load_after": [round(x, 2) for x in load],
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cases": {c: {"receivers": CASES[c][0], "fanout": CASES[c][1],
                          "failure": CASES[c][2]} for c in names}}
    old = {}
    if args.only and os.path.exists(args.out):
        with open(args.out) as f:
            old = json.load(f)
    kept = [r for r in old.get("runs", []) if r["case"] not in names]
    if old:
        meta["cases"] = {**old["meta"]["cases"], **meta["cases"]}
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "runs": kept + runs}, f, indent=1)
    for name in names:
        fs = [r["finish"] for r in runs if r["case"] == name and r["finish"] is not None]
        if fs:
            print(f"{name:12} median {statistics.median(fs):.2f} s "
                  f"({min(fs):.2f}–{max(fs):.2f}, {len(fs)} runs)")


if __name__ == "__main__":
    main()
