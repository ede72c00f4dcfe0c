"""One PeerCacheStore in its own process, driven by the tests over a pipe.

Each worker is a separate OS process (``multiprocessing`` "spawn"), so a
cluster of workers is a cluster of real PeerCache nodes talking TCP on
127.0.0.1, exactly as separate SGLang ranks or hosts would. The worker owns a
real SGLang host pool (``sglang_pools``) registered with its store; tests send
it commands by name and get plain data back (page contents as bytes), so
byte-exactness is checked in the test process.
"""

import hashlib
import multiprocessing
import traceback


class WorkerError(RuntimeError):
    """A command raised inside the worker (the message carries its traceback)."""


class StoreWorker:
    """Test-side handle of a worker process."""

    def __init__(self, config, kind="mha", layout="page_first", rank=None, model="test-model"):
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_serve, args=(child, config, kind, layout, rank or {}, model), daemon=True
        )
        self._proc.start()
        child.close()
        self.call("ready", timeout=120)

    def call(self, name, *args, timeout=60):
        self._conn.send((name, args))
        if not self._conn.poll(timeout):
            raise TimeoutError(f"worker command {name!r} did not answer in {timeout} s")
        status, value = self._conn.recv()
        if status != "ok":
            raise WorkerError(value)
        return value

    def kill(self):
        """SIGKILL: the node gets no chance to deregister or close a connection."""
        self._proc.kill()
        self._proc.join(10)

    def close(self):
        if self._proc.is_alive():
            try:
                self.call("quit", timeout=30)
            except Exception:
                pass
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(10)


def _serve(conn, config, kind, layout, rank, model):
    state = {}
    try:
        _setup(state, config, kind, layout, rank, model)
        setup_error = None
    except Exception:
        setup_error = traceback.format_exc()
    while True:
        try:
            name, args = conn.recv()
        except EOFError:
            break
        if name == "quit":
            for _, _, store in state.get("alternates", {}).values():
                store.close()
            conn.send(("ok", None))
            break
        if setup_error is not None:
            conn.send(("err", setup_error))
            continue
        try:
            conn.send(("ok", COMMANDS[name](state, *args)))
        except Exception:
            conn.send(("err", traceback.format_exc()))


def _setup(state, config, kind, layout, rank, model):
    import torch  # noqa: F401  (imported before peercache uses tensors)

    import sglang_pools as sp

    sp.setup_sglang_runtime()
    state["sp"] = sp
    state["args"] = (config, rank, model)
    state["alternates"] = {}
    state["device_pool"], state["pool"], state["store"] = _make_store(state, kind, layout)
    state["alternates"]["main"] = (state["device_pool"], state["pool"], state["store"])


def _make_store(state, kind, layout):
    """A real host pool of `kind`/`layout` and a PeerCacheStore (its own node)."""
    from peercache.store import PeerCacheStore
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig

    config, rank, model = state["args"]
    storage_config = HiCacheStorageConfig(
        tp_rank=rank.get("tp_rank", 0),
        tp_size=rank.get("tp_size", 1),
        pp_rank=0,
        pp_size=1,
        attn_cp_rank=0,
        attn_cp_size=1,
        is_mla_model=(kind == "mla"),
        enable_storage_metrics=True,
        is_page_first_layout=layout != "layer_first",
        model_name=model,
        extra_config=dict(config),
    )
    device_pool, pool = state["sp"].host_pool(kind, layout)
    return device_pool, pool, PeerCacheStore(storage_config, {})


def _indices(state, pages):
    import torch

    page = state["pool"].page_size
    return torch.cat([torch.arange(p * page, (p + 1) * page, dtype=torch.int64) for p in pages])


# --- commands ------------------------------------------------------------------


def ready(state):
    return True


def register(state, how="v1", name="kv"):
    """Registers the host pool with the store: "v1", "v2" (under `name`) or "both"."""
    from sglang.srt.mem_cache.hicache_storage import PoolName

    store, pool = state["store"], state["pool"]
    if how in ("v1", "both"):
        store.register_mem_pool_host(pool)
    if how in ("v2", "both"):
        store.register_mem_host_pool_v2(pool, PoolName(name))
    return True


