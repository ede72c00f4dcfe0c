"""The Python consumer of ``peercache-bench --frontend python`` (and of the
suite's front-end comparison).

It drives PeerCache exactly as SGLang's cache controller does: a
``PeerCacheStore`` with a registered host pool, and ``batch_get_v1`` /
``batch_set_v1`` / ``batch_exists`` called from Python threads with a
host-index array per call. The host pool is a plain buffer laid out like
SGLang's page-first pools (MLA: one object per page; MHA: a K and a V region),
so neither torch nor SGLang is needed.

    python -m peercache.bench_driver '<json spec>'

prints one JSON line: pages, hits, bytes, elapsed_s and the per-call
latencies (µs) of the measured window. Started by ``peercache-bench``; not a
user command.
"""

import ctypes
import json
import sys
import threading
import time
from array import array

from peercache.store import PeerCacheStore


class BenchHostPool:
    """A page-first host pool: ``pages`` pages of ``page_size`` tokens; each
    page is one object (MLA) or a K and a V object in two regions (MHA)."""

    # Page pointers are base + index * stride: PeerCacheStore may compute
    # them in Rust (as for SGLang's MHA/MLA host pools).
    peercache_affine_pages = True

    def __init__(self, pages, tokens_per_page, page_bytes, layout):
        self.page_size = tokens_per_page
        self.size = pages * tokens_per_page
        self.layout = "page_first"
        self.objects = 1 if layout == "mla" else 2
        self.object_bytes = page_bytes // self.objects
        self.buffer = bytearray(pages * page_bytes)
        self._view = (ctypes.c_char * len(self.buffer)).from_buffer(self.buffer)
        self.base = ctypes.addressof(self._view)
        self.region = pages * self.object_bytes  # V region starts here (MHA)

    def get_page_buffer_meta(self, indices):
        ptrs, sizes = [], []
        for i in range(0, len(indices), self.page_size):
            page = int(indices[i]) // self.page_size
            for c in range(self.objects):
                ptrs.append(self.base + c * self.region + page * self.object_bytes)
                sizes.append(self.object_bytes)
        return ptrs, sizes


def main():
    spec = json.loads(sys.argv[1])
    threads, batch = spec["threads"], spec["batch"]
    tpp, page_bytes = spec["tokens_per_page"], spec["page_size"]
    # Each thread owns a region of the host pool (the working set's size, at
    # most 64 MiB) and moves through it batch by batch, so destinations are
    # cold in cache as in SGLang's host pool (same rule as the Rust consumer).
    region = max(batch, min(spec["working_set"], (64 << 20) // page_bytes) // batch * batch)
    slots = region // batch
    pool = BenchHostPool(threads * region, tpp, page_bytes, spec["layout"])
    config = {
        "discovery_addr": spec["discovery_addr"],
        "local_hostname": spec["local_host"],
        "control_bind_host": spec["local_host"],
        "model_name": spec["model_name"],
        "is_mla_model": spec["layout"] == "mla",
        "protocol": spec.get("protocol", "tcp"),
        # An RDMA run never silently measures the TCP fallback.
        "require_rdma": spec.get("protocol") == "rdma",
        "global_segment_size": spec["working_set"] * page_bytes * 2 + (64 << 20),
        "shards": spec["shards"],
        "max_channels_per_peer": spec["max_channels"],
        "directory_replicas": spec["replicas"],
        "directory_read_cache_ttl": spec["dir_cache_ttl"],
        "heartbeat_interval": 0.5,
        "member_ttl": 3,
        "interface_v1": 1,
        "disk_enabled": False,
        "metrics_enabled": False,
    }
    if spec.get("device_name"):
        config["device_name"] = spec["device_name"]
    if spec.get("device_names"):
        config["device_names"] = spec["device_names"]
    store = PeerCacheStore(None, config)
    store.register_mem_pool_host(pool)
    ws = spec["working_set"]
    keys = ["hc-%d" % i for i in range(ws)]
    deadline = time.monotonic() + 60
    # In chunks: one call is limited to 65,536 objects.
    while any(store.batch_exists(keys[i : i + 8192]) < len(keys[i : i + 8192]) for i in range(0, ws, 8192)):
        if time.monotonic() > deadline:
            sys.exit("bench_driver: the producer's working set never appeared")
        time.sleep(0.05)

    op = spec["op"]
    measuring = threading.Event()
    stop = threading.Event()
    totals = {"pages": 0, "hits": 0, "latencies": []}
    lock = threading.Lock()

    def worker(t):
        first_page = t * region
        indices = [
            array("q", range((first_page + k * batch) * tpp, (first_page + (k + 1) * batch) * tpp))
            for k in range(slots)
        ]
        lat, pages, hits, n = [], 0, 0, 0
        while not stop.is_set():
            first = (n * batch + t * 7919) % (ws - batch + 1)
            n += 1
            names = keys[first : first + batch]
            t0 = time.perf_counter()
            dst = indices[n % slots]
            if op == "get":
                got = sum(store.batch_get_v1(names, dst))
            elif op == "set":
                fresh = ["set-py-%d-%d-%d" % (t, n, i) for i in range(batch)]
                t0 = time.perf_counter()
                got = sum(store.batch_set_v1(fresh, dst))
            else:
                got = store.batch_exists(names)
            dt = time.perf_counter() - t0
            if measuring.is_set():
                lat.append(dt * 1e6)
                pages += batch
                hits += got
        with lock:
            totals["pages"] += pages
            totals["hits"] += hits
            totals["latencies"].extend(lat)

    workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    time.sleep(spec["warmup"])
    measuring.set()
    t0 = time.perf_counter()
    time.sleep(spec["duration"])
    measuring.clear()
    elapsed = time.perf_counter() - t0
    stop.set()
    for w in workers:
        w.join()
    store.close()
    moved = totals["hits"] * page_bytes if op in ("get", "set") else 0
    print(
        json.dumps(
            {
                "pages": totals["pages"],
                "hits": totals["hits"],
                "bytes": moved,
                "elapsed_s": elapsed,
                "latencies_us": [round(x, 1) for x in totals["latencies"]],
            }
        )
    )


if __name__ == "__main__":
    main()
