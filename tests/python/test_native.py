"""Tests of the native module `peercache._native` through the `peercache` package."""

import os
import re
import subprocess
import sys
import threading
import time

import pytest

import peercache
from conftest import Pages, config_json

KIB = 1024
MIB = 1024 * KIB

# The core counters every node reports (more may be added over time).
STATS_FIELDS = {
    "write_requests",
    "write_failures",
    "bytes_written",
    "read_requests",
    "read_hits",
    "read_misses",
    "read_local_hits",
    "read_failures",
    "bytes_read",
    "exists_requests",
    "exists_pages_found",
    "pool_keys",
    "pool_bytes_used",
    "pool_capacity_bytes",
    "evictions",
    "quarantine_early_reuses",
    "segment_steals",
}


def random_pages(count, size):
    return Pages(os.urandom(size) for _ in range(count))


def keys(prefix, count):
    return [f"{prefix}-{i}" for i in range(count)]


# --- package surface ---------------------------------------------------------


def test_package_exports():
    from peercache import _native

    assert peercache.Node is _native.Node
    assert peercache.HAS_RDMA is False
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", peercache.__version__)
    assert peercache.__version__ == _native.__version__
    assert set(peercache.__all__) == {"Node", "PageLayout", "PeerCacheStore", "HAS_RDMA", "__version__"}


def test_bench_extra_installs_mooncake():
    # Seed 004: `pip install "peercache[bench]"` also installs Mooncake.
    from importlib.metadata import metadata

    meta = metadata("peercache")
    assert "bench" in (meta.get_all("Provides-Extra") or [])
    requires = meta.get_all("Requires-Dist") or []
    assert any(r.startswith("mooncake-transfer-engine") and "extra == 'bench'" in r.replace('"', "'") for r in requires), requires


def test_seed_install_check_module():
    # Seed 000 step 1 checks an install with `from peercache import _peercache`.
    from peercache import _peercache as m

    assert m.HAS_RDMA is peercache.HAS_RDMA
    assert m.Node is peercache.Node


def test_import_needs_no_torch_numpy_or_sglang():
    code = (
        "import sys, peercache\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'sglang') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""


def test_properties(node):
    assert node.shards == 2
    assert node.pool_bytes == 64 * MIB
    assert node.closed is False
    assert "shards=2" in repr(node)


# --- config and start errors -------------------------------------------------


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"shards": "lots"}, "shards"),
        ({"global_segment_size": "64 potatoes"}, "global_segment_size"),
        ({"disk_enabled": "maybe"}, "disk_enabled"),
        ({"discovery_addr": None}, "discovery_addr"),
    ],
)
def test_bad_config_raises_value_error_naming_the_key(overrides, key):
    with pytest.raises(ValueError) as err:
        peercache.Node(config_json(**overrides))
    assert f'"{key}"' in str(err.value)


def test_config_that_is_not_json_raises_value_error():
    with pytest.raises(ValueError, match="not valid JSON"):
        peercache.Node("{discovery_addr: 127.0.0.1}")


def test_node_that_cannot_start_raises_runtime_error():
    # Valid keys, but 4 KiB of pool cannot give each of 2 shards a slot.
    with pytest.raises(RuntimeError, match="too small"):
        peercache.Node(config_json(global_segment_size="4kb"))


# --- data path ---------------------------------------------------------------


def test_round_trip_is_byte_exact(node):
    names = keys("rt", 64)
    src = random_pages(64, 64 * KIB)
    assert node.batch_set(names, src.ptrs, src.lens) == [True] * 64

    dst = Pages.filled(64, 64 * KIB)
    assert node.batch_get(names, dst.ptrs, dst.lens) == [True] * 64
    assert dst.contents() == src.contents()

    # In a different order, each page still lands in its own destination.
    order = list(reversed(range(64)))
    dst = Pages.filled(64, 64 * KIB)
    assert node.batch_get([names[i] for i in order], dst.ptrs, dst.lens) == [True] * 64
    assert dst.contents() == [src.contents()[i] for i in order]


