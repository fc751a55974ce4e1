#!/usr/bin/env python3
"""Where one receiving server's threads wait while K streams go onto a disk: samples every
thread's kernel wait channel (/proc/PID/task/*/wchan) every 2 ms during one run of
bench/server.py's teecast contender, and the dirty-page counters of /proc/vmstat.

    python3 bench/server_wchan.py BINARY K MIB DIR [PRESSURE_GIB]

Prints the share of samples in each wait channel (running: "0"), the peak dirty and
writeback pages, and the dirty limit the kernel computed (nr_dirty_threshold).
"""

import collections
import os
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import server  # noqa: E402

GiB = 1 << 30


def vmstat():
    with open("/proc/vmstat") as f:
        return {k: int(v) for k, v in (l.split() for l in f)}


def main():
    binary, k, mib, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    pressure = float(sys.argv[5]) if len(sys.argv) > 5 else 0
    ballast = "/dev/shm/teecast-bench-ballast"
    src = f"/dev/shm/teecast-bench-src-{mib}"
    if not os.path.exists(src):
        with open(src, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1 << 20))
    if pressure:
        subprocess.run(["fallocate", "-l", str(int(pressure * GiB)), ballast], check=True)
    try:
        os.makedirs(d, exist_ok=True)
        server.clear(d)
        port = server.free_port()
        recv = subprocess.Popen([binary, "recv", "--quiet", "--listen", f"127.0.0.1:{port}",
                                 "--dir", d, "--max-per-peer", "64"], stderr=subprocess.DEVNULL)
        server.wait_listening_teecast(recv, port)
        waits = collections.Counter()
        peak = collections.Counter()
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                try:
                    for t in os.listdir(f"/proc/{recv.pid}/task"):
                        with open(f"/proc/{recv.pid}/task/{t}/wchan") as f:
                            waits[f.read().strip() or "0"] += 1
                except (FileNotFoundError, ProcessLookupError):
                    pass
                v = vmstat()
                for key in ("nr_dirty", "nr_writeback", "nr_dirty_threshold"):
                    peak[key] = max(peak[key], v[key])
                time.sleep(0.002)

        th = threading.Thread(target=sample)
        th.start()
        t0 = time.perf_counter()
        senders = [subprocess.Popen([binary, "send", "--quiet", "--name", f"s{i}.bin", src,
                                     f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL) for i in range(k)]
        for s in senders:
            s.wait()
        wall = time.perf_counter() - t0
        stop.set()
        th.join()
        recv.send_signal(signal.SIGTERM)
        recv.wait()
        server.clear(d)
        total = sum(waits.values()) or 1
        # Threads idle in accept/poll are not the streams: listed anyway, for the whole picture.
        print(f"{binary}: K = {k} x {mib} MiB into {d}, {pressure:g} GiB in tmpfs: wall {wall:.2f} s")
        for w, n in waits.most_common(12):
            print(f"  {100 * n / total:5.1f} %  {w}")
        print(f"  peak nr_dirty {peak['nr_dirty'] * 4 / 1024:.0f} MiB, nr_writeback "
              f"{peak['nr_writeback'] * 4 / 1024:.0f} MiB, nr_dirty_threshold "
              f"{peak['nr_dirty_threshold'] * 4 / 1024:.0f} MiB")
    finally:
        if pressure and os.path.exists(ballast):
            os.unlink(ballast)


if __name__ == "__main__":
    main()
