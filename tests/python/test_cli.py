"""The console scripts installed with the package run the Rust programs."""

import os
import signal
import socket
import subprocess
import sys
import time

from ports import free_port

BIN = os.path.dirname(sys.executable)


def script(name):
    path = os.path.join(BIN, name)
    assert os.path.exists(path), f"{name} is not installed next to {sys.executable}"
    return path


def test_help_of_both_scripts():
    for name, expected in [("peercache-meta", "--bind"), ("peercache-bench", "micro")]:
        out = subprocess.run([script(name), "--help"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert expected in out.stdout
    bad = subprocess.run([script("peercache-bench"), "no-such-mode"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no-such-mode" in bad.stderr


def test_meta_serves_discovery_and_stops_on_sigterm():
    port = free_port()
    proc = subprocess.Popen(
        [script("peercache-meta"), "--bind", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("peercache-meta never listened")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
        assert "peercache-meta stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()


def test_import_needs_neither_torch_nor_sglang():
    """`import peercache` and `peercache.store` work where torch and SGLang
    cannot be imported; the store then derives from the stand-in base and
    still serves generic calls."""
    code = """
import sys
sys.modules['torch'] = None      # makes `import torch` raise ImportError
sys.modules['sglang'] = None
import peercache, peercache.store as s
assert not s.HAS_SGLANG
assert s.PeerCacheStore.__mro__[1].__module__ == 'peercache.store'
store = s.PeerCacheStore(None, {'discovery_addr': '127.0.0.1:%d', 'global_segment_size': '32mb',
                                'metrics_enabled': False, 'disk_enabled': False})
assert store.set('k', b'hello world')
dst = bytearray(11)
assert store.get('k', dst) is dst and bytes(dst) == b'hello world'
assert store.exists('k') and store.batch_exists(['k', 'nope']) == 1
m = store.get_stats()
assert type(m).__name__ == 'StorageMetrics' and m.backup_pgs == [1]
store.close()
print('ok')
"""
    port = free_port()
    out = subprocess.run([sys.executable, "-c", code % port], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
