"""PeerCacheStore under SGLang's own storage layer: the dynamic backend
factory and two real ``HiCacheController``s in two processes.

Process A (this pytest process) writes pages straight into its host pool and
backs them up through its controller's backup thread (``write_storage`` ->
``batch_set_v1``, or ``batch_set`` with ``interface_v1`` off). Process B
(``controller_worker.py``, a separate node joining A's discovery master)
prefetches the same tokens through its own controller (``batch_exists`` ->
``batch_get_v1`` / ``batch_get``); the bytes landing in B's host pool must be
A's bytes, read from A's node.

Skipped when SGLang is not importable. Needs ``ninja`` (the controller
JIT-builds its hash extension on first use).
"""

import json
import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("torch")
try:  # importorskip alone lets an ImportError other than "not installed" through
    pytest.importorskip("sglang.srt.managers.cache_controller")
except ImportError as e:
    pytest.skip("SGLang is not importable: %s" % e, allow_module_level=True)

import controller_worker as cw  # noqa: E402
import sglang_pools as sp  # noqa: E402

needs_ninja = pytest.mark.skipif(
    not cw.HAVE_NINJA, reason="ninja not found: SGLang JIT-builds its page hash with it"
)

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "controller_worker.py")
PAGES = 6  # pages A backs up
WRITER_SKIP_PAGES = 2  # A's data starts at host page 2, B's lands at page 1
READER_SKIP_PAGES = 1
BACKUP_TIMEOUT = 20.0
READER_TIMEOUT = 45.0  # the reader process as a whole (imports, node start, prefetch)


def _stored_tokens(seed):
    return [(seed * 7919 + i * 31) % 50000 + 1 for i in range(PAGES * sp.PAGE)]


def test_dynamic_factory_loads_peercache_store():
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorage, HiCacheStorageConfig
    from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory

    from peercache.store import PeerCacheStore

    sp.setup_sglang_runtime()
    assert issubclass(PeerCacheStore, HiCacheStorage)
    _, host = sp.host_pool("mha", "page_first")
    extra = cw.extra_config("127.0.0.1:%d" % cw.free_port(), 1)
    storage_config = HiCacheStorageConfig(
        tp_rank=0,
        tp_size=1,
        pp_rank=0,
        pp_size=1,
        attn_cp_rank=0,
        attn_cp_size=1,
        is_mla_model=False,
        enable_storage_metrics=False,
        is_page_first_layout=True,
        model_name=None,
        extra_config=dict(extra),
    )
    store = StorageBackendFactory.create_backend("dynamic", storage_config, host)
    try:
        assert isinstance(store, PeerCacheStore)
        assert isinstance(store, HiCacheStorage)
        assert store.interface_v1 is True
        store.register_mem_pool_host(host)
        assert store.mem_pool_host is host
    finally:
        store.close()