def test_pages_of_different_sizes_round_trip(node):
    sizes = [1, 4095, 4096, 4097, 12345, 64 * KIB, 256 * KIB]
    names = keys("sizes", len(sizes))
    src = Pages(os.urandom(n) for n in sizes)
    assert node.batch_set(names, src.ptrs, src.lens) == [True] * len(sizes)
    dst = Pages(bytes(n) for n in sizes)
    assert node.batch_get(names, dst.ptrs, dst.lens) == [True] * len(sizes)
    assert dst.contents() == src.contents()


def test_misses_are_false_and_leave_their_destination_alone(node):
    present = keys("present", 4)
    src = random_pages(4, 16 * KIB)
    assert node.batch_set(present, src.ptrs, src.lens) == [True] * 4

    names = [present[0], "absent-0", present[1], "absent-1", present[2], present[3]]
    dst = Pages.filled(len(names), 16 * KIB, byte=0x5A)
    assert node.batch_get(names, dst.ptrs, dst.lens) == [True, False, True, False, True, True]
    got = dst.contents()
    assert [got[0], got[2], got[4], got[5]] == src.contents()
    assert got[1] == got[3] == b"\x5a" * (16 * KIB)


def test_get_with_wrong_length_is_false(node):
    src = random_pages(1, 8 * KIB)
    assert node.batch_set(["page"], src.ptrs, src.lens) == [True]
    dst = Pages.filled(1, 4 * KIB)
    assert node.batch_get(["page"], dst.ptrs, dst.lens) == [False]
    assert node.stats()["read_failures"] == 1


def test_null_pointers_are_false(node):
    assert node.batch_set(["null"], [0], [4096]) == [False]
    src = random_pages(1, 4096)
    assert node.batch_set(["page"], src.ptrs, src.lens) == [True]
    assert node.batch_get(["page"], [0], [4096]) == [False]


def test_exists_is_the_present_prefix(node):
    names = keys("ex", 10)
    src = random_pages(10, 4 * KIB)
    assert node.batch_set(names, src.ptrs, src.lens) == [True] * 10

    assert node.batch_exists(names) == 10
    assert node.batch_exists(names[:3]) == 3
    assert node.batch_exists(names[:6] + ["absent"] + names[6:]) == 6
    assert node.batch_exists(["absent"] + names) == 0
    assert node.batch_exists([]) == 0


def test_empty_batches(node):
    assert node.batch_set([], [], []) == []
    assert node.batch_get([], [], []) == []


def test_clear_drops_every_page(node):
    names = keys("clear", 8)
    src = random_pages(8, 4 * KIB)
    assert node.batch_set(names, src.ptrs, src.lens) == [True] * 8
    node.clear()
    assert node.batch_exists(names) == 0
    dst = Pages.filled(8, 4 * KIB)
    assert node.batch_get(names, dst.ptrs, dst.lens) == [False] * 8
    assert node.stats()["pool_keys"] == 0


def test_register_host_buffer_without_rdma_registers_nothing(make_node, capfd):
    node = make_node()
    # Seed 000's check that SGLang's host pool arrived is the registered-MRs
    # line: a node must not print it before a host buffer is registered.
    assert "registered MRs" not in capfd.readouterr().err
    assert node.stats()["host_buffer_bytes"] == 0
    buf = Pages.filled(2, 64 * KIB)
    # A node on TCP has no rail: nothing registered, nothing raised.
    assert node.register_host_buffer(buf.ptrs[0], buf.lens[0]) == 0
    assert f"registered MRs: recv={64 * KIB} bytes" in capfd.readouterr().err
    # But the buffer was handed over, which the gauge shows; the same
    # buffer again counts once.
    assert node.stats()["host_buffer_bytes"] == 64 * KIB
    assert node.register_host_buffer(buf.ptrs[0], buf.lens[0]) == 0
    assert node.register_host_buffer(buf.ptrs[1], buf.lens[1]) == 0
    assert node.stats()["host_buffer_bytes"] == 128 * KIB
    node.close()
    assert node.register_host_buffer(buf.ptrs[0], buf.lens[0]) == 0


# --- failures return False instead of raising --------------------------------


