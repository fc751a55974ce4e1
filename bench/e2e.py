#!/usr/bin/env python3
"""teecast end to end: the time until every receiver has exited with its copy stored.

    python3 bench/run.py --e2e-only            # this pass alone, merged into BENCHMARKS.md
    python3 bench/run.py --e2e-only --quick    # 256 MiB, 1 round, under target/bench-quick/

`bench/run.py` runs this pass after its sender-side tables (unless `--no-e2e`); this module holds
the contenders and the measuring. Each run starts fresh receivers, each in its own process on
its own loopback port and under `teecast-bench rusage` (CPU and peak RSS of its whole process
tree), then starts the sender; the wall time runs from starting the sender until the sender and
every receiver have exited. Then it checks what each receiver stored (its size; a
`sha256sum` consumer's line against the source's SHA-256), deletes it, and on a disk
filesystem syncs that filesystem before the next run, so no run inherits another's dirty pages.

Contenders:

- teecast: `teecast send` (framed, verified) into `teecast recv --once --output FILE`, which
  writes an unnamed temporary, checks length and digest, fsyncs and publishes it; and the same
  with `--digest none` (length checked only);
- mbuffer (`-s 1M -m 64M` on both sides): `mbuffer -O ...` into `mbuffer -I PORT -o FILE`;
  no check and no fsync;
- nc (N = 1): `nc -N` into `nc -l > FILE`; socat (N = 1) into `socat ... OPEN:FILE`;
  `tee | nc` (N >= 2) into `nc -l > FILE`;
- on a disk filesystem also `mbuffer ... && sync FILE`: mbuffer's receiver followed by an
  fsync of its file (coreutils `sync FILE`), what teecast's receiver does before it exits;
- into a consumer on standard output: `teecast recv --output - | cat > FILE` and
  `| sha256sum`, against `mbuffer -I PORT | cat > FILE` and `| sha256sum`.
"""

import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time

HOST = "127.0.0.1"
GiB = 1 << 30
MiB = 1 << 20
MB = "-s 1M -m 64M"

# The reference contender of every ratio.
MBUFFER = "mbuffer -I -o FILE"


class E2E:
    """One way of getting the source into N stored copies."""

    def __init__(self, name, sender, receiver, ns=None, check="file", where=None, peer=None):
        self.name = name
        self.sender = sender      # (bin, src, [addr]) -> shell command
        self.receiver = receiver  # (bin, port, path) -> shell command
        self.ns = ns              # None: every N
        self.check = check        # "file": the stored file's size; "sha256": the consumer's
        #                           line; "none": the exit codes alone (a discarding receiver)
        self.where = where        # None: every filesystem; else "tmpfs" or "disk"
        self.peer = peer          # the program this needs ("mbuffer", "socat", "nc"), or None

    def runs(self, n, fs_kind, have):
        return ((self.ns is None or n in self.ns) and (self.where in (None, fs_kind))
                and (self.peer is None or have.get(self.peer)))


def teecast_send(extra=""):
    def build(b, src, addrs):
        return f"exec {b['teecast']} send --quiet {extra} '{src}' {' '.join(addrs)}"
    return build


def teecast_recv(output_to=None):
    def build(b, port, path):
        cmd = f"{b['teecast']} recv --quiet --once --listen {HOST}:{port}"
        if output_to is None:
            return f"exec {cmd} --output '{path}'"
        return f"set -o pipefail; {cmd} --output - | {output_to.format(path=path)}"
    return build


def mbuffer_send(b, src, addrs):
    return f"exec mbuffer -q {MB} -i '{src}' " + " ".join(f"-O {a}" for a in addrs)


def mbuffer_recv(then=None, output_to=None):
    def build(b, port, path):
        cmd = f"mbuffer -q {MB} -I {HOST}:{port}"
        if output_to is not None:
            return f"set -o pipefail; {cmd} | {output_to.format(path=path)}"
        if then:
            return f"{cmd} -o '{path}' && {then.format(path=path)}"
        return f"exec {cmd} -o '{path}'"
    return build


def nc_send(b, src, addrs):
    host, port = addrs[0].rsplit(":", 1)
    return f"exec nc -N {host} {port} < '{src}' > /dev/null"


def nc_recv(b, port, path):
    return f"exec nc -d -l {HOST} {port} > '{path}'"


