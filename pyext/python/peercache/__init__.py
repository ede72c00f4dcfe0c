"""PeerCache: a peer-to-peer KV-cache backend for SGLang HiCache.

This package is loaded in-process by each SGLang rank. ``Node`` is the native
engine node (``peercache._native``); importing the package needs neither torch,
numpy nor sglang.

``HAS_RDMA`` says whether this build has an RDMA transport (it has none yet).
"""

from peercache._native import HAS_RDMA, Node, __version__

__all__ = ["HAS_RDMA", "Node", "__version__"]