def test_mismatched_list_lengths_return_all_false(node):
    src = random_pages(3, 4 * KIB)
    names = keys("mm", 3)
    assert node.batch_set(names, src.ptrs[:2], src.lens) == [False] * 3
    assert node.batch_set(names, src.ptrs, src.lens[:1]) == [False] * 3
    assert node.batch_set(names[:2], src.ptrs, src.lens) == [False] * 2
    assert node.batch_get(names, src.ptrs, src.lens[:2]) == [False] * 3
    assert node.batch_get(names, [], []) == [False] * 3
    # Nothing was done: not even the well-formed part of a batch.
    stats = node.stats()
    assert stats["write_requests"] == 0
    assert stats["read_requests"] == 0
    assert node.batch_exists(names) == 0


def test_oversized_batch_returns_all_false(node):
    n = (1 << 16) + 1  # one page more than the engine accepts in a batch
    src = random_pages(1, 64)
    result = node.batch_set(keys("big", n), src.ptrs * n, src.lens * n)
    assert result == [False] * n
    assert node.stats()["write_requests"] == 0


def test_arguments_of_the_wrong_type_raise_type_error(node):
    # Caller bugs, refused before any work starts (not data-path failures).
    with pytest.raises(TypeError):
        node.batch_exists("a-str-is-not-a-list-of-keys")
    with pytest.raises(TypeError):
        node.batch_set(["k"], ["not-an-int"], [1])


def test_close_is_idempotent_and_later_calls_fail_softly(make_node):
    node = make_node()
    names = keys("closed", 4)
    src = random_pages(4, 4 * KIB)
    assert node.batch_set(names, src.ptrs, src.lens) == [True] * 4

    node.close()
    node.close()
    assert node.closed is True
    assert node.batch_set(names, src.ptrs, src.lens) == [False] * 4
    dst = Pages.filled(4, 4 * KIB)
    assert node.batch_get(names, dst.ptrs, dst.lens) == [False] * 4
    assert dst.contents() == Pages.filled(4, 4 * KIB).contents()
    assert node.batch_exists(names) == 0
    node.clear()
    # stats() keeps answering with the counters the node had when it closed.
    stats = node.stats()
    assert STATS_FIELDS <= set(stats), STATS_FIELDS - set(stats)
    assert stats["write_requests"] == 4
    assert stats["read_requests"] == 0
    assert node.shards == 2
    node.close()


def test_close_while_other_threads_run_batches(make_node):
    node = make_node()
    names = keys("race", 16)
    src = random_pages(16, 64 * KIB)
    assert node.batch_set(names, src.ptrs, src.lens) == [True] * 16

    outcomes = []
    errors = []

    def reader():
        dst = Pages.filled(16, 64 * KIB)
        try:
            while True:
                got = node.batch_get(names, dst.ptrs, dst.lens)
                outcomes.append(got)
                if got != [True] * 16:
                    break
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    while len(outcomes) < 6 and any(t.is_alive() for t in threads):
        time.sleep(0.001)
    node.close()
    for t in threads:
        t.join()
    assert errors == []
    # Each call saw the node either open (every page) or closed (no page).
    assert all(o in ([True] * 16, [False] * 16) for o in outcomes)
    assert outcomes.count([False] * 16) == 3


def test_a_forked_child_gets_misses_and_never_hangs(make_node):
    """After fork() the child has the node's memory but none of its threads:
    its calls are misses at once, close() returns, and the parent's node is
    untouched."""
    import signal
    import warnings

    node = make_node()
    names = keys("fork", 4)
    src = random_pages(4, 4 * KIB)
    assert node.batch_set(names, src.ptrs, src.lens) == [True] * 4
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process that runs threads:
        # exactly the case under test.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            dst = Pages.filled(4, 4 * KIB)
            ok = (
                node.batch_get(names, dst.ptrs, dst.lens) == [False] * 4
                and node.batch_exists(names) == 0
                and node.members == 0
                and node.stats()["read_requests"] == 0
            )
            node.close()
            code = 0 if ok and node.closed else 3
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("a call in the forked child never returned")
        time.sleep(0.05)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    dst = Pages.filled(4, 4 * KIB)
    assert node.batch_get(names, dst.ptrs, dst.lens) == [True] * 4
    assert dst.contents() == src.contents()
    assert node.closed is False


