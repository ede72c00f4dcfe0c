"""Contract tests of ``peercache.store.PeerCacheStore`` across processes.

Every store runs in its own process (``store_worker``) with a real SGLang host
pool, and the stores form one cluster on 127.0.0.1: what one writes, another
reads over the network, byte for byte.
"""

import os
import time

import pytest

from conftest import require_sglang
from ports import free_port

require_sglang()

from store_worker import StoreWorker, WorkerError  # noqa: E402

PAGES = list(range(6))


def cluster_config(port, **extra):
    config = {
        "discovery_addr": f"127.0.0.1:{port}",
        "local_hostname": "127.0.0.1",
        "global_segment_size": "64mb",
        "shards": 2,
        "metrics_enabled": False,
        "disk_enabled": False,
        "heartbeat_interval": 0.2,
        "member_ttl": 2.0,
    }
    config.update(extra)
    return config


def wait_members(workers, count, timeout=20.0, exact=False):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = [w.call("members") for w in workers]
        if all(m == count if exact else m >= count for m in seen):
            return
        time.sleep(0.1)
    raise AssertionError(f"cluster did not reach {count} members: {[w.call('members') for w in workers]}")


def two_stores(*registrations):
    """Two MHA page-first stores in two processes, one cluster, interface_v1
    on; each makes the worker calls `registrations` (default: its host pool
    through v1)."""
    port = free_port()
    a = StoreWorker(cluster_config(port, interface_v1=1))
    b = StoreWorker(cluster_config(port, interface_v1=1))
    try:
        wait_members([a, b], 2)
        for w in (a, b):
            for call in registrations or [("register", "v1")]:
                w.call(*call)
    except BaseException:
        b.close()
        a.close()
        raise
    return a, b


@pytest.fixture(scope="module")
def pair():
    a, b = two_stores()
    try:
        yield a, b
    finally:
        b.close()
        a.close()


def test_host_buffer_bytes_shows_the_host_pool_was_handed_over():
    """Seed 000 has the operator confirm that SGLang registered its host
    pool; `host_buffer_bytes` says it as a number, on TCP too."""
    w = StoreWorker(cluster_config(free_port(), interface_v1=1))
    try:
        wait_members([w], 1)
        assert w.call("stats")["host_buffer_bytes"] == 0
        w.call("register", "v1")
        registered = w.call("stats")["host_buffer_bytes"]
        assert registered == w.call("host_pool_bytes") > 0
        # The same pool again through v2 is the same buffer, counted once.
        w.call("register", "v2")
        assert w.call("stats")["host_buffer_bytes"] == registered
    finally:
        w.close()


def test_zero_copy_round_trip_across_processes(pair):
    a, b = pair
    keys = [f"zc-{i}" for i in PAGES]
    written = a.call("fill", PAGES, 11)
    assert a.call("set_v1", keys, PAGES) == [True] * len(PAGES)
    assert b.call("exists", keys) == len(PAGES)
    assert b.call("exists", keys + ["zc-missing"]) == len(PAGES)
    assert b.call("exists", ["zc-missing"] + keys) == 0
    before = b.call("stats")["read_remote_hits"]
    dst = [p + 8 for p in PAGES]
    b.call("zero", dst)
    assert b.call("get_v1", keys, dst) == [True] * len(PAGES)
    assert b.call("page_contents", dst) == written
    assert b.call("stats")["read_remote_hits"] - before == 2 * len(PAGES)  # K and V
    # A miss in the middle: that page False, the others still delivered.
    got = b.call("get_v1", keys[:2] + ["zc-missing"] + keys[2:3], [20, 21, 22, 23])
    assert got == [True, True, False, True]


LAYOUTS = [("mha", l) for l in ("layer_first", "page_first", "page_first_direct", "page_head")] + [
    ("mla", l) for l in ("layer_first", "page_first", "page_first_direct")
]


