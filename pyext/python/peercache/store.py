"""PeerCacheStore: the SGLang HiCache storage backend.

SGLang loads it through its dynamic backend factory::

    --hicache-storage-backend dynamic
    --hicache-storage-backend-extra-config '{"backend_name": "peercache",
        "module_path": "peercache.store", "class_name": "PeerCacheStore",
        "discovery_addr": "HEAD_IP:31998", ...}'

and calls ``PeerCacheStore(storage_config, extra)``. Each instance starts one
PeerCache node in this process (the native engine, ``peercache._native``),
which joins the cluster at ``discovery_addr``; pages this rank stores are
published from its pool and read by every other node.

This module is a thin adapter. Its rules:

- Every batch call makes one native call, which releases the GIL once. The
  zero-copy calls (``batch_set_v1`` / ``batch_get_v1`` and the v2 calls) hand
  Rust only the keys and the host-index array: page pointers are computed in
  Rust from a page map measured when the host pool is registered (see
  ``_measure_layout``), so there is no Python loop over pages.
- The data path never raises into SGLang: a failure is ``False`` / ``None`` /
  a shorter prefix, counted, and logged at most once a second. Only a bad
  configuration raises, at construction, naming the key and the fix.
- ``import peercache.store`` needs neither torch nor sglang. With SGLang
  importable the class derives from SGLang's real ``HiCacheStorage`` and
  returns SGLang's own ``PoolTransferResult`` / ``StorageMetrics``; without it,
  from a stand-in with the same surface.

Keyspaces. Generic calls (``set``, ``get``, ``batch_set``, ``batch_get``) store
a page under its key plus the rank suffix SGLang's own file backend uses where
ranks hold different bytes (``_{tp_rank}`` for MHA with ``tp_size > 1``,
``_{pp_rank}`` with ``pp_size > 1``; nothing for one rank). Zero-copy calls
store each buffer entry of a page under the rank's component key
(``{key}_{tp_rank}_k`` / ``_v`` for MHA, ``{key}__k`` for MLA, shared by every
TP rank; ``_p{n}`` appended per layer in layer-first layouts;
``{key}.{pool}_{tp_rank}_k`` for v2 extra pools). ``batch_exists`` probes the
keyspace SGLang will read: component keys when ``interface_v1`` is truthy
(as SGLang reads it: ``bool(extra_config.get("interface_v1", 0))``), the
generic keys otherwise.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import weakref
from array import array as _array
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from peercache._native import Node, PageLayout

logger = logging.getLogger("peercache.store")

__all__ = ["PeerCacheStore"]


# --------------------------------------------------------------------------
# SGLang's base class and result types, or stand-ins with the same surface.
# The base class is imported on its own, so that an optional name missing in
# some SGLang version never drops the backend to the stand-in base.
# --------------------------------------------------------------------------
try:
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorage as _Base

    HAS_SGLANG = True
except Exception:  # ImportError, or an SGLang install whose imports fail
    HAS_SGLANG = False

    class _Base:  # type: ignore[no-redef]
        """Stand-in for SGLang's ``HiCacheStorage`` when SGLang is absent."""

        def register_mem_pool_host(self, mem_pool_host):
            self.mem_pool_host = mem_pool_host

        def register_mem_host_pool_v2(self, host_pool, host_pool_name):
            if not hasattr(self, "registered_pools"):
                self.registered_pools = {}
            self.registered_pools[host_pool_name] = host_pool

        def on_host_pools_registered(self) -> None:
            pass


try:
    from sglang.srt.mem_cache.hicache_storage import PoolTransferResult
except Exception:

    @dataclass
    class PoolTransferResult:  # type: ignore[no-redef]
        """Stand-in for SGLang's ``PoolTransferResult``."""

        kv_hit_pages: int
        extra_pool_hit_pages: Dict[str, int]
        restorable_prefix_pages: Optional[List[int]] = None


try:
    from sglang.srt.observability.metrics_collector import StorageMetrics
except Exception:

    @dataclass
    class StorageMetrics:  # type: ignore[no-redef]
        """Stand-in for SGLang's ``StorageMetrics``."""

        prefetch_pgs: List[int] = field(default_factory=list)
        backup_pgs: List[int] = field(default_factory=list)
        prefetch_bandwidth: List[float] = field(default_factory=list)
        backup_bandwidth: List[float] = field(default_factory=list)