@needs_ninja
@pytest.mark.parametrize("interface_v1", [1, 0], ids=["interface_v1", "generic"])
def test_controller_backup_then_prefetch_from_other_process(interface_v1, tmp_path):
    started = time.monotonic()
    discovery = "127.0.0.1:%d" % cw.free_port()
    tokens = _stored_tokens(seed=3 + interface_v1)

    # ---- process A: this process hosts discovery and backs the pages up ----
    _, host_a, cc_a = cw.make_controller(cw.extra_config(discovery, interface_v1))
    try:
        from peercache.store import PeerCacheStore

        store_a = cc_a.storage_backend
        assert isinstance(store_a, PeerCacheStore)
        calls_a = cw.spy_calls(store_a)

        cc_a.mem_pool_host.alloc(WRITER_SKIP_PAGES * sp.PAGE)
        host_idx_a = cc_a.mem_pool_host.alloc(len(tokens))
        assert host_idx_a is not None
        cw.fill_host_pages(host_a, host_idx_a, seed=100 + interface_v1)
        expected = cw.host_page_bytes(host_a, host_idx_a)
        assert len(set(expected)) == PAGES  # distinct pages

        hashes = cw.storage_hashes(tokens, sp.PAGE)
        assert len(hashes) == PAGES and all(isinstance(h, str) for h in hashes)
        op = cw.backup(cc_a, host_idx_a, tokens, hashes, BACKUP_TIMEOUT)
        assert op.completed_tokens == len(tokens), "backup stopped early"
        assert set(calls_a) == {"batch_set_v1" if interface_v1 else "batch_set"}
        # A sees its own pages through the keyspace the controller will probe.
        assert store_a.batch_exists(hashes) == PAGES
        stats_a = store_a.node_stats()
        assert stats_a["frontend_failures"] == 0, stats_a

        # ---- process B: a separate node prefetches them through its controller ----
        # One page A never stored follows the stored prefix: only the prefix hits.
        extra_page = [50001 + i for i in range(sp.PAGE)]
        args = {
            "discovery_addr": discovery,
            "interface_v1": interface_v1,
            "layout": "page_first",
            "token_ids": tokens + extra_page,
            "skip_pages": READER_SKIP_PAGES,
            "timeout": READER_TIMEOUT - 5.0,
        }
        args_path = tmp_path / "args.json"
        result_path = tmp_path / "result.json"
        log_path = tmp_path / "reader.log"
        args["ready_path"] = str(tmp_path / "ready")
        args["go_path"] = str(tmp_path / "go")
        args_path.write_text(json.dumps(args))
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, WORKER, str(args_path), str(result_path)],
                cwd=os.path.dirname(WORKER),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            reader_deadline = time.monotonic() + READER_TIMEOUT

            def reader_log():
                return "reader rc=%s, log:\n%s" % (proc.poll(), log_path.read_text()[-6000:])

            def wait(predicate, what, timeout):
                deadline = min(reader_deadline, time.monotonic() + timeout)
                while not predicate():
                    if proc.poll() is not None and not result_path.exists():
                        pytest.fail("reader exited while waiting for %s; %s" % (what, reader_log()))
                    if time.monotonic() > deadline:
                        pytest.fail("timed out waiting for %s; %s" % (what, reader_log()))
                    time.sleep(0.05)

            wait(lambda: os.path.exists(args["ready_path"]), "the reader's node", READER_TIMEOUT)
            # Convergence before the read: A learns of B at its next membership
            # refresh and then re-publishes its resident pages' directory
            # entries to the new owners (docs/architecture.md, "Membership
            # change"). Until then a just-joined B misses (see the report).
            wait(lambda: store_a.node.members >= 2, "the writer to see the reader", 10.0)
            wait(
                lambda: store_a.node_stats()["directory_republishes"]
                >= store_a.node_stats()["pool_keys"],
                "the writer to re-publish its directory entries",
                10.0,
            )
            (tmp_path / "go").write_text("go")
            wait(lambda: proc.poll() is not None, "the reader's prefetch", READER_TIMEOUT)
            assert proc.returncode == 0 and result_path.exists(), reader_log()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        result = json.loads(result_path.read_text())
    finally:
        cw.close(cc_a)

    assert result["store_class"] == "peercache.store.PeerCacheStore"
    assert result["members"] >= 2
    # B's controller took the path interface_v1 selects, through the store.
    get_call = "batch_get_v1" if interface_v1 else "batch_get"
    assert result["calls"] == sorted(["batch_exists", get_call]), result["calls"]
    # The controller's own hashing of B's tokens found exactly A's keys.
    assert result["hash_value"] == hashes
    assert result["storage_hit_count"] == len(tokens)
    assert result["completed_tokens"] == len(tokens)
    dest = result["host_indices"]
    assert dest[0] == READER_SKIP_PAGES * sp.PAGE != int(host_idx_a[0])
    got = [bytes.fromhex(p) for p in result["pages"]]
    assert len(got) == PAGES
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g == e, "page %d differs between A's and B's host pools" % i
    stats_b = result["node_stats"]
    assert stats_b["read_remote_hits"] > 0, stats_b
    assert stats_b["frontend_failures"] == 0, stats_b
    assert time.monotonic() - started < 60.0
