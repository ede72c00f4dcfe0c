#!/usr/bin/env python3
"""Lets the CUDA build of torch from PyPI import on a machine with no GPU and
without its nvidia-* wheels (3.2 GB installed), for the SGLang integration tests.

torch's shared objects name CUDA libraries (libcudart, libcublas, libcudnn,
libnccl, ...) as DT_NEEDED, so the dynamic loader refuses `import torch` when
they are absent, although nothing in a CPU-only run calls into them. This script
builds, for every such library that the loader cannot find, a small stand-in
with the same soname that defines each symbol torch asks of it, at the symbol
version torch asks for, as a function that does nothing and reports an error.
The stand-ins go into torch/lib, which torch's objects already search
($ORIGIN in their RUNPATH).

What to define is not guessed from names: the loader itself is asked. Each
round runs `ldd -r` on torch's objects, takes every symbol it reports
undefined, and adds it to a stand-in: a versioned symbol to the library whose
version it carries (the object's .gnu.version_r says which file that is), an
unversioned one to a missing library the object needs directly (that library
is in the object's lookup scope, so the reference binds there). Rounds repeat
until `ldd -r` reports nothing.

Behaviour of the stand-ins: every function returns 100, which is
cudaErrorNoDevice in the runtime API and an error status in the other
libraries; the device count is 0, so torch.cuda.is_available() is False; the
functions that return an error message return a static string, so an error
path that prints one does not crash. libcuda.so.1 (the driver) is not stood
in for: only libcaffe2_nvrtc.so needs it, and torch loads that lazily, on GPU
use.

Needs gcc, readelf and ldd. Usage: VENV/bin/python cuda_stubs.py
"""
import glob
import importlib.util
import os
import re
import subprocess
import sys
import tempfile

# The driver library: never stood in for (see the docstring).
DRIVER = "libcuda.so.1"
# Symbols the interpreter defines (torch/_C and libtorch_python use them);
# `ldd -r` reports them undefined because it loads no Python.
PYTHON_SYMBOL = re.compile(r"^_?Py")
# Functions that return a message; every other stand-in returns an int status.
MESSAGE_SUFFIXES = ("ErrorString", "ErrorName", "StatusString", "StatusName")
# Functions with an int* out-parameter that torch reads after the call.
COUNT_OUT = {"cudaGetDeviceCount"}
VERSION_OUT = {"cudaDriverGetVersion", "cudaRuntimeGetVersion", "ncclGetVersion"}
MAX_ROUNDS = 8


def run(*args):
    return subprocess.run(args, capture_output=True, text=True, check=False).stdout


def needed(path):
    """The DT_NEEDED sonames of one object."""
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", run("readelf", "-d", "-W", path))


def version_files(path):
    """Version name -> the file that must define it, from .gnu.version_r."""
    out = {}
    current = None
    for line in run("readelf", "-V", "-W", path).splitlines():
        m = re.search(r"File: (\S+)", line)
        if m:
            current = m.group(1)
            continue
        m = re.search(r"Name: (\S+)", line)
        if m and current is not None:
            out.setdefault(current, set()).add(m.group(1))
    return out


def not_found(path):
    """Sonames the loader cannot find for this object (directly or through its deps)."""
    return set(re.findall(r"^\s*(\S+) => not found", run("ldd", path), re.M))


def defined(path):
    """Names of the dynamic symbols this object defines."""
    out = set()
    for line in run("readelf", "--dyn-syms", "-W", path).splitlines():
        f = line.split()
        if len(f) >= 8 and f[0].endswith(":") and f[6] != "UND":
            out.add(f[7].split("@")[0])
    return out


def undefined(path):
    """(symbol, version or None) pairs the loader cannot bind for this object."""
    found = set()
    for line in run("ldd", "-r", path).splitlines():
        m = re.match(r"\s*undefined symbol: ([^\s,]+)(?:, version (\S+))?", line)
        if m and not PYTHON_SYMBOL.match(m.group(1)):
            found.add((m.group(1), m.group(2)))
    return found


def stub_source(symbols):
    lines = ['static const char peercache_stub_message[] = "CUDA stand-in: no GPU on this machine";']
    for s in sorted(symbols):
        if s in COUNT_OUT or s in VERSION_OUT:
            lines.append(f"int {s}(int *out) {{ if (out) *out = 0; return 100; }}")
        elif s.endswith(MESSAGE_SUFFIXES):
            lines.append(f"const char *{s}(void) {{ return peercache_stub_message; }}")
        else:
            lines.append(f"long {s}(void) {{ return 100; }}")
    return "\n".join(lines) + "\n"