KV_POOL = "kv"
# Longest the constructor waits for discovery to list this node.
_JOIN_WAIT_S = 5.0
# Keys of the SGLang dynamic factory that are not engine configuration.
_RANK_FIELDS = ("tp_rank", "tp_size", "pp_rank", "pp_size")


def _name(value: Any) -> str:
    """A pool name or hit policy as its plain string (enums by value)."""
    return str(getattr(value, "value", value))


def _truthy(value: Any) -> bool:
    """A boolean config value; strings as the engine's config reads them."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _prefix(flags: List[bool]) -> int:
    """Length of the leading run of True."""
    return flags.index(False) if False in flags else len(flags)


def _passes_through(e: BaseException) -> bool:
    """Exceptions the data path must not swallow (interpreter shutdown,
    Ctrl-C); everything else, including a Rust panic surfacing as PyO3's
    ``PanicException`` (a ``BaseException``), becomes a miss."""
    return isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit))


class _RateLimitedLog:
    """At most one warning per ``interval`` seconds; counts what it held back."""

    def __init__(self, interval: float = 1.0):
        self._interval = interval
        self._last = 0.0
        self._suppressed = 0
        self._lock = threading.Lock()

    def warn(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last < self._interval:
                self._suppressed += 1
                return
            self._last, suppressed, self._suppressed = now, self._suppressed, 0
        if suppressed:
            message += " (%d similar messages suppressed)"
            args = args + (suppressed,)
        logger.warning(message, *args)


@dataclass
class _Layout:
    """A registered host pool and its native page map."""

    pool: Any
    native: Optional[PageLayout]
    # True when page pointers follow base + index * stride (computed in Rust);
    # False: the pool's own get_page_buffer_meta lists them per call.
    affine: bool


_TENSOR_INT64: Any = None  # (torch.Tensor, torch.int64), once torch is loaded


def _index_array(indices: Any):
    """``(address, length, keepalive)`` of a contiguous int64 copy-or-view of
    ``indices`` (a torch tensor, a numpy array, or a sequence of ints)."""
    global _TENSOR_INT64
    if _TENSOR_INT64 is None and "torch" in sys.modules:
        torch = sys.modules["torch"]
        _TENSOR_INT64 = (torch.Tensor, torch.int64)
    if _TENSOR_INT64 is not None and isinstance(indices, _TENSOR_INT64[0]):
        # The common case (SGLang's host_indices): used in place, no copy.
        if indices.dtype is not _TENSOR_INT64[1] or not indices.is_contiguous() or not indices.is_cpu:
            indices = indices.to(device="cpu", dtype=_TENSOR_INT64[1]).contiguous()
        return indices.data_ptr(), indices.numel(), indices
    if isinstance(indices, _array) and indices.typecode == "q":
        address, length = indices.buffer_info()
        return address, length, indices
    if hasattr(indices, "__array_interface__"):  # numpy
        np = sys.modules["numpy"]
        indices = np.ascontiguousarray(indices, dtype=np.int64)
        return indices.__array_interface__["data"][0], indices.size, indices
    arr = _array("q", (int(i) for i in indices))
    address, length = arr.buffer_info()
    return address, length, arr


def _buffer(obj: Any, size: Any = None, writable: bool = False):
    """``(address, nbytes, keepalive)`` of a page buffer: a tensor (anything
    with ``data_ptr``/``numel``/``element_size``), a numpy array, bytes-like
    object, or an int address with its size. Raises ``ValueError`` for what
    cannot be used in place (the callers turn that into a miss)."""
    if isinstance(obj, int):
        if size is None:
            raise ValueError("a raw pointer needs its size (target_sizes)")
        return obj, int(size), None
    if hasattr(obj, "data_ptr") and hasattr(obj, "numel"):
        if hasattr(obj, "is_contiguous") and not obj.is_contiguous():
            raise ValueError("tensor is not contiguous")
        if hasattr(obj, "device") and getattr(obj.device, "type", "cpu") != "cpu":
            raise ValueError("tensor is not in host memory")
        return obj.data_ptr(), obj.numel() * obj.element_size(), obj
    if hasattr(obj, "__array_interface__"):
        iface = obj.__array_interface__
        if not obj.flags["C_CONTIGUOUS"]:
            raise ValueError("array is not C-contiguous")
        if writable and iface["data"][1]:
            raise ValueError("array is read-only")
        return iface["data"][0], obj.nbytes, obj
    import ctypes

    if isinstance(obj, bytes):
        if writable:
            raise ValueError("bytes are immutable: pass a bytearray to fill")
        return ctypes.cast(ctypes.c_char_p(obj), ctypes.c_void_p).value or 0, len(obj), obj
    view = memoryview(obj)
    if not view.c_contiguous:
        raise ValueError("buffer is not contiguous")
    if view.readonly:
        if writable:
            raise ValueError("buffer is read-only")
        data = bytes(view)
        return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0, len(data), data
    raw = (ctypes.c_char * view.nbytes).from_buffer(view)
    return ctypes.addressof(raw), view.nbytes, (raw, view)


def _arange(start: int, stop: int) -> Any:
    """Host indices ``start..stop`` in the type SGLang's pools take (a torch
    tensor), or an ``array('q')`` where torch is absent (pools of other
    callers, e.g. the benchmark's)."""
    try:
        import torch

        return torch.arange(start, stop, dtype=torch.int64)
    except ImportError:
        from array import array

        return array("q", range(start, stop))


# Host-pool classes whose page pointers are an affine function of the host
# index in every layout (checked by the probe below as well). Pools that
# translate indices through a table that changes at run time (page
# envelopes, shared backings) must list their pointers on every call.
_AFFINE_POOL_CLASSES = {"MHATokenToKVPoolHost", "MLATokenToKVPoolHost"}


def _count(keys: Any) -> int:
    """How many pages a call named: ``len(keys)``, or 0 for something that
    has no length (the call is then a miss, never an exception)."""
    try:
        return len(keys)
    except Exception:
        return 0


def _affine_capable(pool: Any) -> bool:
    if getattr(pool, "stores_page_envelope", False) or hasattr(pool, "_shared_backing"):
        return False
    if getattr(pool, "peercache_affine_pages", False):  # declared by the pool itself
        return True
    return any(c.__name__ in _AFFINE_POOL_CLASSES for c in type(pool).__mro__)


def _native_layout(pool: Any, pool_name: Optional[str], rank: Dict[str, Any], bases, strides, sizes) -> PageLayout:
    return PageLayout(
        bases,
        strides,
        sizes,
        int(pool.page_size),
        int(pool.size),
        rank["tp_rank"],
        rank["tp_size"],
        rank["pp_rank"],
        rank["pp_size"],
        rank["is_mla"],
        pool_name,
    )


def _measure_layout(pool: Any, pool_name: Optional[str], rank: Dict[str, Any]) -> _Layout:
    """Builds the native page map of ``pool``. For a known pool class, its own
    ``get_page_buffer_meta`` is probed at the first, second, a middle and the
    last page: if every buffer entry moves by the same (non-zero) number of
    bytes per token index, the map is affine and Rust computes pointers from
    host indices alone. Any other pool lists its pointers on every call; its
    map (how many buffers a page has, and their sizes, which name and size
    its stored objects) comes from its first page, probed here so that
    ``batch_exists`` can answer before this rank's first transfer; if the
    probe fails, from its first call (``native`` stays None until then)."""

    def meta(first_index: int):
        page = int(pool.page_size)
        ptrs, sizes = pool.get_page_buffer_meta(_arange(first_index, first_index + page))
        return [int(p) for p in ptrs], [int(s) for s in sizes]

    if not _affine_capable(pool):
        try:
            base, sizes = meta(0)
            native = _native_layout(pool, pool_name, rank, base, [0] * len(base), sizes) if base else None
        except Exception as e:  # e.g. a pool whose zero-copy needs a layout it lacks
            logger.debug("PeerCacheStore: page map of %r left to its first call: %r", pool_name, e)
            native = None
        return _Layout(pool=pool, native=native, affine=False)
    page = int(pool.page_size)
    pages = int(pool.size) // page

    base, sizes = meta(0)
    strides: List[int] = []
    affine = pages >= 2
    if affine:
        probes = {p * page: meta(p * page) for p in sorted({1, pages // 2, pages - 1})}
        second_ptrs = probes[page][0]
        for e, b in enumerate(base):
            delta = second_ptrs[e] - b if e < len(second_ptrs) else -1
            if delta <= 0 or delta % page:
                affine = False
                break
            strides.append(delta // page)
        affine = affine and all(
            len(ptrs) == len(base)
            and sz == sizes
            and all(ptrs[e] == base[e] + index * strides[e] for e in range(len(base)))
            for index, (ptrs, sz) in probes.items()
        )
    if not affine:
        strides = [0] * len(base)
    return _Layout(pool=pool, native=_native_layout(pool, pool_name, rank, base, strides, sizes), affine=affine)


class PeerCacheStore(_Base):
    """SGLang HiCache storage backend on a PeerCache node (see the module doc)."""

    def __init__(self, storage_config: Any = None, extra: Optional[dict] = None):
        config: Dict[str, Any] = {}
        if storage_config is not None and getattr(storage_config, "extra_config", None):
            config.update(storage_config.extra_config)
        if extra:
            config.update(extra)
        if storage_config is not None:
            for key in _RANK_FIELDS:
                value = getattr(storage_config, key, None)
                if value is not None:
                    config[key] = int(value)
            config["is_mla_model"] = bool(getattr(storage_config, "is_mla_model", False))
            model_name = getattr(storage_config, "model_name", None)
            if model_name:
                config["model_name"] = str(model_name)
        self.storage_config = storage_config
        self.extra_config = config
        # Exactly SGLang's test (cache_controller.py): any truthy value,
        # even the string "false", selects the zero-copy calls.
        self.interface_v1 = bool(config.get("interface_v1", 0))
        self._rank = {
            "tp_rank": int(config.get("tp_rank", 0)),
            "tp_size": int(config.get("tp_size", 1)),
            "pp_rank": int(config.get("pp_rank", 0)),
            "pp_size": int(config.get("pp_size", 1)),
            "is_mla": _truthy(config.get("is_mla_model", False)),
        }
        for what in ("attn_cp_size", "dcp_size"):
            size = getattr(storage_config, what, 1) if storage_config is not None else 1
            if size is not None and int(size) > 1:
                # Each CP rank holds a different slice of every page; the
                # object names carry no CP rank yet, so ranks would overwrite
                # each other's pages. Refuse rather than serve wrong bytes.
                raise ValueError(
                    f"PeerCacheStore does not support context-parallel KV sharding yet "
                    f"({what}={size}): run without attention context parallelism, or use "
                    f"another HiCache storage backend"
                )
        # Generic keys: where this rank's bytes differ from other ranks'.
        suffix = ""
        if not self._rank["is_mla"] and self._rank["tp_size"] > 1:
            suffix += "_%d" % self._rank["tp_rank"]
        if self._rank["pp_size"] > 1:
            suffix += "_%d" % self._rank["pp_rank"]
        self._generic_suffix = suffix
        # Joins (or, on the head, hosts) discovery at discovery_addr. Raises
        # ValueError for a bad key or value (naming the fix), RuntimeError
        # when the node cannot start.
        self._node = Node(json.dumps(config), cluster=True)
        # SGLang's processes may exit (or drop the store) without close():
        # close the node then anyway, so it deregisters from discovery (peers
        # drop it at once instead of a member_ttl later) and flushes its disk
        # writes. Holds the node, not the store. Runs at most once; close()
        # is idempotent, and in a forked child it only forgets the node.
        weakref.finalize(self, self._node.close)
        # Give discovery a moment to list this node (so the first calls see
        # the cluster), without ever blocking SGLang's start-up for long: a
        # node started before its head keeps retrying in the background.
        deadline = time.monotonic() + _JOIN_WAIT_S
        while self._node.members == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        self._layouts: Dict[str, _Layout] = {}
        self.registered_pools: Dict[Any, Any] = {}
        self._log = _RateLimitedLog()
        self._failures_lock = threading.Lock()
        self._failures = 0
        logger.info(
            "PeerCacheStore ready: node=%s members=%d tp=%d/%d pp=%d/%d mla=%s interface_v1=%s",
            self._node.node_id,
            self._node.members,
            self._rank["tp_rank"],
            self._rank["tp_size"],
            self._rank["pp_rank"],
            self._rank["pp_size"],
            self._rank["is_mla"],
            self.interface_v1,
        )

    # ------------------------------------------------------------------
    # Host pool registration
    # ------------------------------------------------------------------
    def register_mem_pool_host(self, mem_pool_host: Any) -> None:
        """Remembers SGLang's host KV pool and measures its page map."""
        self.mem_pool_host = mem_pool_host
        self._register(KV_POOL, mem_pool_host)

    def register_mem_host_pool_v2(self, host_pool: Any, host_pool_name: Any) -> None:
        """v2 registration; enough on its own for the KV pool too."""
        self.registered_pools[host_pool_name] = host_pool
        name = _name(host_pool_name)
        if name == KV_POOL and getattr(self, "mem_pool_host", None) is None:
            self.mem_pool_host = host_pool
        self._register(name, host_pool)

    def on_host_pools_registered(self) -> None:
        logger.info("PeerCacheStore host pools: %s", ", ".join(sorted(self._layouts)) or "none")

    def _register(self, name: str, pool: Any) -> None:
        self._register_with_nic(name, pool)
        try:
            layout = _measure_layout(pool, None if name == KV_POOL else name, self._rank)
        except Exception as e:
            # The probe failed (e.g. a pool that cannot describe unallocated
            # pages): the pool lists its pointers per call instead.
            logger.info("PeerCacheStore: host pool %r not probed (%s); it lists its pointers per call", name, e)
            layout = _Layout(pool=pool, native=None, affine=False)
        self._layouts[name] = layout
        if layout.native is None:
            logger.info("PeerCacheStore registered host pool %r: pointers listed by the pool per call", name)
            return
        logger.info(
            "PeerCacheStore registered host pool %r: %d buffer(s) per page, %d bytes per page, %s",
            name,
            layout.native.entries,
            layout.native.page_bytes,
            "pointers computed in Rust" if layout.affine else "pointers listed by the pool",
        )

    def _register_with_nic(self, name: str, pool: Any) -> None:
        """Registers the pool's buffers with the RDMA rails (LOCAL_WRITE
        only), so READs land in them without a lazy registration. A no-op
        on TCP; a failure is logged and READs register lazily instead."""
        # One kv_buffer tensor (k_buffer / v_buffer are views into it when
        # both exist), else separate K and V buffers.
        for attrs in (("kv_buffer",), ("k_buffer", "v_buffer")):
            found = False
            for attr in attrs:
                try:
                    buf = getattr(pool, attr, None)
                except Exception:  # a property that fails: treat as absent
                    continue
                for t in buf if isinstance(buf, (list, tuple)) else [buf]:
                    try:
                        addr, size = int(t.data_ptr()), int(t.numel()) * int(t.element_size())
                    except Exception:
                        continue  # not a tensor (absent, or None before allocation)
                    found = True
                    if size and self._node.register_host_buffer(addr, size):
                        logger.info("PeerCacheStore registered host pool %r %s with the NIC: %d bytes", name, attr, size)
            if found:
                return

    def _listed_native(self, name: str, layout: _Layout, n: int, ptrs: List[int], sizes: List[int]) -> PageLayout:
        """The page map of a listing pool, built from its first call."""
        if layout.native is None:
            if n == 0 or len(ptrs) % n:
                raise ValueError("%d buffers listed for %d pages" % (len(ptrs), n))
            entries = len(ptrs) // n
            layout.native = _native_layout(
                layout.pool, None if name == KV_POOL else name, self._rank,
                [int(p) for p in ptrs[:entries]], [0] * entries, [int(z) for z in sizes[:entries]],
            )
        return layout.native

    # ------------------------------------------------------------------
    # Zero-copy page calls (v1 and v2)
    # ------------------------------------------------------------------
    def batch_set_v1(self, keys: List[str], host_indices: Any, extra_info: Any = None) -> List[bool]:
        """Publishes the host-pool pages at ``host_indices`` under ``keys``."""
        return self._pages("set", KV_POOL, keys, host_indices)

    def batch_get_v1(self, keys: List[str], host_indices: Any, extra_info: Any = None) -> List[bool]:
        """Reads pages of ``keys`` (from any node) into the host pool at ``host_indices``."""
        # SGLang's prefetch hot path, kept to one Python frame around the
        # native call: after a large copy the interpreter's own memory is cold
        # in cache, and every frame unwound with the GIL held costs
        # microseconds. The common case (an affine KV map, an int64 CPU
        # tensor) is handled inline; everything else goes through _pages.
        layout = self._layouts.get(KV_POOL)
        tensor_int64 = _TENSOR_INT64
        if (
            layout is not None
            and layout.affine
            and tensor_int64 is not None
            and type(host_indices) is tensor_int64[0]
            and host_indices.dtype is tensor_int64[1]
            and host_indices.is_contiguous()
            and host_indices.is_cpu
        ):
            try:
                return self._node.pages(
                    "get", layout.native, "\0".join(keys).encode(), len(keys),
                    host_indices.data_ptr(), host_indices.numel(),
                )
            except BaseException as e:
                if _passes_through(e):
                    raise
                n = _count(keys)
                self._miss("get", n, repr(e))
                return [False] * n
        return self._pages("get", KV_POOL, keys, host_indices)

    def batch_set_v2(self, transfers: List[Any], extra_info: Any = None) -> Dict[Any, List[bool]]:
        return self._transfers("set", transfers)

    def batch_get_v2(self, transfers: List[Any], extra_info: Any = None) -> Dict[Any, List[bool]]:
        return self._transfers("get", transfers)

    def _transfers(self, op: str, transfers: Any) -> Dict[Any, List[bool]]:
        """One page call per pool transfer; a transfer that is not one (no
        name, no keys) is left out of the answer, which SGLang reads as a
        miss, and counted."""
        out: Dict[Any, List[bool]] = {}
        try:
            for t in transfers or []:
                try:
                    out[t.name] = self._pages(op, _name(t.name), t.keys or [], t.host_indices)
                except BaseException as e:
                    if _passes_through(e):
                        raise
                    self._miss("batch_%s_v2" % op, _count(getattr(t, "keys", None)), repr(e))
        except BaseException as e:
            if _passes_through(e):
                raise
            self._miss("batch_%s_v2" % op, 0, repr(e))
        return out

    def _pages(self, op: str, pool: str, keys: List[str], host_indices: Any) -> List[bool]:
        # The hot path of SGLang's prefetch and backup threads: a dict lookup,
        # the index array's address, one native call (GIL released inside).
        try:
            layout = self._layouts[pool]
            # One bytes object for all keys: converting it is one copy, where
            # a list of str would be one conversion per page with the GIL held.
            blob = "\0".join(keys).encode()
            if layout.affine:
                address, length, _keep = _index_array(host_indices)
                return self._node.pages(op, layout.native, blob, len(keys), address, length)
            ptrs, sizes = layout.pool.get_page_buffer_meta(host_indices)
            native = self._listed_native(pool, layout, len(keys), ptrs, sizes)
            return self._node.pages_listed(op, native, blob, len(keys), list(ptrs), list(sizes))
        except BaseException as e:
            if _passes_through(e):
                raise
            n = _count(keys)
            reason = ("no host pool %r is registered" % pool) if pool not in self._layouts else repr(e)
            self._miss(op, n, reason)
            return [False] * n

    # ------------------------------------------------------------------
    # Existence
    # ------------------------------------------------------------------
    def batch_exists(self, keys: List[str], extra_info: Any = None) -> int:
        """Longest prefix of ``keys`` whose whole pages are stored (MHA: K and V)."""
        n = _count(keys)
        if n == 0:
            return 0
        try:
            layout = self._layouts.get(KV_POOL)
            if not self.interface_v1:
                return self._node.batch_exists(self._generic_keys(keys))
            if layout is None or layout.native is None:
                self._miss("batch_exists", n, "no host pool page map yet (register_mem_pool_host)")
                return 0
            return _prefix(self._node.pages_exist(layout.native, "\0".join(keys).encode(), n))
        except BaseException as e:
            if _passes_through(e):
                raise
            self._miss("batch_exists", n, repr(e))
            return 0

    def _generic_keys(self, keys: List[str]) -> List[str]:
        """The stored names of generic pages (see the module doc)."""
        suffix = self._generic_suffix
        return list(keys) if not suffix else [k + suffix for k in keys]

    def batch_exists_v2(
        self, keys: List[str], pool_transfers: Optional[List[Any]] = None, extra_info: Any = None
    ) -> Any:
        """KV prefix plus each extra pool's verdict under its hit policy. The
        v2 calls move KV pages through the host pool (component keys), so the
        KV prefix is probed there whenever a KV pool is registered, whatever
        ``interface_v1`` says."""
        try:
            return self._exists_v2(keys, pool_transfers, extra_info)
        except BaseException as e:
            if _passes_through(e):
                raise
            self._miss("batch_exists_v2", _count(keys), repr(e))
            return PoolTransferResult(0, {}, [])

    def _exists_v2(self, keys: List[str], pool_transfers: Optional[List[Any]], extra_info: Any) -> Any:
        layout = self._layouts.get(KV_POOL)
        if layout is not None and layout.native is not None and keys:
            try:
                kv_pages = _prefix(self._node.pages_exist(layout.native, "\0".join(keys).encode(), len(keys)))
            except BaseException as e:
                if _passes_through(e):
                    raise
                self._miss("batch_exists_v2", len(keys), repr(e))
                kv_pages = 0
        else:
            kv_pages = self.batch_exists(keys, extra_info)
        hits: Dict[str, int] = {KV_POOL: kv_pages} if kv_pages else {}
        restorable = list(range(1, kv_pages + 1))
        for transfer in pool_transfers or []:
            name = _name(transfer.name)
            policy = _name(getattr(transfer, "hit_policy", "all_pages"))
            layout = self._layouts.get(name)
            try:
                present = (
                    self._node.pages_exist(layout.native, "\0".join(keys[:kv_pages]).encode(), kv_pages)
                    if layout is not None and layout.native is not None and kv_pages
                    else [False] * kv_pages
                )
            except BaseException as e:
                if _passes_through(e):
                    raise
                self._miss("batch_exists_v2", kv_pages, repr(e))
                present = [False] * kv_pages
            if policy == "all_pages":
                boundary = _prefix(present)
                allowed = set(range(1, boundary + 1))
            elif policy == "trailing_pages":
                trailing = max(1, len(transfer.keys) if getattr(transfer, "keys", None) else 1)
                allowed = {
                    length
                    for length in range(1, kv_pages + 1)
                    if all(present[max(0, length - trailing) : length])
                }
                boundary = max(allowed, default=0)
            elif policy == "block_groups":
                # The pool's own verdict (leading complete groups); never gates KV.
                group = max(1, int(getattr(transfer, "group_pages", 0) or 1))
                run = _prefix(present)
                boundary = run - run % group
                if boundary:
                    hits[str(transfer.name)] = boundary
                continue
            else:
                self._log.warn("PeerCacheStore: unknown hit policy %r for pool %r: treated as a miss", policy, name)
                boundary, allowed = 0, set()
            if boundary:
                hits[str(transfer.name)] = boundary
            restorable = [p for p in restorable if p in allowed]
        final = restorable[-1] if restorable else 0
        return PoolTransferResult(final, hits, restorable)

    def exists(self, key: str) -> bool:
        """Whether the generic page ``key`` is stored (SGLang's generic path)."""
        try:
            return self._node.batch_exists(self._generic_keys([key])) == 1
        except BaseException as e:
            if _passes_through(e):
                raise
            self._miss("exists", 1, repr(e))
            return False

    # ------------------------------------------------------------------
    # Generic calls (raw keys): values, or fill targets
    # ------------------------------------------------------------------
    def set(self, key: str, value: Any = None, target_location: Any = None, target_sizes: Any = None) -> bool:
        return self.batch_set(
            [key],
            None if value is None else [value],
            None if target_location is None else [target_location],
            None if target_sizes is None else [target_sizes],
        )

    def batch_set(
        self, keys: List[str], values: Any = None, target_locations: Any = None, target_sizes: Any = None
    ) -> bool:
        """Stores ``values[i]`` (or the buffer at ``target_locations[i]`` of
        ``target_sizes[i]`` bytes) under ``keys[i]``; True when every page was stored."""
        n = _count(keys)
        if n == 0:
            return True
        try:
            sources = values if values is not None else target_locations
            if sources is None or len(sources) != n:
                raise ValueError("batch_set needs one value or target_location per key")
            sizes = target_sizes if target_sizes is not None else [None] * n
            bufs = [_buffer(s, z) for s, z in zip(sources, sizes)]
            flags = self._node.batch_set(self._generic_keys(keys), [b[0] for b in bufs], [b[1] for b in bufs])
            if not all(flags):
                self._log.warn("PeerCacheStore batch_set: %d of %d pages not stored", n - sum(flags), n)
            return all(flags)
        except BaseException as e:
            if _passes_through(e):
                raise
            self._miss("batch_set", n, repr(e))
            return False

    def get(self, key: str, target_location: Any = None, target_sizes: Any = None) -> Any:
        return self.batch_get(
            [key],
            None if target_location is None else [target_location],
            None if target_sizes is None else [target_sizes],
        )[0]

    def batch_get(self, keys: List[str], target_locations: Any = None, target_sizes: Any = None) -> List[Any]:
        """Fills ``target_locations[i]`` (a tensor, array, writable buffer, or
        an int address with ``target_sizes[i]``) with the page of ``keys[i]``.
        Returns the filled target (for an address: the address) per key, or
        None for a miss. A destination is required: the engine copies straight
        into it and needs its size, which SGLang always provides."""
        n = _count(keys)
        if n == 0:
            return []
        try:
            if target_locations is None or len(target_locations) != n:
                raise ValueError(
                    "batch_get needs a destination per key: pass target_locations "
                    "(tensors, arrays, bytearrays, or addresses with target_sizes)"
                )
            sizes = target_sizes if target_sizes is not None else [None] * n
            bufs = [_buffer(t, z, writable=True) for t, z in zip(target_locations, sizes)]
            flags = self._node.batch_get(self._generic_keys(keys), [b[0] for b in bufs], [b[1] for b in bufs])
            return [t if ok else None for t, ok in zip(target_locations, flags)]
        except BaseException as e:
            if _passes_through(e):
                raise
            self._miss("batch_get", n, repr(e))
            return [None] * n

    # ------------------------------------------------------------------
    # Housekeeping
    # ------------------------------------------------------------------
    def clear(self) -> None:
        """Drops every page of this node's pool (other nodes keep theirs)."""
        self._node.clear()

    def close(self) -> None:
        """Deregisters from discovery, stops the node, unmaps the pool. Idempotent."""
        self._node.close()

    def get_stats(self) -> Any:
        """SGLang's ``StorageMetrics`` since the previous call (drained): pages
        and GB/s of every get (prefetch) and set (backup) call, recorded by the
        native node with the GIL released."""
        prefetch_pgs, backup_pgs, prefetch_bw, backup_bw = self._node.drain_call_log()
        return StorageMetrics(
            prefetch_pgs=prefetch_pgs,
            backup_pgs=backup_pgs,
            prefetch_bandwidth=prefetch_bw,
            backup_bandwidth=backup_bw,
        )

    def node_stats(self) -> Dict[str, int]:
        """The native node's counters (hits, misses, bytes, ...) plus this
        front end's failures: pages the Python side reported as missing
        (``frontend_failures``) and native calls that failed and answered
        with misses (``frontend_native_failures``)."""
        stats = dict(self._node.stats())
        stats["frontend_failures"] = self._failures
        stats["frontend_native_failures"] = self._node.failed_calls
        return stats

    @property
    def node(self) -> Node:
        """The native node (node id, members, endpoints)."""
        return self._node

    def _miss(self, op: str, pages: int, reason: str) -> None:
        with self._failures_lock:
            self._failures += pages
        self._log.warn("PeerCacheStore %s: %d page(s) reported as missing: %s", op, pages, reason)

    def __repr__(self) -> str:
        return "PeerCacheStore(%r)" % (self._node,)