def socat_send(b, src, addrs):
    return f"exec socat -u -b 1048576 OPEN:'{src}' TCP:{addrs[0]}"


def socat_recv(b, port, path):
    return (f"exec socat -u -b 1048576 TCP-LISTEN:{port},bind={HOST},reuseaddr "
            f"OPEN:'{path}',creat,trunc")


def round_order(todo, r):
    """The contenders in round `r`: rotated by one each round and reversed every other, so no
    contender always runs first or right after the same one."""
    k = r % len(todo) if todo else 0
    order = todo[k:] + todo[:k]
    if r % 2:
        order.reverse()
    return order


def tee_nc_script(src, addrs):
    """`cat FILE | tee FIFO... | nc`, one nc per extra destination reading a fifo; the shell
    waits for every nc, so its rusage covers the whole tree."""
    lines = ["set -o pipefail", 'd=$(mktemp -d)', "trap 'rm -rf \"$d\"' EXIT", "pids=()"]
    fifos = []
    for i, a in enumerate(addrs[:-1]):
        host, port = a.rsplit(":", 1)
        f = f'"$d/{i}"'
        fifos.append(f)
        lines.append(f"mkfifo {f}")
        lines.append(f"nc -N {host} {port} < {f} > /dev/null & pids+=($!)")
    host, port = addrs[-1].rsplit(":", 1)
    lines.append(f"cat '{src}' | tee {' '.join(fifos)} | nc -N {host} {port} > /dev/null "
                 "|| exit 1")
    lines.append('for p in "${pids[@]}"; do wait "$p" || exit 1; done')
    return "\n".join(lines)


def tee_nc_send(b, src, addrs):
    return tee_nc_script(src, addrs)


TEECAST = "teecast send -> recv --output (verified, fsynced)"
STDOUT_NS = {1, 4}


def contenders():
    return [
        E2E(TEECAST, teecast_send(), teecast_recv()),
        E2E("same, --digest none", teecast_send("--digest none"), teecast_recv()),
        E2E(MBUFFER, mbuffer_send, mbuffer_recv(), peer="mbuffer"),
        E2E("mbuffer -I -o FILE && sync FILE", mbuffer_send,
            mbuffer_recv(then="sync '{path}'"), where="disk", peer="mbuffer"),
        E2E("nc -> nc -l > FILE", nc_send, nc_recv, ns={1}, peer="nc"),
        E2E("socat -> socat OPEN:FILE", socat_send, socat_recv, ns={1}, peer="socat"),
        E2E("tee | nc -> nc -l > FILE", tee_nc_send, nc_recv, ns={2, 4, 8}, peer="nc"),
        E2E("teecast recv --output - | cat > FILE", teecast_send(),
            teecast_recv("cat > '{path}'"), ns=STDOUT_NS, where="tmpfs"),
        E2E("mbuffer -I | cat > FILE", mbuffer_send, mbuffer_recv(output_to="cat > '{path}'"),
            ns=STDOUT_NS, where="tmpfs", peer="mbuffer"),
        E2E("teecast recv --output - | sha256sum", teecast_send(),
            teecast_recv("sha256sum > '{path}'"), ns=STDOUT_NS, check="sha256", where="tmpfs"),
        E2E("mbuffer -I | sha256sum", mbuffer_send,
            mbuffer_recv(output_to="sha256sum > '{path}'"), ns=STDOUT_NS, check="sha256",
            where="tmpfs", peer="mbuffer"),
    ]


# ---------------------------------------------------------------------------------------------


class Failure(Exception):
    pass


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def listening_ports():
    ports = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A":
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except FileNotFoundError:
            pass
    return ports


def kill(p):
    try:
        os.killpg(p.pid, 9)
    except ProcessLookupError:
        pass


def read_rusage(path):
    try:
        with open(path) as f:
            user, system, rss_kib = f.read().split()
        return float(user) + float(system), int(rss_kib) / 1024
    except (OSError, ValueError):
        return None, None