def test_every_host_layout_round_trips_across_processes(pair):
    """Each of SGLang's host layouts, MHA and MLA: a store on one process
    publishes, a store with the same layout on the other reads, byte-exact."""
    a, b = pair
    for kind, layout in LAYOUTS:
        name = f"{kind}-{layout}"
        a.call("use", name, kind, layout)
        b.call("use", name, kind, layout)
        try:
            a.call("register", "v1")
            b.call("register", "v1")
            wait_members([a, b], 4, exact=True)  # the two main nodes plus these two
            keys = [f"layout-{name}-{i}" for i in range(4)]
            written = a.call("fill", [0, 1, 2, 3], 7)
            assert a.call("set_v1", keys, [0, 1, 2, 3]) == [True] * 4, name
            assert b.call("exists", keys) == 4, name
            b.call("zero", [4, 5, 6, 7])
            assert b.call("get_v1", keys, [4, 5, 6, 7]) == [True] * 4, name
            assert b.call("page_contents", [4, 5, 6, 7]) == written, name
        finally:
            for w in (a, b):
                w.call("use", "main")
                w.call("drop", name)
            # Until every node has seen the two leave, a write may still pick
            # one of them as a directory owner.
            wait_members([a, b], 2, exact=True)


def test_storage_metrics_are_drained(pair):
    a, b = pair
    a.call("storage_metrics")  # drain what earlier tests left
    keys = [f"metrics-{i}" for i in range(3)]
    a.call("fill", [0, 1, 2], 5)
    assert a.call("set_v1", keys, [0, 1, 2]) == [True] * 3
    name, prefetch, backup, n_prefetch_bw, n_backup_bw = a.call("storage_metrics")
    assert name == "StorageMetrics"
    assert backup == [3] and n_backup_bw == 1 and prefetch == []
    assert a.call("storage_metrics")[2] == []  # drained


@pytest.mark.parametrize("form", ["bytes", "numpy", "tensor", "pointer"])
def test_generic_set_and_get_forms(pair, form):
    a, b = pair
    data = os.urandom(4096 + 17)
    key = f"generic-{form}"
    assert a.call("generic_set", key, data, form) is True
    for dst_form in ["bytearray", "numpy", "tensor", "pointer"]:
        assert b.call("generic_get", key, len(data), dst_form) == data
    # A destination of the wrong size is a miss, not an exception.
    assert b.call("generic_get", key, len(data) - 1, "bytearray") is None


def test_generic_batch_calls(pair):
    a, b = pair
    datas = [os.urandom(2048) for _ in range(4)]
    keys = [f"gbatch-{i}" for i in range(4)]
    assert a.call("generic_batch", keys, datas) is True
    assert b.call("generic_batch_get", keys + ["gbatch-missing"], 2048) == datas + [None]


def test_raw_and_component_keyspaces():
    """batch_exists probes the keyspace SGLang reads: component keys with
    interface_v1 on; generic keys with it off or absent (SGLang's default)."""
    port = free_port()
    writer = StoreWorker(cluster_config(port, interface_v1=1))
    raw_reader = StoreWorker(cluster_config(port, interface_v1=0))
    either = StoreWorker(cluster_config(port))
    try:
        wait_members([writer, raw_reader, either], 3)
        for w in (writer, raw_reader, either):
            w.call("register", "v1")
        zc_keys = [f"ks-zc-{i}" for i in range(3)]
        raw_keys = [f"ks-raw-{i}" for i in range(3)]
        writer.call("fill", [0, 1, 2], 3)
        assert writer.call("set_v1", zc_keys, [0, 1, 2]) == [True] * 3
        for k in raw_keys:
            assert writer.call("generic_set", k, b"x" * 512, "bytes")
        # interface_v1 on: component keys only.
        assert writer.call("exists", zc_keys) == 3
        assert writer.call("exists", raw_keys) == 0
        # interface_v1 off: raw keys only.
        assert raw_reader.call("exists", raw_keys) == 3
        assert raw_reader.call("exists", zc_keys) == 0
        # ... but the v2 probe pairs with the v2 page calls (component keys).
        assert raw_reader.call("exists_v2", zc_keys, [])[0] == 3
        # Not configured: SGLang uses the generic calls, so generic keys.
        assert either.call("exists", raw_keys) == 3
        assert either.call("exists", zc_keys) == 0
        assert either.call("exists_one", raw_keys[0]) is True
        assert writer.call("exists_one", zc_keys[0]) is False
    finally:
        for w in (either, raw_reader, writer):
            w.close()


