#!/usr/bin/env python3
"""The server soak's samples as a plot: the receiver's RSS, threads and open descriptors
against the transfers started, from the CSV that `TEECAST_SERVER_SOAK_SAMPLES=FILE` makes the
soak write (crates/cli/tests/server_soak.rs).

    python3 bench/soak_plot.py soak.csv bench/soak.svg
"""

import csv
import sys

W, H = 640, 420
LEFT, RIGHT = 60, 20
PANELS = [("rss_kib", "receiver RSS (MiB)", 1 / 1024, "#c0504d"),
          ("threads", "threads", 1, "#4f81bd"),
          ("fds", "open descriptors", 1, "#9bbb59")]


def main():
    src, out = sys.argv[1], sys.argv[2]
    with open(src) as f:
        rows = list(csv.DictReader(f))
    xs = [int(r["transfers"]) for r in rows]
    xmax = max(xs) or 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
             'font-family="sans-serif" font-size="11">',
             f'<text x="{LEFT}" y="14">the receiver during the soak, sampled every 250 ms, '
             f'against transfers started (to {xmax})</text>']
    ph = (H - 60) / len(PANELS)
    for i, (key, label, scale, colour) in enumerate(PANELS):
        top = 30 + i * ph
        bottom = top + ph - 24
        ys = [float(r[key]) * scale for r in rows]
        ymax = max(ys) * 1.1 or 1
        parts.append(f'<text x="{LEFT}" y="{top + 8:.1f}">{label}: '
                     f'{min(ys):.0f}–{max(ys):.0f}</text>')
        parts.append(f'<line x1="{LEFT}" y1="{bottom:.1f}" x2="{W - RIGHT}" y2="{bottom:.1f}" '
                     'stroke="#888"/>')
        parts.append(f'<text x="4" y="{bottom:.1f}">0</text>')
        parts.append(f'<text x="4" y="{top + 20:.1f}">{ymax:.0f}</text>')
        pts = " ".join(
            f"{LEFT + (x / xmax) * (W - LEFT - RIGHT):.1f},"
            f"{bottom - (y / ymax) * (bottom - top - 14):.1f}"
            for x, y in zip(xs, ys))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1" points="{pts}"/>')
    parts.append(f'<text x="{W - RIGHT - 60}" y="{H - 6}">transfers</text>')
    parts.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
