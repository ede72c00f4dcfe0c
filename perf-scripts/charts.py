#!/usr/bin/env python3
"""PNG charts from peercache-bench result files.

For every hicache-*.json given (or found under peercache-bench-results/), one
PNG beside it: throughput (GB/s; pages/s for exists) and p50/p99 latency per
batch call against concurrency, one line per (op, front end), the PEAK rows
marked, and the same-run references (raw TCP, memcpy) as horizontal lines.

    python3 perf-scripts/charts.py [result.json ...]

Needs matplotlib (perf-scripts/charts.sh installs it into a venv).
"""

import glob
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def chart(path):
    data = json.load(open(path))
    rows = data.get("results", [])
    series = {}
    for r in rows:
        if r["batch"] == 1 and data["mode"] != "latency":
            continue
        series.setdefault((r["op"], r["frontend"]), []).append(r)
    if not series:
        return None
    fig, (thr, lat) = plt.subplots(1, 2, figsize=(12, 4.5))
    for (op, fe), pts in sorted(series.items()):
        pts.sort(key=lambda r: r["concurrency"])
        xs = [r["concurrency"] for r in pts]
        label = f"{op} ({fe})"
        if op == "exists":
            thr.plot(xs, [r["pages_per_s"] / 1e6 for r in pts], "o--", label=f"{label}, M pages/s")
        else:
            thr.plot(xs, [r["gbps"] for r in pts], "o-", label=f"{label}, GB/s")
        lat.plot(xs, [r["p50_us"] for r in pts], "o-", label=f"{label} p50")
        lat.plot(xs, [r["p99_us"] for r in pts], "x:", label=f"{label} p99")
    refs = data.get("references", {})
    for name, style in [("raw_tcp_gbps", "k--"), ("memcpy_gbps", "k:")]:
        if isinstance(refs.get(name), (int, float)):
            thr.axhline(refs[name], linestyle=style[1:], color="k", label=f"{name.replace('_gbps', '')} (same run)")
    for r in data.get("peak", []):
        value = r["pages_per_s"] / 1e6 if r["op"] == "exists" else r["gbps"]
        thr.annotate("PEAK", (r["concurrency"], value), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    meta = data["meta"]
    fig.suptitle(
        f"peercache-bench {data['mode']} ({data['tag']}): {meta['protocol']}, {meta['layout']}, "
        f"page {meta['page_size'] // 1024} KiB, batch {meta['batch_size']}, {data['host']['cpus']} cpus"
    )
    thr.set_xlabel("concurrency (threads)")
    thr.set_ylabel("throughput")
    thr.set_xscale("log", base=2)
    thr.legend(fontsize=7)
    lat.set_xlabel("concurrency (threads)")
    lat.set_ylabel("µs per batch call")
    lat.set_xscale("log", base=2)
    lat.set_yscale("log")
    lat.legend(fontsize=7)
    fig.tight_layout()
    out = os.path.splitext(path)[0] + ".png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main():
    paths = sys.argv[1:] or sorted(glob.glob("peercache-bench-results/**/hicache-*.json", recursive=True))
    if not paths:
        sys.exit("no hicache-*.json result files given or found under peercache-bench-results/")
    for p in paths:
        out = chart(p)
        print(f"{p} -> {out or 'nothing to plot'}")


if __name__ == "__main__":
    main()