def test_v2_only_registration_and_hit_policies():
    # v2 alone must be enough.
    a, b = two_stores(("register", "v2", "kv"), ("register_extra", "swa"))
    try:
        keys = [f"v2-{i}" for i in range(4)]
        kv = a.call("fill", [0, 1, 2, 3], 21)
        swa = a.call("fill", [0, 1, 2, 3], 22, "swa")
        # KV pages 0-3; the extra pool only holds the last two pages.
        out = a.call("set_v2", [("kv", keys, [0, 1, 2, 3], "all_pages"), ("swa", keys[2:], [2, 3], "trailing_pages")])
        assert out == {"kv": [True] * 4, "swa": [True, True]}
        # v1 calls work on a pool registered only through v2.
        assert b.call("get_v1", keys, [8, 9, 10, 11]) == [True] * 4
        assert b.call("page_contents", [8, 9, 10, 11]) == kv
        # TRAILING_PAGES: the last 2 pages of a 4-page prefix are present.
        hit, extra, restorable = b.call("exists_v2", keys, [("swa", keys[2:], None, "trailing_pages")])
        assert hit == 4 and extra.get("swa") == 4 and restorable[-1] == 4
        # ALL_PAGES: every page must be present, so only... none (page 0 missing).
        hit, extra, restorable = b.call("exists_v2", keys, [("swa", keys, None, "all_pages")])
        assert hit == 0 and restorable == []
        got = b.call("get_v2", [("kv", keys, [4, 5, 6, 7], "all_pages"), ("swa", keys[2:], [6, 7], "trailing_pages")])
        assert got == {"kv": [True] * 4, "swa": [True, True]}
        assert b.call("page_contents", [6, 7], "swa") == swa[2:]
        # A v2 transfer whose indices do not match its keys is a miss, not an error.
        assert b.call("get_v2", [("kv", keys, [4], "all_pages")]) == {"kv": [False] * 4}
    finally:
        b.close()
        a.close()


def test_a_listing_pool_is_found_by_a_rank_that_never_moved_a_page():
    """An extra pool whose class the store does not know lists its pointers
    on every call. A rank that has not moved a page of it yet must still see
    its pages in batch_exists_v2, or SGLang would never prefetch them."""
    a, b = two_stores(("register", "v2", "kv"), ("register_extra", "mamba", "mha", "page_first", True))
    try:
        keys = [f"listed-{i}" for i in range(3)]
        a.call("fill", [0, 1, 2], 31)
        extra = a.call("fill", [0, 1, 2], 32, "mamba")
        out = a.call("set_v2", [("kv", keys, [0, 1, 2], "all_pages"), ("mamba", keys, [0, 1, 2], "all_pages")])
        assert out == {"kv": [True] * 3, "mamba": [True] * 3}
        # b has not moved a page of either pool yet.
        hit, hits, restorable = b.call("exists_v2", keys, [("mamba", keys, None, "all_pages")])
        assert (hit, hits.get("mamba"), restorable) == (3, 3, [1, 2, 3])
        got = b.call("get_v2", [("kv", keys, [4, 5, 6], "all_pages"), ("mamba", keys, [4, 5, 6], "all_pages")])
        assert got == {"kv": [True] * 3, "mamba": [True] * 3}
        assert b.call("page_contents", [4, 5, 6], "mamba") == extra
    finally:
        b.close()
        a.close()


def test_mla_pages_are_shared_across_tp_ranks():
    port = free_port()
    rank0 = StoreWorker(cluster_config(port, interface_v1=1), kind="mla", rank={"tp_rank": 0, "tp_size": 2})
    rank1 = StoreWorker(cluster_config(port, interface_v1=1), kind="mla", rank={"tp_rank": 1, "tp_size": 2})
    try:
        wait_members([rank0, rank1], 2)
        rank0.call("register", "v1")
        rank1.call("register", "v1")
        keys = [f"mla-{i}" for i in range(4)]
        written = rank0.call("fill", [0, 1, 2, 3], 31)
        assert rank0.call("set_v1", keys, [0, 1, 2, 3]) == [True] * 4
        # Rank 1 never wrote these; MLA's latent cache is the same on every rank.
        assert rank1.call("exists", keys) == 4
        assert rank1.call("get_v1", keys, [4, 5, 6, 7]) == [True] * 4
        assert rank1.call("page_contents", [4, 5, 6, 7]) == written
    finally:
        rank1.close()
        rank0.close()


