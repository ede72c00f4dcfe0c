"""The native module under the name seed 000's install check uses.

Seed 000 verifies an install with
``from peercache import _peercache as m; assert m.HAS_RDMA``. The native
module of this package is ``peercache._native``; this module re-exports it,
so that check runs as written: it passes on a build with the ``ibverbs``
feature and fails with "expected RDMA build" on one without (docs/rdma.md
says how to build with it).
"""

from peercache._native import HAS_RDMA, Node, PageLayout, __version__  # noqa: F401