def run_once(c, n, b, src, size, sha, outdir, disk):
    """One transfer to n receivers storing under outdir; a dict of figures, or Failure."""
    procs, rufiles, paths, addrs = [], [], [], []
    sender = None
    errs = []
    try:
        ports = []
        for i in range(n):
            port = free_port()
            path = os.path.join(outdir, f"copy{i}")
            fd, ru = tempfile.mkstemp(prefix="teecast-e2e-rusage-")
            os.close(fd)
            rufiles.append(ru)
            err = tempfile.TemporaryFile()
            errs.append(err)
            p = subprocess.Popen([b["bench"], "rusage", "--out", ru, "--", "bash", "-c",
                                  c.receiver(b, port, path)],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=err, start_new_session=True)
            procs.append(p)
            paths.append(path)
            ports.append(port)
            addrs.append(f"{HOST}:{port}")
        deadline = time.monotonic() + 10
        while not set(ports) <= listening_ports():
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise Failure(f"{c.name}: a receiver did not start listening")
            time.sleep(0.005)
        fd, sru = tempfile.mkstemp(prefix="teecast-e2e-rusage-")
        os.close(fd)
        rufiles.append(sru)
        serr = tempfile.TemporaryFile()
        errs.append(serr)
        cmd = c.sender(b, src, addrs)
        timeout = 60 + size * n / 50e6
        t0 = time.perf_counter()
        sender = subprocess.Popen([b["bench"], "rusage", "--out", sru, "--", "bash", "-c", cmd],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=serr, start_new_session=True)
        timed_out = threading.Event()

        def watchdog():
            timed_out.set()
            for p in [sender] + procs:
                kill(p)
        timer = threading.Timer(timeout, watchdog)
        timer.start()
        try:
            codes = [sender.wait()] + [p.wait() for p in procs]
            wall = time.perf_counter() - t0
        finally:
            timer.cancel()
        if timed_out.is_set():
            raise Failure(f"{c.name}: timed out after {timeout:.0f} s")
        if any(codes):
            tails = []
            for e in errs:
                e.seek(0)
                t = e.read().decode(errors="replace").strip()
                if t:
                    tails.append(t[-500:])
            raise Failure(f"{c.name} at N = {n}: exit codes {codes}\n" + "\n".join(tails))
        for path in paths:
            if c.check == "sha256":
                with open(path) as f:
                    got = f.read().split()[0]
                if got != sha:
                    raise Failure(f"{c.name}: sha256sum printed {got}, the source is {sha}")
            elif c.check == "file":
                got = os.path.getsize(path)
                if got != size:
                    raise Failure(f"{c.name}: stored {got} bytes of {size}")
        rcpu, rss = 0.0, 0.0
        for ru in rufiles[:n]:
            cpu, r = read_rusage(ru)
            if cpu is None:
                raise Failure(f"{c.name}: no rusage from a receiver")
            rcpu += cpu
            rss = max(rss, r)
        scpu, srss = read_rusage(rufiles[n])
        stored = size * n / GiB
        return {"wall": wall, "recv_cpu_per_gib": rcpu / stored, "recv_rss_mib": rss,
                "sender_cpu_per_gib": (scpu or 0.0) / stored, "sender_rss_mib": srss or 0.0}
    finally:
        for p in ([sender] if sender else []) + procs:
            if p.poll() is None:
                kill(p)
                p.wait()
        for e in errs:
            e.close()
        for ru in rufiles:
            try:
                os.unlink(ru)
            except FileNotFoundError:
                pass
        for name in os.listdir(outdir):
            full = os.path.join(outdir, name)
            if os.path.isdir(full):
                shutil.rmtree(full, ignore_errors=True)
            else:
                os.unlink(full)
        if disk:
            subprocess.run(["sync", "-f", outdir])


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(4 * MiB)
            if not block:
                return h.hexdigest()
            h.update(block)