def test_mha_ranks_and_models_are_kept_apart():
    port = free_port()
    a = StoreWorker(cluster_config(port, interface_v1=1), rank={"tp_rank": 0, "tp_size": 2}, model="model-a")
    other_rank = StoreWorker(cluster_config(port, interface_v1=1), rank={"tp_rank": 1, "tp_size": 2}, model="model-a")
    other_model = StoreWorker(cluster_config(port, interface_v1=1), rank={"tp_rank": 0, "tp_size": 2}, model="model-b")
    same = StoreWorker(cluster_config(port, interface_v1=1), rank={"tp_rank": 0, "tp_size": 2}, model="model-a")
    workers = [a, other_rank, other_model, same]
    try:
        wait_members(workers, 4)
        for w in workers:
            w.call("register", "v1")
        keys = [f"ns-{i}" for i in range(3)]
        a.call("fill", [0, 1, 2], 41)
        assert a.call("set_v1", keys, [0, 1, 2]) == [True] * 3
        assert same.call("exists", keys) == 3
        # MHA heads are sharded over TP: rank 1 has its own K/V objects.
        assert other_rank.call("exists", keys) == 0
        # A different model never sees model-a's pages.
        assert other_model.call("exists", keys) == 0
        assert other_model.call("get_v1", keys, [3, 4, 5]) == [False] * 3
        # Generic pages are per TP rank too (MHA heads differ per rank): the
        # same key written by both ranks keeps both ranks' bytes apart.
        assert a.call("generic_set", "gen-shared", b"A" * 256, "bytes")
        assert other_rank.call("generic_set", "gen-shared", b"B" * 256, "bytes")
        assert same.call("generic_get", "gen-shared", 256, "bytearray") == b"A" * 256
        assert other_rank.call("generic_get", "gen-shared", 256, "bytearray") == b"B" * 256
    finally:
        for w in reversed(workers):
            w.close()


