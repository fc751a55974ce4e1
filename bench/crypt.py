#!/usr/bin/env python3
"""Encrypted streams against plaintext teecast and per-connection encryption.

    python3 bench/crypt.py [--size MIB] [--rounds R] [--ns 1,2,4,8] [--only REGEX]

Needs `cargo build --release` first, and ssh, sshd, socat and openssl (`.ci/peers` installs the
first three; openssl is Debian's `openssl`). Writes bench/crypt.json, bench/crypt.svg and the
section "Encryption: end to end" of BENCHMARKS.md (between its markers).

Each run is one transfer of a random file from tmpfs (`/dev/shm`) to N receivers on loopback, as
`bench/e2e.py` runs them: every receiver in its own process tree on its own port under
`teecast-bench rusage`, the wall time from starting the sender until it and every receiver have
exited. Two kinds of receiver: *storing* (each writes its copy to a file on `/dev/shm`, which is
then checked for its size) and *discarding* (each writes to /dev/null). Contenders, each at
every N, alternating inside each round:

- teecast, encrypted (the default with a key; `auto` seals on the `readwrite` path), at N = 4
  and 8 also on the pipe path (`--strategy read-pipe`), and `--no-encrypt`: `teecast send --key-file K` into `teecast recv --key-file K --once --output
  FILE` (checks the digest, then keeps the file);
- ssh, `-c aes128-gcm@openssh.com` and `-c chacha20-poly1305@openssh.com`: one `ssh` per
  destination, each reading the file, into a private `sshd -i` per destination (started on its
  accepted connection, no copy in between) that runs `cat > FILE`;
- socat OPENSSL (TLS 1.3): one `socat OPEN:FILE OPENSSL:...` per destination into
  `socat OPENSSL-LISTEN:... OPEN:FILE`;
- `openssl s_client` (TLS 1.3, `-nocommands`) per destination into `openssl s_server -naccept 1`.
"""

import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import e2e  # noqa: E402  (the end-to-end runs' machinery)
from run import esc, svg_frame, PALETTE, machine, loadavg  # noqa: E402

ROOT = os.path.dirname(HERE)
HOST = e2e.HOST
MiB = 1 << 20
GiB = 1 << 30
BEGIN = "<!-- bench/crypt.py: begin -->"
END = "<!-- bench/crypt.py: end -->"

ENCRYPTED = "teecast, encrypted"
ENCRYPTED_PIPE = "teecast, encrypted, --strategy read-pipe"
PLAIN = "teecast --no-encrypt"
SSH_GCM = "ssh aes128-gcm"
SSH_CHACHA = "ssh chacha20-poly1305"
SOCAT = "socat OPENSSL (TLS 1.3)"
S_CLIENT = "openssl s_client (TLS 1.3)"
TLS = (SOCAT, S_CLIENT)


