"""Measures how long one batch_get holds the GIL (a measurement, not a test).

A batch_get of 32 pages x 128 KiB, repeated. The GIL-held time of a call is its
wall time seen from Python (argument conversion, the call itself, building the
result list) minus the time the native module reports having run with the GIL
released (`Node._last_detached_ns`, measured in Rust around the engine call).

    python tests/python/measure_gil_hold.py [--pages 32] [--page-kib 128] [--repeat 500]
"""

import argparse
import ctypes
import json
import os
import statistics
import time

import peercache


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=32)
    ap.add_argument("--page-kib", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=500)
    args = ap.parse_args()

    size = args.page_kib * 1024
    node = peercache.Node(
        json.dumps(
            {
                "discovery_addr": "127.0.0.1:31998",
                "global_segment_size": "256mb",
                "shards": 2,
                "disk_enabled": False,
                "metrics_enabled": False,
            }
        )
    )
    # SGLang-like keys: a 64-hex-digit page hash plus a rank suffix.
    keys = [f"{os.urandom(32).hex()}_0_k" for _ in range(args.pages)]
    src = [bytearray(os.urandom(size)) for _ in range(args.pages)]
    dst = [bytearray(size) for _ in range(args.pages)]
    views = [(ctypes.c_char * size).from_buffer(b) for b in src + dst]
    src_ptrs = [ctypes.addressof(v) for v in views[: args.pages]]
    dst_ptrs = [ctypes.addressof(v) for v in views[args.pages :]]
    lens = [size] * args.pages
    assert all(node.batch_set(keys, src_ptrs, lens))

    held, detached = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter_ns()
        ok = node.batch_get(keys, dst_ptrs, lens)
        t1 = time.perf_counter_ns()
        d = node._last_detached_ns
        assert all(ok)
        held.append(t1 - t0 - d)
        detached.append(d)
    assert dst == src
    node.close()

    def us(ns):
        return f"{ns / 1000:.1f} us"

    print(f"batch_get of {args.pages} pages x {args.page_kib} KiB, {args.repeat} calls")
    print(
        f"GIL held per call: median {us(statistics.median(held))}, "
        f"p90 {us(sorted(held)[len(held) * 9 // 10])}, min {us(min(held))}"
    )
    print(
        f"GIL released per call: median {us(statistics.median(detached))} "
        f"(the engine call, {args.pages * size / statistics.median(detached):.2f} GB/s)"
    )


if __name__ == "__main__":
    main()
