"""PeerCache: a peer-to-peer KV-cache backend for SGLang HiCache.

This package is loaded in-process by each SGLang rank. ``PeerCacheStore``
(``peercache.store``) is the backend SGLang's dynamic factory loads; ``Node``
is the native engine node it runs on (``peercache._native``). Importing the
package needs neither torch, numpy nor sglang.

``HAS_RDMA`` says whether this build has the libibverbs data path (built with
the ``ibverbs`` feature, see docs/rdma.md); without it pages move over TCP.
"""

from peercache._native import HAS_RDMA, Node, PageLayout, __version__

__all__ = ["HAS_RDMA", "Node", "PageLayout", "PeerCacheStore", "__version__"]


def __getattr__(name):
    # Lazy, so `import peercache` stays light; `peercache.store` is importable
    # directly too (that is the module_path SGLang is given).
    if name == "PeerCacheStore":
        from peercache.store import PeerCacheStore

        return PeerCacheStore
    raise AttributeError(f"module 'peercache' has no attribute {name!r}")