class Setup:
    """Keys, certificates and the sshd configuration, in a temporary directory."""

    def __init__(self, d, teecast):
        self.dir = d
        self.key = os.path.join(d, "teecast.key")
        subprocess.run([teecast, "keygen", self.key], check=True, stderr=subprocess.DEVNULL)
        self.cert, self.tls_key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", self.tls_key, "-out",
                        self.cert, "-days", "2", "-subj", "/CN=localhost"],
                       check=True, capture_output=True)
        host_key, self.user_key = os.path.join(d, "host_key"), os.path.join(d, "user_key")
        for k in (host_key, self.user_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", k], check=True)
        shutil.copy(self.user_key + ".pub", os.path.join(d, "authorized_keys"))
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
        self.sshd_config = os.path.join(d, "sshd_config")
        with open(self.sshd_config, "w") as f:
            f.write(f"HostKey {host_key}\nAuthorizedKeysFile {d}/authorized_keys\n"
                    "PidFile none\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
                    "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
                    "LogLevel ERROR\n")


def per_destination(addrs, one):
    """A shell script that runs `one(host, port)` for every address at once and fails if any
    fails."""
    lines = ["pids=()"]
    for a in addrs:
        host, port = a.rsplit(":", 1)
        lines.append(f"{one(host, port)} & pids+=($!)")
    lines.append('for p in "${pids[@]}"; do wait "$p" || exit 1; done')
    return "\n".join(lines)


def contenders(s, discard):
    def out(path):
        return "/dev/null" if discard else f"'{path}'"

    def teecast_send(extra):
        return lambda b, src, addrs: (f"exec {b['teecast']} send --quiet --key-file {s.key} "
                                      f"{extra} '{src}' {' '.join(addrs)}")

    def teecast_recv(b, port, path):
        return (f"exec {b['teecast']} recv --quiet --once --key-file {s.key} "
                f"--listen {HOST}:{port} --output {out(path)}")

    def ssh_send(cipher):
        return lambda b, src, addrs: per_destination(addrs, lambda h, p: (
            f"ssh -p {p} -i {s.user_key} -o BatchMode=yes -o StrictHostKeyChecking=no "
            f"-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o Compression=no "
            f"-c {cipher} root@{h} true < '{src}'"))

    def sshd_recv(b, port, path):
        # sshd -i exits 255 once its client has gone; ssh's own status is what counts.
        return (f"python3 {HERE}/crypt.py --inetd-once {port} /usr/sbin/sshd -i "
                f"-f {s.sshd_config} -o \"ForceCommand=cat > {out(path)}\"; true")

    def socat_send(b, src, addrs):
        return per_destination(addrs, lambda h, p: (
            f"socat -u -b 1048576 OPEN:'{src}' OPENSSL:{h}:{p},verify=0"))

    def socat_recv(b, port, path):
        target = "OPEN:/dev/null" if discard else f"OPEN:'{path}',creat,trunc"
        return (f"exec socat -u -b 1048576 OPENSSL-LISTEN:{port},bind={HOST},reuseaddr,"
                f"cert={s.cert},key={s.tls_key},verify=0 {target}")

    def s_client_send(b, src, addrs):
        return per_destination(addrs, lambda h, p: (
            f"openssl s_client -connect {h}:{p} -quiet -no_ign_eof -nocommands "
            f"< '{src}' > /dev/null 2>&1"))

    def s_server_recv(b, port, path):
        # s_server sends what it reads on standard input: a pipe that stays open until the end.
        return (f"openssl s_server -accept {HOST}:{port} -cert {s.cert} -key {s.tls_key} "
                f"-naccept 1 -quiet > {out(path)} 2>/dev/null < <(exec sleep 3600); rc=$?; "
                f"kill $! 2>/dev/null; exit $rc")

    check = "none" if discard else "file"
    return [
        e2e.E2E(ENCRYPTED, teecast_send(""), teecast_recv, check=check),
        e2e.E2E(ENCRYPTED_PIPE, teecast_send("--strategy read-pipe"), teecast_recv,
                check=check, ns={4, 8}),
        e2e.E2E(PLAIN, teecast_send("--no-encrypt"), teecast_recv, check=check),
        e2e.E2E(SSH_GCM, ssh_send("aes128-gcm@openssh.com"), sshd_recv, check=check),
        e2e.E2E(SSH_CHACHA, ssh_send("chacha20-poly1305@openssh.com"), sshd_recv,
                check=check),
        e2e.E2E(SOCAT, socat_send, socat_recv, check=check),
        e2e.E2E(S_CLIENT, s_client_send, s_server_recv, check=check),
    ]


def inetd_once(argv):
    """Accepts one connection on 127.0.0.1:PORT, then runs the command on it as its standard
    input and output (what inetd does for `sshd -i`)."""
    port, command = int(argv[0]), argv[1:]
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, port))
        listener.listen(1)
        conn, _ = listener.accept()
    os.dup2(conn.fileno(), 0)
    os.dup2(conn.fileno(), 1)
    conn.close()
    os.execvp(command[0], command)


# ---------------------------------------------------------------------------------------------


def measure(b, setup, src, size, ns, rounds, only, log):
    """{mode: {n: {name: [figures]}}}, and the failures."""
    results, failures = {}, []
    outdir = tempfile.mkdtemp(prefix="teecast-crypt-", dir="/dev/shm")
    try:
        for mode in ("store", "discard"):
            results[mode] = {}
            for n in ns:
                todo = [c for c in contenders(setup, mode == "discard")
                        if (c.ns is None or n in c.ns)
                        and (not only or re.search(only, c.name))]
                cell = results[mode][n] = {c.name: [] for c in todo}
                for r in range(rounds):
                    for c in e2e.round_order(todo, r):
                        try:
                            fig = e2e.run_once(c, n, b, src, size, None, outdir, False)
                            log(f"{mode} N={n} round {r + 1}/{rounds} {c.name}: "
                                f"{fig['wall']:.2f} s, sender {fig['sender_cpu_per_gib']:.2f}"
                                f" recv {fig['recv_cpu_per_gib']:.2f} CPU s/GiB")
                        except e2e.Failure as e:
                            fig = {"error": str(e)}
                            failures.append(f"{mode}, N = {n}, round {r + 1}: {e}")
                            log(f"{mode} N={n} round {r + 1}/{rounds} {c.name}: FAILED {e}")
                        cell[c.name].append(fig)
    finally:
        shutil.rmtree(outdir, ignore_errors=True)
    return results, failures


def ok(runs):
    return [r for r in runs if "error" not in r]


def median(runs, key):
    vals = [r[key] for r in ok(runs)]
    return statistics.median(vals) if vals else None