def measure(b, have, src, size, dirs, ns, rounds, log, only=None):
    """Every contender at every N on every (label, kind, dir), alternating inside each round.

    Returns {label: {"dir", "kind", "results": {n: {name: [figures]}}}} and a list of failures.
    """
    import re
    sha = sha256_of(src)
    out, failures = {}, []
    for label, kind, d in dirs:
        outdir = tempfile.mkdtemp(prefix="teecast-e2e-", dir=d)
        res = {}
        try:
            for n in ns:
                todo = [c for c in contenders() if c.runs(n, kind, have)
                        and (not only or re.search(only, c.name))]
                free = shutil.disk_usage(d).free
                if size * n + 512 * MiB > free:
                    failures.append(f"{label}, N = {n}: not enough room in {d}; skipped")
                    continue
                res[n] = {c.name: [] for c in todo}
                for r in range(rounds):
                    for c in round_order(todo, r):
                        try:
                            fig = run_once(c, n, b, src, size, sha, outdir, kind == "disk")
                            log(f"e2e {label} N={n} round {r + 1}/{rounds} {c.name}: "
                                f"{fig['wall']:.2f} s, recv {fig['recv_cpu_per_gib']:.2f} "
                                f"CPU s/GiB, {fig['recv_rss_mib']:.0f} MiB")
                        except Failure as e:
                            fig = {"error": str(e)}
                            failures.append(f"e2e {label}, N = {n}, round {r + 1}: {e}")
                            log(f"e2e {label} N={n} round {r + 1}/{rounds} {c.name}: "
                                f"FAILED {e}")
                        res[n][c.name].append(fig)
        finally:
            shutil.rmtree(outdir, ignore_errors=True)
        out[label] = {"dir": d, "kind": kind, "results": {str(n): v for n, v in res.items()}}
    return out, failures


# ---------------------------------------------------------------------------------------------
# Report


def _ok(runs):
    return [r for r in runs if "error" not in r]


def _med(vals, f="{:.2f}"):
    if not vals:
        return "—"
    m = statistics.median(vals)
    if len(vals) == 1:
        return f.format(m)
    return f"{f.format(m)} ({f.format(min(vals))}–{f.format(max(vals))})"


def ratio_of(runs_a, runs_b):
    """Median over rounds of wall(b) / wall(a), pairing round by round (both alternated in the
    same rounds); None when either failed."""
    pairs = [(a, b) for a, b in zip(runs_a, runs_b) if "error" not in a and "error" not in b]
    if not pairs:
        return None
    return statistics.median(b["wall"] / a["wall"] for a, b in pairs)


def section(e2e, size_mib, rounds):
    """Markdown lines of the end-to-end section."""
    L = ["## End to end: into receivers that store the file", ""]
    L.append(f"{size_mib} MiB from tmpfs (`/dev/shm`) into N receivers on loopback, each storing "
             "its copy on the filesystem named; median wall seconds (min–max over "
             f"{rounds} round(s), contenders alternating inside each round) from starting the "
             "sender until it and every receiver have exited with the copy stored. "
             "**× mbuffer** is mbuffer's wall time divided by the contender's, paired round by "
             "round, then the median (above 1: faster than mbuffer). Receiver CPU is user + "
             "system of every receiver's process tree per GiB stored; RSS the largest receiver's "
             "peak. teecast's receiver checks length and digest, fsyncs and publishes; mbuffer, "
             "nc and socat check nothing and do not fsync. Command: `python3 bench/run.py "
             f"--e2e-only --rounds {rounds}` (see the top of this file); the sender-side "
             "tables above are from their own, earlier run.")
    L.append("")
    names = [c.name for c in contenders()]
    summary = []
    for label, part in e2e.items():
        results = {int(n): v for n, v in part["results"].items()}
        L.append(f"### Stored on {label}: `{part['dir']}`")
        L.append("")
        for n in sorted(results):
            cell = results[n]
            L.append(f"**N = {n}**")
            L.append("")
            L.append("| contender | wall s | × mbuffer | recv CPU s/GiB | recv RSS MiB "
                     "| sender CPU s/GiB |")
            L.append("|---|---:|---:|---:|---:|---:|")
            ref = cell.get(MBUFFER)
            for name in names:
                runs = cell.get(name)
                if runs is None:
                    continue
                ok = _ok(runs)
                shown = name.replace("|", "\\|")
                if not ok:
                    L.append(f"| {shown} | failed | | | | |")
                    continue
                bad = len(runs) - len(ok)
                r = ratio_of(runs, ref) if ref else None
                rs = f"{r:.2f}" if r else "—"
                L.append(f"| {shown}{f' ({bad} failed)' if bad else ''} | "
                         f"{_med([x['wall'] for x in ok])} | {rs} | "
                         f"{_med([x['recv_cpu_per_gib'] for x in ok])} | "
                         f"{statistics.median(x['recv_rss_mib'] for x in ok):.0f} | "
                         f"{_med([x['sender_cpu_per_gib'] for x in ok])} |")
                if name == TEECAST and r:
                    mc = _ok(ref) if ref else []
                    tc = statistics.median(x["recv_cpu_per_gib"] for x in ok)
                    mcv = statistics.median(x["recv_cpu_per_gib"] for x in mc) if mc else None
                    summary.append((label, n, r, tc, mcv))
            L.append("")
    if summary:
        L.insert(4, "")
        rows = ["| stored on | N | teecast × mbuffer (wall) | recv CPU s/GiB teecast / "
                "mbuffer |", "|---|---:|---:|---:|"]
        for label, n, r, tc, mc in summary:
            rows.append(f"| {label} | {n} | {r:.2f} | {tc:.2f} / "
                        f"{'—' if mc is None else f'{mc:.2f}'} |")
        for i, row in enumerate(rows):
            L.insert(4 + i, row)
        L.insert(4 + len(rows), "")
    return L