class ListedPool:
    """A real host pool seen through a class PeerCacheStore does not know
    (as SGLang's Mamba or indexer pools are): it lists its page pointers on
    every call instead of having them computed."""

    def __init__(self, pool):
        self._pool = pool

    def __getattr__(self, name):
        return getattr(self._pool, name)


def register_extra(state, name, kind="mha", layout="page_first", listed=False):
    """Registers a second real host pool as the v2 pool `name` (`listed`:
    behind a class the store does not know)."""
    from sglang.srt.mem_cache.hicache_storage import PoolName

    dev, pool = state["sp"].host_pool(kind, layout)
    state.setdefault("extra", {})[name] = (dev, pool)
    state["store"].register_mem_host_pool_v2(ListedPool(pool) if listed else pool, PoolName(name))
    return True


def use(state, name, kind="mha", layout="page_first"):
    """Makes store `name` current, first creating it (another node in this
    process, with its own host pool of `kind`/`layout`) if needed."""
    if name not in state["alternates"]:
        state["alternates"][name] = _make_store(state, kind, layout)
    state["device_pool"], state["pool"], state["store"] = state["alternates"][name]
    return state["store"].node.node_id


def drop(state, name):
    """Closes and forgets store `name` (never the current one)."""
    _, _, store = state["alternates"].pop(name)
    assert store is not state["store"], "drop the current store: use another first"
    store.close()
    return True


def _pool(state, name=None):
    return state["pool"] if name in (None, "kv") else state["extra"][name][1]


def fill(state, pages, seed, pool=None):
    """Writes random bytes into host pages; returns their contents."""
    p = _pool(state, pool)
    state["sp"].fill_pages(p, pages, seed)
    return page_contents(state, pages, pool)


def page_contents(state, pages, pool=None):
    p = _pool(state, pool)
    return [
        state["sp"].page_bytes(p, i).view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes()
        for i in pages
    ]


def zero(state, pages, pool=None):
    import torch

    p = _pool(state, pool)
    for i in pages:
        flat = p.get_data_page(i * p.page_size, flat=True)
        p.set_from_flat_data_page(i * p.page_size, torch.zeros_like(flat))
    return True


def set_v1(state, keys, pages):
    return state["store"].batch_set_v1(keys, _indices(state, pages))


def get_v1(state, keys, pages):
    return state["store"].batch_get_v1(keys, _indices(state, pages))


def get_v1_raw_indices(state, keys, indices):
    import torch

    return state["store"].batch_get_v1(keys, torch.tensor(indices, dtype=torch.int64))


def exists(state, keys):
    return state["store"].batch_exists(keys)


def exists_one(state, key):
    return state["store"].exists(key)


def _transfers(state, spec):
    from sglang.srt.mem_cache.hicache_storage import PoolHitPolicy, PoolName, PoolTransfer

    return [
        PoolTransfer(
            name=PoolName(name),
            keys=keys,
            host_indices=_indices(state, pages) if pages is not None else None,
            hit_policy=PoolHitPolicy(policy),
        )
        for name, keys, pages, policy in spec
    ]


def set_v2(state, spec):
    out = state["store"].batch_set_v2(_transfers(state, spec))
    return {str(k): v for k, v in out.items()}


def get_v2(state, spec):
    out = state["store"].batch_get_v2(_transfers(state, spec))
    return {str(k): v for k, v in out.items()}


def exists_v2(state, keys, spec):
    r = state["store"].batch_exists_v2(keys, _transfers(state, spec))
    return r.kv_hit_pages, {str(k): v for k, v in r.extra_pool_hit_pages.items()}, r.restorable_prefix_pages


def generic_set(state, key, data, form):
    """`set` with a value in one of the accepted forms."""
    import numpy as np
    import torch

    store = state["store"]
    if form == "bytes":
        return store.set(key, data)
    if form == "numpy":
        return store.set(key, np.frombuffer(data, dtype=np.uint8).copy())
    if form == "tensor":
        return store.set(key, torch.frombuffer(bytearray(data), dtype=torch.uint8))
    if form == "pointer":
        buf = bytearray(data)
        import ctypes

        view = (ctypes.c_char * len(buf)).from_buffer(buf)
        ok = store.set(key, target_location=ctypes.addressof(view), target_sizes=len(buf))
        del view
        return ok
    raise ValueError(form)


