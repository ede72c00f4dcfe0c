"""Console scripts: ``peercache-meta`` and ``peercache-bench``.

Both hand ``sys.argv`` to the Rust implementation in ``peercache._native``,
so the installed commands behave exactly like the standalone Rust binaries.
``python -m peercache.cli meta|bench ...`` runs the same entry points (the
benchmark uses it to start its second process).
"""

import os
import signal
import sys

from peercache import _native


def meta_main() -> None:
    """``peercache-meta``: a dedicated discovery host."""
    sys.exit(_native.run_meta(["peercache-meta"] + sys.argv[1:]))


def bench_main() -> None:
    """``peercache-bench``: the benchmark suite."""
    # The Rust code runs with the GIL released, where Python's own SIGINT
    # handler could only set a flag nobody reads: let Ctrl-C stop the process
    # as it stops the standalone binary.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    again = [sys.executable, "-m", "peercache.cli", "bench"]
    # `--frontend python` runs peercache.bench_driver with this interpreter.
    os.environ.setdefault("PEERCACHE_PYTHON", sys.executable)
    sys.exit(_native.run_bench(["peercache-bench"] + sys.argv[1:], again))


def _main() -> None:
    commands = {"meta": meta_main, "bench": bench_main}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.stderr.write("usage: python -m peercache.cli {meta|bench} [args...]\n")
        sys.exit(2)
    command = commands[sys.argv[1]]
    del sys.argv[1]
    command()


if __name__ == "__main__":
    _main()