def speedup(encrypted, other):
    """Median over rounds of wall(other) / wall(encrypted), paired round by round: above 1,
    encrypted teecast is faster."""
    return e2e.ratio_of(encrypted, other)


def gbps(runs, size, n):
    wall = median(runs, "wall")
    return size * n / wall / 1e9 if wall else None


def f2(v, f="{:.2f}"):
    return "—" if v is None else f.format(v)


def targets(results):
    """(target, measured ratio, met) for each of the issue's targets."""
    st, di = results.get("store", {}), results.get("discard", {})

    def r(mode, n, a, b):
        cell = mode.get(n, {})
        if a not in cell or b not in cell:
            return None
        return speedup(cell[a], cell[b])

    def best_tls(n):
        cell = st.get(n, {})
        got = [(median(cell[t], "wall"), t) for t in TLS if t in cell and median(cell[t], "wall")]
        return min(got)[1] if got else None

    rows = [
        ("storing, N = 1: encrypted ≥ 0.7× plaintext teecast", r(st, 1, ENCRYPTED, PLAIN), 0.7),
        ("storing, N = 4: encrypted ≥ 0.7× plaintext teecast", r(st, 4, ENCRYPTED, PLAIN), 0.7),
        ("storing, N = 1: ≥ 2× ssh aes128-gcm", r(st, 1, ENCRYPTED, SSH_GCM), 2.0),
    ]
    tls = best_tls(4)
    rows.append((f"storing, N = 4: ≥ 1.5× the best TLS contender ({tls})",
                 r(st, 4, ENCRYPTED, tls) if tls else None, 1.5))
    rows.append(("discarding, N = 1: ≥ 3× ssh aes128-gcm", r(di, 1, ENCRYPTED, SSH_GCM), 3.0))
    return [(name, v, v is not None and v >= goal) for name, v, goal in rows]


def write_svg(path, results, size, ns):
    """GB/s per destination against N, storing (solid) and discarding (dashed)."""
    names = [c.name for c in contenders_names()]
    series = []
    for mode in ("store", "discard"):
        for name in names:
            pts = [(n, gbps(results[mode][n][name], size, 1))
                   for n in ns if name in results.get(mode, {}).get(n, {})]
            pts = [(n, v) for n, v in pts if v is not None]
            if pts:
                series.append((mode, name, pts))
    o, xs, y, (left, top, pw, ph) = svg_frame(
        [v for _, _, pts in series for _, v in pts], ns,
        f"Encrypted streams: {size // MiB} MiB to N receivers on loopback (solid: storing on "
        "tmpfs, dashed: discarding)", "receivers N", "GB/s per receiver (median wall time)")
    for i, (mode, name, pts) in enumerate(series):
        color = PALETTE[names.index(name) % len(PALETTE)]
        dash = ' stroke-dasharray="6 4"' if mode == "discard" else ""
        width = 3 if name == ENCRYPTED else 1.6
        d = " ".join(f"{'M' if j == 0 else 'L'}{xs[n]:.1f},{y(v):.1f}"
                     for j, (n, v) in enumerate(pts))
        o.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="{width}"{dash}/>')
        for n, v in pts:
            o.append(f'<circle cx="{xs[n]:.1f}" cy="{y(v):.1f}" r="3" fill="{color}"/>')
    for i, name in enumerate(names):
        color = PALETTE[i % len(PALETTE)]
        ly, lx = top + 8 + i * 18, left + pw + 16
        o.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 26}" y2="{ly}" stroke="{color}" '
                 f'stroke-width="{3 if name == ENCRYPTED else 1.6}"/>')
        o.append(f'<text x="{lx + 32}" y="{ly + 4}">{esc(name)}</text>')
    o.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(o) + "\n")


def contenders_names():
    return contenders(Setup.__new__(Setup), False)