def test_tp_ranks_given_one_node_id_each_get_their_own(tmp_path):
    """SGLang hands every rank the same extra_config: a configured node_id
    becomes one identity per rank, and their disk directories stay apart."""
    port = free_port()
    config = cluster_config(
        port, node_id="host-a", disk_enabled=True, disk_path=str(tmp_path), disk_size="8mb"
    )
    ranks = [StoreWorker(config, rank={"tp_rank": r, "tp_size": 2}) for r in (0, 1)]
    try:
        # Both are members: neither replaced the other in discovery.
        wait_members(ranks, 2)
        assert [w.call("node_id") for w in ranks] == ["host-a-tp0", "host-a-tp1"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["host-a-tp0", "host-a-tp1"]
    finally:
        for w in reversed(ranks):
            w.close()


def test_a_store_that_exits_without_close_leaves_the_cluster_at_once():
    """SGLang's processes may exit without calling close(): the store's
    finalizer deregisters at interpreter exit, so peers drop it now, not a
    member_ttl later."""
    import json
    import subprocess
    import sys

    port = free_port()
    config = cluster_config(port, member_ttl=120.0)
    head = StoreWorker(config)
    script = (
        "import json, sys, time\n"
        "from peercache.store import PeerCacheStore\n"
        "store = PeerCacheStore(None, json.loads(sys.argv[1]))\n"
        "deadline = time.monotonic() + 20\n"
        "while store.node.members < 2 and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
        "print(store.node.members, flush=True)\n"
        # As SGLang's prefetch and backup threads do: a daemon thread holds
        # the store, so exiting never frees it.
        "import threading\n"
        "held = threading.Thread(target=lambda s=store: time.sleep(3600), daemon=True)\n"
        "held.start()\n"
        "del store\n"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", script, json.dumps(config)],
            capture_output=True, text=True, timeout=120,
        )
        assert out.returncode == 0 and out.stdout.strip() == "2", out
        # Gone within a few heartbeats; without deregistration it would stay
        # for member_ttl (120 s).
        wait_members([head], 1, timeout=30.0, exact=True)
    finally:
        head.close()


def test_data_path_failures_are_misses_and_close_is_idempotent():
    port = free_port()
    a = StoreWorker(cluster_config(port, interface_v1=1))
    try:
        # Before any host pool is registered: a miss, no exception.
        assert a.call("get_v1", ["early"], [0]) == [False]
        a.call("register", "v1")
        # Index count that does not match the keys, and an index off the pool:
        # misses, each counted as a failed native call.
        failed = a.call("stats")["frontend_native_failures"]
        assert a.call("get_v1_raw_indices", ["x", "y"], [0, 1, 2]) == [False, False]
        assert a.call("get_v1_raw_indices", ["x"], [10**9, 0, 0, 0]) == [False]
        assert a.call("stats")["frontend_native_failures"] == failed + 2
        a.call("fill", [0], 1)
        assert a.call("set_v1", ["c"], [0]) == [True]
        a.call("clear")
        assert a.call("exists", ["c"]) == 0
        a.call("close")
        assert a.call("set_v1", ["after"], [0]) == [False]
        assert a.call("exists", ["after"]) == 0
        assert a.call("generic_get", "after", 16, "bytearray") is None
    finally:
        a.close()


def test_a_peer_killed_mid_run_makes_its_pages_misses_never_errors():
    """SGLang keeps serving when the node holding its pages dies with
    SIGKILL: exists and get through PeerCacheStore answer (a shorter prefix,
    False pages), never raise, and the dead node's pages stop counting once
    its membership expires."""
    a, b = two_stores()
    try:
        keys = [f"dead-{i}" for i in PAGES]
        written = b.call("fill", PAGES, 23)
        assert b.call("set_v1", keys, PAGES) == [True] * len(PAGES)
        assert a.call("exists", keys) == len(PAGES)
        assert a.call("get_v1", keys, PAGES) == [True] * len(PAGES)
        assert a.call("page_contents", PAGES) == written

        b.kill()
        # Right after the kill the directory may still name b (its member
        # entry lives until member_ttl): exists can still count the pages,
        # but every read of them is a miss, never an exception.
        a.call("exists", keys)
        assert a.call("get_v1", keys, PAGES) == [False] * len(PAGES)
        # Once b's membership has expired its pages are not counted at all.
        deadline = time.monotonic() + 30
        while a.call("members") != 1 or a.call("exists", keys) != 0:
            assert time.monotonic() < deadline, "the dead node's pages still count after 30 s"
            time.sleep(0.2)
        assert a.call("get_v1", keys, PAGES) == [False] * len(PAGES)
        # The survivor still stores and reads its own pages.
        a.call("fill", [0], 5)
        assert a.call("set_v1", ["alive"], [0]) == [True]
        assert a.call("exists", ["alive"]) == 1
    finally:
        b.close()
        a.close()


def test_odd_arguments_are_misses_never_errors(pair):
    a, _ = pair
    before = a.call("stats")["frontend_failures"]
    out = a.call("odd_calls")
    raised = {name: r for name, r in out.items() if isinstance(r, str) and r.startswith("raised")}
    assert not raised, raised
    assert out["batch_get_v1(None)"] == [] and out["batch_exists(None)"] == 0
    assert out["batch_exists_v2([None])"] == 0
    assert out["batch_set_v2(None)"] == {} and out["batch_get_v2([None])"] == {}
    assert out["batch_get_v2(no keys)"] == {"kv": []}
    assert a.call("stats")["frontend_failures"] >= before


def test_bad_config_raises_with_the_key(tmp_path):
    pytest.importorskip("sglang")
    from peercache.store import PeerCacheStore

    with pytest.raises(ValueError, match="global_segment_size"):
        PeerCacheStore(None, {"discovery_addr": "127.0.0.1:1", "global_segment_size": "lots"})
    with pytest.raises(ValueError, match="discovery_addr"):
        PeerCacheStore(None, {"global_segment_size": "64mb"})
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig

    cp = HiCacheStorageConfig(
        tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=2,
        is_mla_model=False, enable_storage_metrics=False, is_page_first_layout=True,
        model_name="m", extra_config={"discovery_addr": "127.0.0.1:1"},
    )
    with pytest.raises(ValueError, match="attn_cp_size"):
        PeerCacheStore(cp, {})


def test_worker_errors_surface():
    """The harness itself reports a command that raised (so the tests above can fail)."""
    port = free_port()
    a = StoreWorker(cluster_config(port))
    try:
        with pytest.raises(WorkerError):
            a.call("fill", [0], 1, "no-such-pool")
    finally:
        a.close()