# --- stats -------------------------------------------------------------------


def test_stats_counters_are_consistent(node):
    size = 32 * KIB
    stats = node.stats()
    assert STATS_FIELDS <= set(stats), STATS_FIELDS - set(stats)
    assert all(isinstance(v, int) for v in stats.values())
    assert stats["pool_keys"] == 0
    assert 0 < stats["pool_capacity_bytes"] <= node.pool_bytes

    names = keys("st", 20)
    src = random_pages(20, size)
    assert node.batch_set(names, src.ptrs, src.lens) == [True] * 20
    # The same keys again: accepted (keys name contents) but nothing copied.
    assert node.batch_set(names[:5], src.ptrs[:5], src.lens[:5]) == [True] * 5
    stats = node.stats()
    assert stats["write_requests"] == 25
    assert stats["write_failures"] == 0
    assert stats["bytes_written"] == 20 * size
    assert stats["pool_keys"] == 20
    assert stats["pool_bytes_used"] == 20 * size

    wanted = names + keys("absent", 7)
    dst = Pages.filled(len(wanted), size)
    assert node.batch_get(wanted, dst.ptrs, dst.lens) == [True] * 20 + [False] * 7
    stats = node.stats()
    assert stats["read_requests"] == 27
    assert stats["read_hits"] == 20
    assert stats["read_local_hits"] == 20
    assert stats["read_misses"] == 7
    assert stats["read_failures"] == 0
    assert stats["bytes_read"] == 20 * size
    assert stats["read_hits"] + stats["read_misses"] == stats["read_requests"]

    assert node.batch_exists(names[:10] + ["absent"]) == 10
    stats = node.stats()
    assert stats["exists_requests"] == 11
    assert stats["exists_pages_found"] == 10
    assert stats["evictions"] == 0


# --- GIL ---------------------------------------------------------------------


def ran_meanwhile(action):
    """Runs `action()` and returns (how many times another Python thread
    ran meanwhile, its result).

    With a huge switch interval the interpreter never takes the GIL away from
    a running thread: the counter thread, woken right before the action, can
    only run while the action gives the GIL up of its own accord. The counter
    is read right before and right after, so any difference was made during
    the action.
    """
    counter = [0]
    go = threading.Event()
    stop = threading.Event()

    def count():
        while True:
            go.wait()  # blocks with the GIL released
            go.clear()
            if stop.is_set():
                return
            counter[0] += 1

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    counter_thread = threading.Thread(target=count)
    counter_thread.start()
    try:
        before = counter[0]
        go.set()  # wakes the counter thread, which now waits for the GIL
        result = action()
        return counter[0] - before, result
    finally:
        stop.set()
        go.set()
        counter_thread.join()
        sys.setswitchinterval(old_interval)


def test_batch_get_releases_the_gil(make_node):
    """Another Python thread runs while a large batch_get is in progress."""
    node = make_node(global_segment_size="256mb")
    pages, size = 32, 1 * MIB
    names = keys("gil", pages)
    src = random_pages(pages, size)
    assert node.batch_set(names, src.ptrs, src.lens) == [True] * pages
    dst = Pages.filled(pages, size)
    during_calls = 0
    for _ in range(10):
        during, ok = ran_meanwhile(lambda: node.batch_get(names, dst.ptrs, dst.lens))
        during_calls += during
        assert ok == [True] * pages
    assert dst.contents() == src.contents()
    assert during_calls > 0


def test_a_node_dropped_without_close_shuts_down_with_the_gil_released():
    """Dropping a node that was never closed shuts it down (leaving
    discovery, flushing the disk tier), which can take seconds: other Python
    threads keep running meanwhile."""
    node = peercache.Node(config_json(global_segment_size="16mb"))
    pages = random_pages(4, 64 * KIB)
    assert node.batch_set(keys("drop", 4), pages.ptrs, pages.lens) == [True] * 4
    holder = [node]
    del node
    # Emptying the list drops the last reference: the node is dropped there.
    during_drop, _ = ran_meanwhile(holder.clear)
    assert during_drop > 0