def ab_main(argv):
    """`python3 bench/e2e.py N ROUNDS DIR NAME=TEECAST_BINARY... [mbuffer] [mbuffer+sync]`:
    alternates the
    framed, verified transfer of each teecast binary (its own sender into its own receivers;
    `NAME=BINARY,ARGS` adds sender arguments) and, if named, mbuffer (`+sync`: its receiver
    then fsyncs the file), into N receivers storing under DIR; 1 GiB from /dev/shm (TEECAST_E2E_MIB
    sets the size). Prints median wall, the ratio to the first contender paired round by round,
    and the receivers' CPU per GiB. For the experiments in BENCHMARKS.md ("Attempts")."""
    if len(argv) < 4:
        raise SystemExit(ab_main.__doc__)
    n, rounds, d = int(argv[0]), int(argv[1]), argv[2]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    bench = os.path.join(root, "target", "release", "teecast-bench")
    cands = []
    for a in argv[3:]:
        if a == "mbuffer":
            cands.append((a, {"bench": bench}, E2E(a, mbuffer_send, mbuffer_recv())))
        elif a == "mbuffer+sync":
            cands.append((a, {"bench": bench},
                          E2E(a, mbuffer_send, mbuffer_recv(then="sync '{path}'"))))
        else:
            name, binary = a.split("=", 1)
            extra = ""
            if "," in binary:
                binary, extra = binary.split(",", 1)
            cands.append((name, {"bench": bench, "teecast": binary},
                          E2E(name, teecast_send(extra), teecast_recv())))
    size = int(os.environ.get("TEECAST_E2E_MIB", "1024")) * MiB
    src = f"/dev/shm/teecast-e2e-ab-{os.getpid()}"
    with open(src, "wb") as f:
        for _ in range(size // (16 * MiB)):
            f.write(os.urandom(16 * MiB))
        f.write(os.urandom(size % (16 * MiB)))
    outdir = tempfile.mkdtemp(prefix="teecast-e2e-ab-", dir=d)
    disk = subprocess.run(["stat", "-f", "-c", "%T", d], capture_output=True,
                          text=True).stdout.strip() != "tmpfs"
    runs = {name: [] for name, _, _ in cands}
    try:
        for r in range(rounds):
            order = cands if r % 2 == 0 else cands[::-1]
            for name, b, c in order:
                runs[name].append(run_once(c, n, b, src, size, None, outdir, disk))
    finally:
        os.unlink(src)
        shutil.rmtree(outdir, ignore_errors=True)
    first = cands[0][0]
    for name, _, _ in cands:
        w = [x["wall"] for x in runs[name]]
        cpu = statistics.median(x["recv_cpu_per_gib"] for x in runs[name])
        scpu = statistics.median(x["sender_cpu_per_gib"] for x in runs[name])
        rss = max(x["recv_rss_mib"] for x in runs[name])
        r = ratio_of(runs[name], runs[first])
        vs = f"{first}/this {r:.2f}"
        if "mbuffer" in runs:
            vs += f", mbuffer/this {ratio_of(runs[name], runs['mbuffer']):.2f}"
        print(f"{name:12s} wall {statistics.median(w):.3f} s ({min(w):.3f}–{max(w):.3f}), "
              f"{vs}, recv CPU {cpu:.2f} s/GiB, recv RSS {rss:.0f} MiB, "
              f"sender CPU {scpu:.2f} s/GiB")


if __name__ == "__main__":
    import sys
    ab_main(sys.argv[1:])
