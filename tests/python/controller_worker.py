"""Drives SGLang's real ``HiCacheController`` with PeerCacheStore as its L3.

Two uses:

- helpers imported by ``test_sglang_controller.py`` (the writer side runs in
  the pytest process);
- a worker script for the reader side, started as a separate process::

      python controller_worker.py ARGS.json RESULT.json

  ARGS.json holds ``discovery_addr``, ``interface_v1``, ``layout``,
  ``token_ids``, ``skip_pages``, ``timeout`` and the ``ready_path`` /
  ``go_path`` handshake files. The worker starts its own PeerCache node
  (joining the cluster at ``discovery_addr``) inside a HiCacheController,
  waits until it sees the other member, writes ``ready_path``, waits for
  ``go_path`` (the writer has seen it too), prefetches ``token_ids`` through
  the controller's own threads and writes RESULT.json: the storage hit count,
  the completed tokens, the hex bytes of every prefetched page as it landed in
  its host pool, and the node counters. Every wait is bounded by ``timeout``.

Only the host pool is real memory here: SGLang's device<->host kernels are
CUDA-only, so pages are written straight into the host pool (see
/work/shared/sglang-cpu/README.md).
"""

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from queue import Empty

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from ports import free_port  # noqa: E402  (after the path; re-exported to the tests)

# One extension cache shared by the pytest process and the worker, outside the
# repository: the controller JIT-builds its hash extension there once.
os.environ.setdefault(
    "TORCH_EXTENSIONS_DIR", os.path.join(tempfile.gettempdir(), "peercache-torch-ext")
)

# The JIT build runs `ninja`, which a venv installs next to its python: make it
# findable when the venv is not activated (python invoked by path).
if shutil.which("ninja") is None:
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
HAVE_NINJA = shutil.which("ninja") is not None

# Everything a node binds or advertises stays on loopback.
LOOPBACK = {
    "local_hostname": "127.0.0.1",
    "meta_bind_host": "127.0.0.1",
    "control_bind_host": "127.0.0.1",
    "protocol": "tcp",
}


def extra_config(discovery_addr, interface_v1, local_rank=0):
    """The ``--hicache-storage-backend-extra-config`` object of one node.
    ``local_rank`` differs per process on this host, so that the nodes' shard
    threads are pinned to different cores."""
    config = {
        "backend_name": "peercache",
        "module_path": "peercache.store",
        "class_name": "PeerCacheStore",
        "discovery_addr": discovery_addr,
        "global_segment_size": "64mb",
        "shards": 1,
        "metrics_enabled": False,
        "disk_enabled": False,
        "interface_v1": interface_v1,
        "local_rank": local_rank,
    }
    config.update(LOOPBACK)
    return config


def make_controller(extra, layout="page_first"):
    """``(device_pool, host_pool, controller)``: a real HiCacheController over a
    CPU paged allocator and an MHA host pool, storage_backend "dynamic"."""
    import torch
    from sglang.srt.managers.cache_controller import HiCacheController
    from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator

    import sglang_pools as sp

    sp.setup_sglang_runtime()
    dev, host = sp.host_pool("mha", layout)
    allocator = PagedTokenToKVPoolAllocator(
        sp.DEVICE_TOKENS, sp.PAGE, torch.bfloat16, "cpu", dev, need_sort=False
    )
    controller = HiCacheController(
        allocator,
        host,
        sp.PAGE,
        tp_group=None,
        load_cache_event=threading.Event(),
        storage_backend="dynamic",
        prefetch_threshold=sp.PAGE,
        storage_backend_extra_config=dict(extra),
    )
    return dev, host, controller


def fill_host_pages(host, host_indices, seed):
    """Writes distinct random bytes into each page of ``host_indices``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    page = host.page_size
    for i in range(0, len(host_indices), page):
        index = int(host_indices[i])
        flat = host.get_data_page(index, flat=True)
        data = torch.randint(-1000, 1000, flat.shape, generator=gen).to(flat.dtype)
        host.set_from_flat_data_page(index, data)


def host_page_bytes(host, host_indices):
    """The raw bytes of each page of ``host_indices``, in order."""
    import torch

    page = host.page_size
    out = []
    for i in range(0, len(host_indices), page):
        flat = host.get_data_page(int(host_indices[i]), flat=True).contiguous()
        out.append(flat.view(torch.uint8).numpy().tobytes())
    return out


def storage_hashes(token_ids, page_size):
    """The page keys SGLang derives for ``token_ids`` (no prior hash)."""
    from sglang.srt.mem_cache.utils import get_storage_hash_str

    return get_storage_hash_str(list(token_ids), None, page_size=page_size)


def backup(controller, host_indices, token_ids, hashes, timeout):
    """``write_storage`` and wait (bounded) for the backup thread's ack."""
    op_id = controller.write_storage(host_indices, list(token_ids), hash_value=list(hashes))
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("backup of op %d not acknowledged in %.0f s" % (op_id, timeout))
        try:
            op = controller.ack_backup_queue.get(timeout=min(left, 1.0))
        except Empty:
            continue
        if op.id == op_id:
            return op