def version_script(versions, symbols_by_version, unversioned):
    """One node per version the callers require; unversioned symbols join the
    first node (a default-versioned definition binds unversioned references)."""
    nodes = sorted(versions)
    if not nodes:
        return None
    out = []
    for i, node in enumerate(nodes):
        syms = set(symbols_by_version.get(node, ()))
        if i == 0:
            syms |= unversioned
        # A node must define something; this marker also tells a stand-in apart.
        syms.add("peercache_stub_" + re.sub(r"\W", "_", node))
        body = " ".join(f"{s};" for s in sorted(syms))
        out.append(f"{node} {{ global: {body} }};")
    out.append("")
    return "\n".join(out)


def build(libdir, soname, lib, workdir):
    symbols = set(lib["unversioned"])
    for syms in lib["versioned"].values():
        symbols |= syms
    markers = {"peercache_stub_" + re.sub(r"\W", "_", v) for v in lib["versions"]}
    src = os.path.join(workdir, soname + ".c")
    with open(src, "w") as f:
        f.write(stub_source(symbols))
        for m in sorted(markers):
            f.write(f"int {m};\n")
    cmd = ["gcc", "-shared", "-fPIC", "-O0", "-w", "-o", os.path.join(libdir, soname),
           f"-Wl,-soname,{soname}", src]
    script = version_script(lib["versions"], lib["versioned"], lib["unversioned"])
    if script:
        vs = os.path.join(workdir, soname + ".map")
        with open(vs, "w") as f:
            f.write(script)
        cmd.append(f"-Wl,--version-script,{vs}")
    subprocess.run(cmd, check=True)


def main():
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        sys.exit("cuda_stubs: torch is not installed in this interpreter")
    torch_dir = os.path.dirname(spec.origin)
    libdir = os.path.join(torch_dir, "lib")
    objects = sorted(glob.glob(os.path.join(libdir, "*.so*")) + glob.glob(os.path.join(torch_dir, "_C*.so")))
    objects = [o for o in objects if DRIVER not in needed(o)]

    missing = set().union(*(not_found(o) for o in objects)) - {DRIVER}
    if not missing:
        print("cuda_stubs: torch finds every library it needs; nothing to do")
        return
    info = {o: (needed(o), version_files(o)) for o in objects}
    # `ldd -r` on one object does not load torch's other objects that are not
    # its dependencies, so it reports their symbols undefined too. A stand-in
    # defining one of those would win the lookup over torch's own definition.
    torch_defines = set().union(*(defined(o) for o in objects))
    libs = {m: {"versions": set(), "versioned": {}, "unversioned": set()} for m in missing}
    # Every version a caller requires of a missing file must exist in its stand-in.
    for _, files in info.values():
        for soname, versions in files.items():
            if soname in libs:
                libs[soname]["versions"] |= versions

    with tempfile.TemporaryDirectory() as workdir:
        for soname, lib in libs.items():
            build(libdir, soname, lib, workdir)
        for round_no in range(1, MAX_ROUNDS + 1):
            added = 0
            for o in objects:
                deps, files = info[o]
                direct = sorted(d for d in deps if d in libs)
                for sym, version in undefined(o):
                    if sym in torch_defines:
                        continue
                    owner = None
                    if version is not None:
                        owner = next((f for f, vs in files.items() if version in vs and f in libs), None)
                    elif direct:
                        owner = direct[0]
                    if owner is None:
                        continue  # bound elsewhere at run time (or not ours to fix)
                    lib = libs[owner]
                    bucket = lib["versioned"].setdefault(version, set()) if version else lib["unversioned"]
                    if sym not in bucket:
                        bucket.add(sym)
                        added += 1
            if added == 0:
                break
            for soname, lib in libs.items():
                build(libdir, soname, lib, workdir)
            print(f"cuda_stubs: round {round_no}: {added} symbols added")
        else:
            sys.exit(f"cuda_stubs: still undefined symbols after {MAX_ROUNDS} rounds")

    left = {(o, s) for o in objects for s in undefined(o)}
    owned = [(o, s) for o, s in left
             if s[0] not in torch_defines and (s[1] is not None or any(d in libs for d in info[o][0]))]
    if owned:
        sys.exit(f"cuda_stubs: the loader still cannot bind {owned[:5]} ...")
    total = sum(len(l["unversioned"]) + sum(len(v) for v in l["versioned"].values()) for l in libs.values())
    print(f"cuda_stubs: {len(libs)} stand-in libraries, {total} symbols, in {libdir}")


if __name__ == "__main__":
    main()
