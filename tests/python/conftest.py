"""Shared helpers for the PeerCache Python tests.

Only the public API of the installed ``peercache`` package and the standard
library are used: page buffers are ``bytearray``s exposed to the engine through
ctypes addresses, as SGLang exposes tensor memory through ``data_ptr()``.
"""

import ctypes
import json
import os

import pytest

import peercache

BASE_CONFIG = {
    "discovery_addr": "127.0.0.1:31998",
    "global_segment_size": "64mb",
    "shards": 2,
    "disk_enabled": False,
    "metrics_enabled": False,
}


def config_json(**overrides):
    """The test config as JSON, with some keys replaced or added."""
    config = dict(BASE_CONFIG)
    config.update(overrides)
    return json.dumps(config)


class Pages:
    """Page buffers plus the pointer and length lists a batch call takes.

    The ctypes views keep the bytearrays exported (they cannot be resized), and
    this object keeps both alive for as long as the pointers are used.
    """

    def __init__(self, contents):
        self.buffers = [bytearray(c) for c in contents]
        self.views = [(ctypes.c_char * len(b)).from_buffer(b) for b in self.buffers]
        self.ptrs = [ctypes.addressof(v) for v in self.views]
        self.lens = [len(b) for b in self.buffers]

    @classmethod
    def filled(cls, count, size, byte=0xAB):
        """`count` destination pages of `size` bytes, every byte `byte`."""
        return cls(bytes([byte]) * size for _ in range(count))

    def contents(self):
        return [bytes(b) for b in self.buffers]


def require_sglang():
    """Skips the calling test module when SGLang (with torch) is not
    importable; under CI (``CI`` set) a missing SGLang fails instead, so the
    integration tests can never silently stop running."""
    try:
        import sglang.srt.mem_cache.hicache_storage  # noqa: F401
    except Exception as e:
        if os.environ.get("CI"):
            raise RuntimeError(f"SGLang is required for the integration tests under CI: {e}") from e
        pytest.skip(f"SGLang is not importable ({e})", allow_module_level=True)


@pytest.fixture
def make_node():
    """Starts nodes with `config_json(**overrides)` and closes them afterwards."""
    nodes = []

    def make(**overrides):
        node = peercache.Node(config_json(**overrides))
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.close()


@pytest.fixture
def node(make_node):
    return make_node()
