"""Measures how long one batch call holds the GIL (a measurement, not a test).

Two modes:
- default: the native `Node.batch_get` of 32 pages x 128 KiB (pointer lists);
- `--store`: `PeerCacheStore.batch_get_v1` of 32 pages, exactly as SGLang's
  cache controller calls it, on a real SGLang MHA page-first host pool whose
  K and V buffers are 128 KiB per page (needs SGLang and torch).

The GIL-held time of a call is its wall time seen from Python (argument
conversion, the call itself, building the result list) minus the time the
native module reports having run with the GIL released
(`Node._last_detached_ns`, measured in Rust around the engine call).

    python tests/python/measure_gil_hold.py [--store] [--pages 32] [--page-kib 128] [--repeat 500]
        [--shards 2] [--caller-cpu C]
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
    ap.add_argument("--shards", type=int, default=2, help="shard threads of the node")
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


def measure_store(args):
    import socket

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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
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
    held, detached = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter_ns()
        ok = store.batch_get_v1(keys, dst)
        t1 = time.perf_counter_ns()
        d = node._last_detached_ns
        assert all(ok)
        held.append(t1 - t0 - d)
        detached.append(d)
    bits = pool.kv_buffer.view(torch.int16)  # compare bits: random bf16 may be NaN
    assert torch.equal(bits[:, : args.pages * page], bits[:, args.pages * page : 2 * args.pages * page])
    store.close()
    page_bytes = 2 * layers * page * heads * head_dim * 2
    print(
        f"PeerCacheStore.batch_get_v1 of {args.pages} pages (K+V {page_bytes // 1024} KiB each), "
        f"{args.repeat} calls, {args.shards} shard(s), caller on CPU {args.caller_cpu if args.caller_cpu is not None else 'any'}"
    )
    print(
        f"GIL held per call: median {statistics.median(held) / 1000:.1f} us, "
        f"p90 {sorted(held)[len(held) * 9 // 10] / 1000:.1f} us, min {min(held) / 1000:.1f} us"
    )
    print(
        f"GIL released per call: median {statistics.median(detached) / 1000:.1f} us "
        f"({args.pages * page_bytes / statistics.median(detached):.2f} GB/s)"
    )


if __name__ == "__main__":
    main()