def prefetch(controller, rid, token_ids, timeout):
    """Drives one prefetch the way SGLang's radix cache does, bounded by
    ``timeout``: ``prefetch`` -> the prefetch thread's ``batch_exists`` query
    (op on ``prefetch_hit_queue``) -> allocate host indices for the hit ->
    ``prefetch_buffer.put`` -> the io thread's ``batch_get_v1``/``batch_get``
    -> acks on ``ack_prefetch_queue`` until ``completed_req``.

    Returns ``(operation, host_indices or None, completed_tokens)``."""
    deadline = time.monotonic() + timeout

    def get(queue, what):
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("prefetch %s: no %s within %.0f s" % (rid, what, timeout))
            try:
                return queue.get(timeout=min(left, 1.0))
            except Empty:
                continue

    operation = controller.prefetch(rid, list(token_ids))
    while True:
        hit = get(controller.prefetch_hit_queue, "storage hit query")
        if hit is operation:
            break
    hit_tokens = operation.storage_hit_count
    if hit_tokens == 0:
        return operation, None, 0
    host_indices = controller.mem_pool_host.alloc(hit_tokens)
    if host_indices is None:
        raise RuntimeError("host pool cannot hold %d prefetched tokens" % hit_tokens)
    operation.host_indices = host_indices
    controller.prefetch_buffer.put(operation)
    completed = 0
    while True:
        ack = get(controller.ack_prefetch_queue, "completion ack")
        if ack.operation is not operation:
            continue
        if ack.completed_tokens is not None:
            completed = ack.completed_tokens
        if ack.completed_req:
            return operation, host_indices, completed


SPIED = ("batch_exists", "batch_set", "batch_set_v1", "batch_get", "batch_get_v1")


def spy_calls(store):
    """Records the names of the storage calls the controller makes on ``store``
    (instance attributes wrapping the bound methods); returns the list."""
    calls = []

    def wrap(name):
        method = getattr(store, name)

        def wrapper(*args, **kwargs):
            calls.append(name)
            return method(*args, **kwargs)

        return wrapper

    for name in SPIED:
        setattr(store, name, wrap(name))
    return calls


def wait_for(predicate, timeout, what, interval=0.05):
    """Polls ``predicate`` until true; TimeoutError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("%s: not within %.0f s" % (what, timeout))
        time.sleep(interval)


def close(controller):
    """Stops the storage threads and closes the PeerCacheStore node."""
    controller.detach_storage_backend()


def _reader(args):
    import torch  # noqa: F401  (imported before sglang, as SGLang does)

    _, host, controller = make_controller(
        extra_config(args["discovery_addr"], args["interface_v1"], local_rank=1), args["layout"]
    )
    store = controller.storage_backend
    calls = spy_calls(store)
    try:
        # Occupy the first pages so this pool's destination indices differ
        # from the writer's source indices.
        controller.mem_pool_host.alloc(args.get("skip_pages", 0) * host.page_size)
        timeout = args["timeout"]
        wait_for(lambda: store.node.members >= 2, timeout, "reader sees the writer")
        with open(args["ready_path"], "w") as f:
            json.dump({"node_id": store.node.node_id, "members": int(store.node.members)}, f)
        wait_for(lambda: os.path.exists(args["go_path"]), timeout, "go from the writer")
        operation, host_indices, completed = prefetch(controller, "reader-0", args["token_ids"], timeout)
        pages = [] if host_indices is None else host_page_bytes(host, host_indices)
        return {
            "store_class": "%s.%s" % (type(store).__module__, type(store).__qualname__),
            "storage_hit_count": operation.storage_hit_count,
            "hash_value": list(operation.hash_value),
            "completed_tokens": completed,
            "host_indices": [] if host_indices is None else [int(i) for i in host_indices],
            "pages": [p.hex() for p in pages],
            "node_stats": {k: int(v) for k, v in store.node_stats().items()},
            "members": int(store.node.members),
            "calls": sorted(set(calls)),
        }
    finally:
        close(controller)


def main(argv):
    with open(argv[1]) as f:
        args = json.load(f)
    result = _reader(args)
    tmp = argv[2] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
