"""Measures how long one batch call holds the GIL (a measurement, not a test).

Three modes:
- default: the native `Node.batch_get` of 32 pages x 128 KiB (pointer lists);
- `--store`: `PeerCacheStore.batch_get_v1` of 32 pages, exactly as SGLang's
  cache controller calls it, on a real SGLang MHA page-first host pool whose
  K and V buffers are 128 KiB per page (needs SGLang and torch);
- `--control`: no PeerCache at all, only the Python work `batch_get_v1`
  does with the GIL held (the index tensor's checks, the key join, the result
  list), timed the same way: the floor the machine itself sets (needs torch).

The GIL-held time of a call is its wall time seen from Python (argument
conversion, the call itself, building the result list) minus the time the
native module reports having run with the GIL released
(`Node._last_detached_span`, taken in Rust around the engine call). It is
reported whole and split into before the release and after the GIL is taken
back.

    python tests/python/measure_gil_hold.py [--store] [--pages 32] [--page-kib 128] [--repeat 500]
        [--shards 2] [--caller-cpu C] [--idle-us 0] [--control]

`--idle-us N` sleeps N µs before each call (outside the timed part), as
SGLang's prefetch thread waits for work between calls: it shows what an idle
period alone does to the GIL-held time that follows.
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
    ap.add_argument("--store", action="store_true", help="measure PeerCacheStore.batch_get_v1")
    ap.add_argument(
        "--control", action="store_true",
        help="time batch_get_v1's own Python work with no PeerCache call (the machine's floor)",
    )
    ap.add_argument("--shards", type=int, default=2, help="shard threads of the node")
    ap.add_argument(
        "--idle-us", type=int, default=0,
        help="sleep this long before each call (not timed), as a thread that waits for work",
    )
    ap.add_argument("--wait-spin-us", type=int, default=0, help="batch_wait_spin_us of the node")
    ap.add_argument(
        "--caller-cpu", type=int, default=None,
        help="pin the calling thread to this CPU (the shards pin themselves from CPU 0 up), "
        "as on a host where the shards have cores of their own",
    )
    args = ap.parse_args()
    if args.caller_cpu is not None:
        os.sched_setaffinity(0, {args.caller_cpu})
    if args.store:
        return measure_store(args)
    if args.control:
        return measure_control(args)

    size = args.page_kib * 1024
    node = peercache.Node(
        json.dumps(
            {
                "discovery_addr": "127.0.0.1:31998",
                "global_segment_size": "256mb",
                "shards": args.shards,
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

    timing = timed_calls(lambda: node.batch_get(keys, dst_ptrs, lens), node, args)
    assert dst == src
    node.close()
    print(f"batch_get of {args.pages} pages x {args.page_kib} KiB, {args.repeat} calls, idle {args.idle_us} us before each")
    report(timing, args.pages * size)


def timed_calls(call, node, args):
    """Runs `call` `args.repeat` times; per call, ns with the GIL held before
    the native code released it, after it took it back, and released."""
    before, after, detached = [], [], []
    idle_s = args.idle_us / 1e6
    for _ in range(args.repeat):
        if idle_s:
            time.sleep(idle_s)
        # time.time_ns: the clock of Node._last_detached_span.
        t0 = time.time_ns()
        ok = call()
        t1 = time.time_ns()
        start, end = node._last_detached_span
        assert all(ok)
        before.append(start - t0)
        after.append(t1 - end)
        detached.append(end - start)
    return before, after, detached


def report(timing, call_bytes):
    before, after, detached = timing
    held = [b + a for b, a in zip(before, after)]

    def us(ns):
        return f"{ns / 1000:.1f} us"

    def p90(xs):
        return sorted(xs)[len(xs) * 9 // 10]

    print(
        f"GIL held per call: median {us(statistics.median(held))}, "
        f"p90 {us(p90(held))}, min {us(min(held))} "
        f"(before release: median {us(statistics.median(before))}, "
        f"after: median {us(statistics.median(after))})"
    )
    print(
        f"GIL released per call: median {us(statistics.median(detached))} "
        f"(the engine call, {call_bytes / statistics.median(detached):.2f} GB/s)"
    )


def measure_store(args):
    from ports import free_port

    import torch
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool
    from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost

    from peercache.store import PeerCacheStore

    # K of one page = layers x page x heads x head_dim x 2 bytes = page_kib KiB.
    layers, heads, head_dim, page = 8, 2, 64, args.page_kib // 2
    device_tokens = args.pages * page
    dev = MHATokenToKVPool(
        device_tokens, page, torch.bfloat16, heads, head_dim, layers,
        device="cpu", enable_memory_saver=False, enable_alt_stream=False,
    )
    pool = MHATokenToKVPoolHost(
        dev.get_device_pool_infos()[0].buffer_info, 2.0, 0, page, "page_first",
        pin_memory=False, device="cpu", device_capacity_tokens=device_tokens,
        start_layer=0, end_layer=layers - 1,
    )
    port = free_port()
    config = HiCacheStorageConfig(
        tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
        is_mla_model=False, enable_storage_metrics=True, is_page_first_layout=True,
        model_name="gil", extra_config={
            "discovery_addr": f"127.0.0.1:{port}", "global_segment_size": "256mb",
            "shards": args.shards, "batch_wait_spin_us": args.wait_spin_us, "disk_enabled": False, "metrics_enabled": False, "interface_v1": 1,
        },
    )
    store = PeerCacheStore(config, {})
    store.register_mem_pool_host(pool)
    keys = [os.urandom(32).hex() for _ in range(args.pages)]
    src = torch.arange(0, args.pages * page, dtype=torch.int64)
    dst = torch.arange(args.pages * page, 2 * args.pages * page, dtype=torch.int64)
    pool.kv_buffer.view(torch.int16)[:, : args.pages * page].random_()
    assert all(store.batch_set_v1(keys, src))
    node = store.node
    timing = timed_calls(lambda: store.batch_get_v1(keys, dst), node, args)
    bits = pool.kv_buffer.view(torch.int16)  # compare bits: random bf16 may be NaN
    assert torch.equal(bits[:, : args.pages * page], bits[:, args.pages * page : 2 * args.pages * page])
    huge_kib = _anon_huge_kib()
    store.close()
    page_bytes = 2 * layers * page * heads * head_dim * 2
    print(
        f"PeerCacheStore.batch_get_v1 of {args.pages} pages (K+V {page_bytes // 1024} KiB each), "
        f"{args.repeat} calls, {args.shards} shard(s), caller on CPU {args.caller_cpu if args.caller_cpu is not None else 'any'}, "
        f"idle {args.idle_us} us before each"
    )
    report(timing, args.pages * page_bytes)
    print(f"anonymous memory on transparent huge pages: {huge_kib // 1024} MiB")


def measure_control(args):
    import torch

    keys = [os.urandom(32).hex() for _ in range(args.pages)]
    indices = torch.arange(0, args.pages * 64, dtype=torch.int64)
    idle_s = args.idle_us / 1e6
    held = []
    for _ in range(args.repeat):
        if idle_s:
            time.sleep(idle_s)
        t0 = time.time_ns()
        usable = (
            type(indices) is torch.Tensor
            and indices.dtype is torch.int64
            and indices.is_contiguous()
            and indices.is_cpu
        )
        blob = "\0".join(keys).encode()
        address, count = indices.data_ptr(), indices.numel()
        result = [usable] * args.pages
        held.append(time.time_ns() - t0)
    assert blob and address and count and all(result)
    print(
        f"control: batch_get_v1's Python work for {args.pages} keys, no PeerCache call, "
        f"{args.repeat} times, idle {args.idle_us} us before each"
    )
    print(
        f"held: median {statistics.median(held) / 1000:.1f} us, "
        f"p90 {sorted(held)[len(held) * 9 // 10] / 1000:.1f} us, min {min(held) / 1000:.1f} us"
    )


def _anon_huge_kib():
    """AnonHugePages of this process: whether the pool and host buffer got 2 MiB pages."""
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    return 0


if __name__ == "__main__":
    main()