def generic_get(state, key, size, form):
    """`get` into a fresh destination of `form`; returns the bytes or None."""
    import numpy as np
    import torch

    store = state["store"]
    if form == "bytearray":
        dst = bytearray(size)
        return bytes(dst) if store.get(key, dst) is not None else None
    if form == "numpy":
        dst = np.zeros(size, dtype=np.uint8)
        return dst.tobytes() if store.get(key, dst) is not None else None
    if form == "tensor":
        dst = torch.zeros(size, dtype=torch.uint8)
        return dst.numpy().tobytes() if store.get(key, dst) is not None else None
    if form == "pointer":
        import ctypes

        dst = bytearray(size)
        view = (ctypes.c_char * size).from_buffer(dst)
        got = store.get(key, ctypes.addressof(view), size)
        del view
        return bytes(dst) if got is not None else None
    raise ValueError(form)


def generic_batch(state, keys, datas):
    """batch_set of tensors, then batch_get into fresh tensors (same process)."""
    import torch

    store = state["store"]
    values = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    ok = store.batch_set(keys, values)
    return ok


def generic_batch_get(state, keys, size):
    import torch

    dsts = [torch.zeros(size, dtype=torch.uint8) for _ in keys]
    got = state["store"].batch_get(keys, dsts)
    return [None if g is None else g.numpy().tobytes() for g in got]


def stats(state):
    return state["store"].node_stats()


def host_pool_bytes(state):
    """Bytes of the host pool's KV buffer (one tensor holding K and V)."""
    buf = state["pool"].kv_buffer
    return int(buf.numel()) * int(buf.element_size())


def members(state):
    return state["store"].node.members


def node_id(state):
    return state["store"].node.node_id


def storage_metrics(state):
    m = state["store"].get_stats()
    return type(m).__name__, list(m.prefetch_pgs), list(m.backup_pgs), len(m.prefetch_bandwidth), len(m.backup_bandwidth)


def clear(state):
    state["store"].clear()
    return True


def close(state):
    state["store"].close()
    state["store"].close()  # idempotent
    return True


def odd_calls(state):
    """Data-path calls with arguments SGLang never passes but a caller could:
    each must answer (a miss), never raise. Returns call -> result, or
    "raised ..." for one that escaped."""
    from sglang.srt.mem_cache.hicache_storage import PoolName, PoolTransfer

    store = state["store"]
    idx = _indices(state, [0])
    calls = {
        "batch_get_v1(None)": lambda: store.batch_get_v1(None, idx),
        "batch_set_v1(None)": lambda: store.batch_set_v1(None, idx),
        "batch_get_v1(generator)": lambda: store.batch_get_v1((k for k in ["g"]), idx),
        "batch_exists(None)": lambda: store.batch_exists(None),
        "batch_exists_v2(None)": lambda: store.batch_exists_v2(None, []),
        "batch_exists_v2([None])": lambda: store.batch_exists_v2(["k"], [None]).kv_hit_pages,
        "batch_set_v2(None)": lambda: store.batch_set_v2(None),
        "batch_get_v2([None])": lambda: store.batch_get_v2([None]),
        "batch_get_v2(no keys)": lambda: {
            str(k): v
            for k, v in store.batch_get_v2([PoolTransfer(name=PoolName("kv"), keys=None, host_indices=None)]).items()
        },
        "batch_set(None)": lambda: store.batch_set(None),
        "batch_get(None)": lambda: store.batch_get(None),
    }
    out = {}
    for name, call in calls.items():
        try:
            out[name] = call()
        except BaseException as e:  # noqa: BLE001 - the point is to see anything
            out[name] = "raised %r" % (e,)
    return out


def digest(data):
    return hashlib.sha256(data).hexdigest()


COMMANDS = {
    f.__name__: f
    for f in [
        ready, use, drop, register, register_extra, fill, page_contents, zero, set_v1, get_v1,
        get_v1_raw_indices, exists, exists_one, set_v2, get_v2, exists_v2, generic_set,
        generic_get, generic_batch, generic_batch_get, stats, host_pool_bytes, members, node_id,
        storage_metrics, clear, close, odd_calls,
    ]
}