def section(results, size, ns, rounds, info):
    L = [BEGIN, "", "## Encryption: end to end", ""]
    L.append(f"{size // MiB} MiB of random bytes from tmpfs (`/dev/shm`) to N receivers on "
             "loopback, storing their copy on `/dev/shm` or discarding it (`/dev/null`); median "
             f"wall seconds (min–max over {rounds} rounds, contenders alternating inside each "
             "round) from starting the sender until it and every receiver have exited; sender "
             "and receiver CPU (user + system of the whole process tree, every receiver added) "
             "per GiB delivered. **×** columns: the other contender's wall time divided by "
             "encrypted teecast's, paired round by round, then the median (above 1: encrypted "
             "teecast is faster). Sender and receivers share the machine's 2 cores.")
    L.append("")
    L.append("```sh")
    L.append(f"cargo build --release && python3 bench/crypt.py --size {size // MiB} "
             f"--rounds {rounds} --ns {','.join(map(str, ns))}")
    L.append("```")
    L.append("")
    L.append(f"- Machine: {info['machine']}; {info['kernel']}; {info['date']}; commit "
             f"{info['commit']}.")
    L.append(f"- Load average before: {info['load_before']}; after: {info['load_after']}.")
    L.append(f"- Peers: {info['peers']}.")
    L.append("")
    L.append("![Encrypted streams](bench/crypt.svg)")
    L.append("")
    names = [c.name for c in contenders_names()]
    for mode, title in (("store", "Into receivers that store the file (tmpfs)"),
                        ("discard", "Into receivers that discard it (`/dev/null`)")):
        L.append(f"### {title}")
        L.append("")
        L.append("| contender | N | wall s | × | GB/s per receiver | sender CPU s/GiB | "
                 "receiver CPU s/GiB |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        for n in ns:
            cell = results[mode].get(n, {})
            for name in names:
                if name not in cell:
                    continue
                runs = cell[name]
                good = ok(runs)
                if not good:
                    L.append(f"| {name} | {n} | failed | | | | |")
                    continue
                w = [r["wall"] for r in good]
                x = "" if name == ENCRYPTED else f2(speedup(cell[ENCRYPTED], runs))
                L.append(f"| {name} | {n} | {statistics.median(w):.2f} ({min(w):.2f}–"
                         f"{max(w):.2f}) | {x} | {f2(gbps(runs, size, n) / n)} | "
                         f"{f2(median(runs, 'sender_cpu_per_gib'))} | "
                         f"{f2(median(runs, 'recv_cpu_per_gib'))} |")
        L.append("")
    L.append("### The targets")
    L.append("")
    L.append("| target | measured | met |")
    L.append("|---|---:|---|")
    for name, v, met in targets(results):
        L.append(f"| {name} | {f2(v)}× | {'yes' if met else '**no**'} |")
    L.append("")
    L.append(END)
    return "\n".join(L)


def merge_into(path, text):
    with open(path) as f:
        doc = f.read()
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        doc = head + text + rest.split(END, 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    with open(path, "w") as f:
        f.write(doc)


def peers():
    def first(argv):
        try:
            p = subprocess.run(argv, capture_output=True, text=True)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"
    return "; ".join([first(["ssh", "-V"]), first(["socat", "-V"])[:60].strip(),
                      first(["openssl", "version"])])


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--inetd-once":
        return inetd_once(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=512, help="MiB per transfer (512)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ns", default="1,2,4,8")
    ap.add_argument("--only", help="only the contenders whose name matches this regex")
    ap.add_argument("--no-write", action="store_true",
                    help="print the section; write neither BENCHMARKS.md nor the chart")
    args = ap.parse_args()
    for tool in ("ssh", "/usr/sbin/sshd", "socat", "openssl"):
        if not shutil.which(tool):
            sys.exit(f"bench/crypt.py needs {tool} (run .ci/peers; openssl: apt-get install "
                     "openssl)")
    b = {"teecast": os.path.join(ROOT, "target/release/teecast"),
         "bench": os.path.join(ROOT, "target/release/teecast-bench")}
    for p in b.values():
        if not os.access(p, os.X_OK):
            sys.exit(f"{p} is missing: cargo build --release first")
    size = args.size * MiB
    ns = [int(n) for n in args.ns.split(",")]
    info = {"machine": machine(), "kernel": f"Linux {platform.release()}",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "commit": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                     capture_output=True, text=True).stdout.strip() or "?",
            "load_before": loadavg(), "peers": peers()}
    with tempfile.TemporaryDirectory(prefix="teecast-crypt-") as d:
        setup = Setup(d, b["teecast"])
        src = os.path.join("/dev/shm", f"teecast-crypt-src-{os.getpid()}")
        with open(src, "wb") as f:
            for _ in range(args.size):
                f.write(os.urandom(MiB))
        try:
            results, failures = measure(b, setup, src, size, ns, args.rounds, args.only,
                                        lambda m: print(m, file=sys.stderr, flush=True))
        finally:
            os.unlink(src)
    info["load_after"] = loadavg()
    text = section(results, size, ns, args.rounds, info)
    print(text)
    for f in failures:
        print("FAILED:", f, file=sys.stderr)
    if not args.no_write and not args.only:
        with open(os.path.join(HERE, "crypt.json"), "w") as f:
            json.dump({"info": info, "size": size, "rounds": args.rounds,
                       "results": {m: {str(n): v for n, v in r.items()}
                                   for m, r in results.items()}}, f, indent=1)
        write_svg(os.path.join(HERE, "crypt.svg"), results, size, ns)
        merge_into(os.path.join(ROOT, "BENCHMARKS.md"), text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
