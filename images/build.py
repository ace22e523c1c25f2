#!/usr/bin/env python3
"""Build the edgeIoT guest image (kernel + initramfs) from Debian packages only.

Why this way: the lab must run on a bare Debian 12 machine with only Debian's apt and PyPI
reachable, and guests run under TCG with 128 MiB, so the image is a kernel from
`linux-image-6.1.0-*-amd64` plus one small initramfs: busybox-static, the virtio modules the
init loads (in dependency order, computed here from each module's `depends=`), Debian's
minimal Python 3.11 with only the stdlib modules the agent imports (found by importing the
agent with that very interpreter), and the agent (`agent/guest/edgeiot_agent`).

Outputs `images/out/{vmlinuz,vmlinux,initrd.img,manifest.json}` (`vmlinux` is the same
kernel uncompressed, which boots ~2.5 s faster under TCG; the manifest's `boot_kernel`).
Rebuilt only when the inputs hash (resolved package versions, agent sources, init, this
script) changes; resolving versions with apt-cache is skipped while apt's lists are
unchanged, so a no-op run takes ~0.05 s.
`.deb`s and their unpacked trees are cached in `images/cache/`.

Standalone on purpose (stdlib only, no project imports): `make image` runs it before the
project's own dependencies are needed. Usage: `python3 images/build.py [--force]`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
CACHE = HERE / "cache"
INIT = HERE / "init"
AGENT = ROOT / "agent" / "guest" / "edgeiot_agent"
APT_LISTS = Path("/var/lib/apt/lists")

KERNEL_META = "linux-image-amd64"
USER_PACKAGES = [
    "busybox-static",
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libc6",
    "zlib1g",
    "libexpat1",
    "libssl3",
]
# virtio_pci is the bus driver (nothing `depends=` on it), so it is named explicitly.
MODULE_ROOTS = ["virtio_pci", "virtio_net", "virtio_console"]
# Imported by the interpreter itself (runpy for `-m`, codecs, error paths), beyond what the agent
# import pulls in.
EXTRA_STDLIB = ["runpy", "encodings.ascii", "encodings.latin_1", "encodings.utf_8", "traceback"]
# Optional imports (shutil's archive support via argparse) whose C libraries are not shipped;
# their importers catch ImportError.
STDLIB_EXCLUDE = {"bz2", "_bz2", "lzma", "_lzma", "_compression"}
CMDLINE_BASE = "console=ttyS0 panic=-1 quiet"
CMDLINE_KEYS = {
    "edgeiot.ip": "ADDR/PREFIX for eth0 (omit: no network configuration)",
    "edgeiot.gw": "default gateway (optional)",
    "edgeiot.name": "hostname, reported by the agent (optional)",
}
AGENT_PORT = 7070
MULTIARCH = "x86_64-linux-gnu"
PYVER = "3.11"
IMAGE_AGENT_DIR = "opt/edgeiot"


class BuildError(Exception):
    """A failure worth one line on stderr and exit status 1."""


def log(msg: str) -> None:
    print(f"images/build: {msg}", file=sys.stderr, flush=True)


def run(args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a command (argument list, never a shell); BuildError with its last stderr line."""
    try:
        proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise BuildError(f"{args[0]} not found (install it: {exc})") from None
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise BuildError(f"{' '.join(args[:3])}...: {last}")
    return proc.stdout


# -- package versions ------------------------------------------------------------------
def apt_lists_stamp() -> str:
    """Changes whenever `apt-get update` changes the package lists (names, sizes, mtimes)."""
    h = hashlib.sha256()
    if APT_LISTS.is_dir():
        for entry in sorted(os.scandir(APT_LISTS), key=lambda e: e.name):
            if entry.is_file() and entry.name != "lock":
                st = entry.stat()
                h.update(f"{entry.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def parse_apt_show(text: str) -> dict[str, dict[str, str]]:
    """`apt-cache show` stanzas -> {package: {field: value}} (first stanza per package)."""
    out: dict[str, dict[str, str]] = {}
    for stanza in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            key, sep, value = line.partition(": ")
            if sep and not line.startswith(" "):
                fields[key] = value
        if "Package" in fields:
            out.setdefault(fields["Package"], fields)
    return out


def kernel_from_meta(depends: str) -> tuple[str, str]:
    """`linux-image-6.1.0-56-amd64 (= 6.1.192-2)` -> (package, version)."""
    m = re.search(r"(linux-image-6\.1\.0-\d+-amd64)\s*\(=\s*([^)\s]+)\)", depends)
    if not m:
        raise BuildError(f"{KERNEL_META} does not depend on a linux-image-6.1.0-*-amd64: {depends}")
    return m.group(1), m.group(2)


def resolve_versions() -> dict[str, str]:
    """Candidate versions apt offers, the kernel package first."""
    args = ["apt-cache", "show", "--no-all-versions", KERNEL_META, *USER_PACKAGES]
    try:
        shown = parse_apt_show(run(args))
    except BuildError as exc:
        raise BuildError(f"cannot resolve packages with apt-cache: {exc}") from None
    missing = [p for p in [KERNEL_META, *USER_PACKAGES] if p not in shown]
    if missing:
        raise BuildError(f"apt does not offer: {', '.join(missing)} (run apt-get update?)")
    kpkg, kver = kernel_from_meta(shown[KERNEL_META].get("Depends", ""))
    return {kpkg: kver, **{p: shown[p]["Version"] for p in USER_PACKAGES}}


# -- inputs and cache check ------------------------------------------------------------
def source_files() -> list[Path]:
    files = [Path(__file__).resolve(), INIT]
    files += sorted(p for p in AGENT.rglob("*.py") if "__pycache__" not in p.parts)
    return files


def inputs_hash(versions: dict[str, str]) -> str:
    h = hashlib.sha256()
    for pkg, ver in sorted(versions.items()):
        h.update(f"pkg {pkg}={ver}\n".encode())
    for path in source_files():
        h.update(f"file {path.relative_to(ROOT)}\n".encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def load_manifest() -> dict[str, object] | None:
    try:
        data = json.loads((OUT / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def outputs_intact(manifest: dict[str, object]) -> bool:
    sizes = manifest.get("sizes")
    if not isinstance(sizes, dict):
        return False
    for name, key in (("vmlinuz", "vmlinuz_bytes"), ("vmlinux", "vmlinux_bytes"),
                      ("initrd.img", "initrd_gz_bytes")):
        path = OUT / name
        if not path.is_file() or path.stat().st_size != sizes.get(key):
            return False
    return True


# -- fetch and unpack ------------------------------------------------------------------
def fetch(pkg: str, version: str) -> Path:
    """`apt-get download pkg=version` into images/cache/debs/<pkg>/<version>/ (once)."""
    dest = CACHE / "debs" / pkg / version.replace(":", "%3a")
    debs = sorted(dest.glob("*.deb")) if dest.is_dir() else []
    if debs:
        return debs[0]
    dest.mkdir(parents=True, exist_ok=True)
    log(f"downloading {pkg}={version}")
    try:
        run(["apt-get", "download", "-q", f"{pkg}={version}"], cwd=dest)
    except BuildError as exc:
        raise BuildError(f"cannot fetch {pkg}={version}: {exc}") from None
    debs = sorted(dest.glob("*.deb"))
    if not debs:
        raise BuildError(f"cannot fetch {pkg}={version}: apt-get download produced no .deb")
    return debs[0]


def unpack(debs: list[Path], name: str) -> Path:
    """Unpack .debs into one tree images/cache/tree/<name> (atomically, once per name)."""
    dest = CACHE / "tree" / name
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=dest.parent))
    try:
        for deb in debs:
            run(["dpkg-deb", "-x", str(deb), str(tmp)])
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def short_hash(items: list[str]) -> str:
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:12]


# -- the image's file table --------------------------------------------------------------
@dataclass
class Entry:
    """One initramfs member: a directory, a file (from `src` or `data`), a symlink or a node."""

    kind: str  # "dir" | "file" | "symlink" | "chr"
    mode: int = 0o755
    src: Path | None = None
    data: bytes | None = None
    target: str = ""
    rdev: tuple[int, int] = (0, 0)


@dataclass
class Image:
    entries: dict[str, Entry] = field(default_factory=dict)

    def mkdir(self, path: str) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            self.entries.setdefault("/".join(parts[:i]), Entry("dir"))

    def add(self, path: str, entry: Entry) -> None:
        path = path.strip("/")
        if "/" in path:
            self.mkdir(path.rsplit("/", 1)[0])
        self.entries[path] = entry

    def file(self, path: str, src: Path, mode: int | None = None) -> None:
        real = src.resolve()
        perm = mode if mode is not None else stat.S_IMODE(real.stat().st_mode)
        self.add(path, Entry("file", perm, src=real))

    def data(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.add(path, Entry("file", mode, data=data))


# -- kernel and modules ------------------------------------------------------------------
def module_index(ktree: Path, kver: str) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for ko in (ktree / "lib" / "modules" / kver / "kernel").rglob("*.ko"):
        index[ko.name[:-3].replace("-", "_")] = ko
    return index


def module_depends(ko: Path) -> list[str]:
    m = re.search(rb"\x00depends=([^\x00]*)\x00", ko.read_bytes())
    if not m or not m.group(1):
        return []
    return [d.replace("-", "_") for d in m.group(1).decode().split(",") if d]


def module_order(roots: list[str], index: dict[str, Path]) -> list[str]:
    """Depth-first post-order over `depends=`: every module after all it depends on."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise BuildError(f"module dependency cycle at {name}")
        if name not in index:
            raise BuildError(f"kernel module {name} not found in the kernel package")
        visiting.add(name)
        for dep in module_depends(index[name]):
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for root in roots:
        visit(root)
    return order


def find_kernel(ktree: Path) -> tuple[str, Path]:
    kernels = sorted((ktree / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise BuildError("no /boot/vmlinuz-* in the kernel package")
    return kernels[0].name[len("vmlinuz-"):], kernels[0]


def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """The uncompressed ELF kernel inside an xz bzImage, or None if it is not one.

    NOTE: under TCG the bzImage's own xz decompression costs ~2.5 s of boot; QEMU boots the
    ELF directly through its PVH entry point (the kernel has CONFIG_PVH=y), so `vmlinux`
    reaches the agent that much sooner. `-kernel` and libvirt's <kernel> take either file.
    """
    start = bzimage.find(b"\xfd7zXZ\x00")
    if start < 0:
        return None
    try:
        elf = lzma.LZMADecompressor().decompress(bzimage[start:])
    except lzma.LZMAError:
        return None
    return elf if elf[:4] == b"\x7fELF" else None


def add_modules(image: Image, ktree: Path, kver: str) -> list[str]:
    index = module_index(ktree, kver)
    order = module_order(MODULE_ROOTS, index)
    for name in order:
        image.file(f"lib/modules/edgeiot/{name}.ko", index[name], 0o644)
    image.data("lib/modules/edgeiot/load-order", ("\n".join(order) + "\n").encode())
    return order


# -- userland: busybox, ELF libraries, Python ---------------------------------------------
def add_base(image: Image, sysroot: Path) -> None:
    for d in ("dev", "proc", "sys", "tmp", "run", "etc", "root", "var/log"):
        image.mkdir(d)
    # NOTE: the kernel opens /dev/console *before* /init runs and before devtmpfs is
    # mounted; without this node the init has no stdout and the console stays silent.
    image.add("dev/console", Entry("chr", 0o600, rdev=(5, 1)))
    image.add("dev/null", Entry("chr", 0o666, rdev=(1, 3)))
    image.file("init", INIT, 0o755)
    busybox = sysroot / "bin" / "busybox"
    image.file("bin/busybox", busybox, 0o755)
    for applet in run([str(busybox), "--list-full"]).split():
        if applet.strip("/") != "bin/busybox":
            image.add(applet, Entry("symlink", 0o777, target="/bin/busybox"))
    image.data("etc/hostname", b"edgeiot\n")
    image.data("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    image.data("etc/group", b"root:x:0:\n")


def elf_needed(path: Path) -> list[str]:
    out = run(["objdump", "-p", str(path)])
    return re.findall(r"^\s*NEEDED\s+(\S+)", out, re.M)


def add_elf_closure(image: Image, sysroot: Path, binaries: list[Path]) -> list[str]:
    """Copy the shared libraries `binaries` need into /lib/<multiarch>; returns their names."""
    libdirs = [sysroot / "lib" / MULTIARCH, sysroot / "usr" / "lib" / MULTIARCH]
    seen: list[str] = []
    queue = [n for b in binaries for n in elf_needed(b)]
    while queue:
        name = queue.pop(0)
        if name in seen:
            continue
        found = next((d / name for d in libdirs if (d / name).exists()), None)
        if found is None:
            raise BuildError(f"shared library {name} not found in the unpacked packages")
        seen.append(name)
        image.file(f"lib/{MULTIARCH}/{name}", found, 0o755)
        queue += elf_needed(found)
    # The interpreter path baked into every binary.
    image.add("lib64/ld-linux-x86-64.so.2",
              Entry("symlink", 0o777, target=f"/lib/{MULTIARCH}/ld-linux-x86-64.so.2"))
    return seen


def sysroot_env(sysroot: Path) -> dict[str, str]:
    libs = f"{sysroot}/lib/{MULTIARCH}:{sysroot}/usr/lib/{MULTIARCH}"
    return {"PYTHONHOME": str(sysroot / "usr"), "LD_LIBRARY_PATH": libs, "LC_ALL": "C"}


# Runs under the unpacked interpreter: import the agent and exercise it (stdlib modules are
# often imported lazily, e.g. argparse -> gettext -> locale), then list every module file
# loaded. Doubles as a smoke test of the agent under the exact interpreter the guest runs.
_PROBE = """
import importlib, json, socket, sys
sys.path.insert(0, sys.argv[1])
for name in sys.argv[2:]:
    importlib.import_module(name)
from edgeiot_agent import app
config = app.parse_args(["--host", "127.0.0.1", "--port", "0", "--name", "probe"])
agent = app.Agent(config)
agent.start()
try:
    with socket.create_connection(agent.server.address, timeout=10) as sock:
        reader = sock.makefile("rb")
        for line in [b'{"op":"ping"}', b'{"op":"dirty","pages_per_s":100,"working_set_mib":1}',
                     b'{"op":"status"}', b'{"op":"nope"}', b'not json']:
            sock.sendall(line + b"\\n")
            json.loads(reader.readline())
finally:
    agent.stop()
for name, mod in sorted(sys.modules.items()):
    path = getattr(mod, "__file__", None)
    if path:
        print(name + "\\t" + path)
"""

# Runs under the unpacked interpreter: compile (source, image path, output) triples.
_COMPILE = """
import py_compile, sys
args = sys.argv[1:]
for src, dfile, out in zip(args[0::3], args[1::3], args[2::3]):
    py_compile.compile(src, cfile=out, dfile=dfile, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
"""


def stdlib_closure(sysroot: Path) -> list[Path]:
    """Stdlib files (.py and extension .so) the agent loads, via the unpacked Python itself."""
    python = sysroot / "usr" / "bin" / f"python{PYVER}"
    out = run([str(python), "-S", "-E", "-c", _PROBE, str(AGENT.parent), *EXTRA_STDLIB],
              env=sysroot_env(sysroot))
    stdlib = (sysroot / "usr" / "lib" / f"python{PYVER}").resolve()
    files: list[Path] = []
    for line in out.splitlines():
        name, path = line.split("\t", 1)
        p = Path(path).resolve()
        if p.is_relative_to(stdlib) and name not in STDLIB_EXCLUDE:
            files.append(p)
    if not any(p.name == "os.py" for p in files):
        files.append(stdlib / "os.py")  # the prefix landmark, though frozen in the binary
    return files


def compile_pyc(sysroot: Path, jobs: list[tuple[Path, str, Path]]) -> None:
    python = sysroot / "usr" / "bin" / f"python{PYVER}"
    args = [str(a) for job in jobs for a in job]
    run([str(python), "-S", "-E", "-c", _COMPILE, *args], env=sysroot_env(sysroot))


def add_python(image: Image, sysroot: Path, work: Path) -> list[Path]:
    """Interpreter + stdlib subset as sourceless .pyc; returns the ELF files to resolve."""
    python = sysroot / "usr" / "bin" / f"python{PYVER}"
    image.file(f"usr/bin/python{PYVER}", python, 0o755)
    image.add("usr/bin/python3", Entry("symlink", 0o777, target=f"python{PYVER}"))
    stdlib = (sysroot / "usr" / "lib" / f"python{PYVER}").resolve()
    elves = [python]
    jobs: list[tuple[Path, str, Path]] = []
    for src in stdlib_closure(sysroot):
        rel = src.relative_to(stdlib).as_posix()
        dest = f"usr/lib/python{PYVER}/{rel}"
        if src.suffix == ".py":
            jobs.append((src, "/" + dest, work / "pyc" / (rel + "c")))
        else:
            image.file(dest, src, 0o755)
            elves.append(src)
    for src in agent_sources():
        rel = src.relative_to(AGENT.parent).as_posix()
        dest = f"{IMAGE_AGENT_DIR}/{rel}"
        image.file(dest, src, 0o644)
        cached = f"{Path(rel).parent}/__pycache__/{src.stem}.cpython-311.pyc"
        jobs.append((src, "/" + dest, work / "agent" / cached))
    compile_pyc(sysroot, jobs)
    for _src, dfile, out in jobs:
        if dfile.startswith(f"/usr/lib/python{PYVER}/"):
            image.file(dfile.lstrip("/") + "c", out, 0o644)  # sourceless stdlib module
        else:
            image.file(f"{IMAGE_AGENT_DIR}/{out.relative_to(work / 'agent').as_posix()}",
                       out, 0o644)
    return elves


def agent_sources() -> list[Path]:
    return sorted(p for p in AGENT.rglob("*.py") if "__pycache__" not in p.parts)


# -- cpio (newc) writer -------------------------------------------------------------------
def _newc_header(ino: int, mode: int, size: int, name: bytes, rdev: tuple[int, int]) -> bytes:
    fields = [ino, mode, 0, 0, 1, 0, size, 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def write_cpio(image: Image, out: io.BufferedIOBase) -> int:
    """Write a newc archive, root-owned and with mtime 0 (reproducible); returns its size."""
    kinds = {"dir": stat.S_IFDIR, "file": stat.S_IFREG, "symlink": stat.S_IFLNK,
             "chr": stat.S_IFCHR}
    total = 0
    members = sorted(image.entries.items())
    for ino, (path, e) in enumerate([*members, ("TRAILER!!!", Entry("file", 0))], start=1):
        if e.kind == "file":
            body = e.data if e.data is not None else (e.src.read_bytes() if e.src else b"")
        else:
            body = e.target.encode() if e.kind == "symlink" else b""
        name = path.encode()
        mode = kinds[e.kind] | e.mode if path != "TRAILER!!!" else 0
        head = _newc_header(ino, mode, len(body), name, e.rdev) + name + b"\0"
        chunk = head + _pad(len(head)) + body + _pad(len(body))
        out.write(chunk)
        total += len(chunk)
    return total


# -- the build ----------------------------------------------------------------------------
def build(versions: dict[str, str], digest: str, lists_stamp: str) -> dict[str, object]:
    started = time.monotonic()
    kpkg = next(iter(versions))
    debs = {pkg: fetch(pkg, ver) for pkg, ver in versions.items()}
    ktree = unpack([debs[kpkg]], f"{kpkg}_{versions[kpkg]}")
    user = [debs[p] for p in USER_PACKAGES]
    sysroot = unpack(user, "sysroot-" + short_hash([d.name for d in user]))
    kver, vmlinuz = find_kernel(ktree)

    image = Image()
    add_base(image, sysroot)
    modules = add_modules(image, ktree, kver)
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build.", dir=CACHE) as tmp:
        elves = add_python(image, sysroot, Path(tmp))
        libs = add_elf_closure(image, sysroot, elves)
        raw = io.BytesIO()
        raw_size = write_cpio(image, raw)
    log(f"initramfs: {len(image.entries)} entries, {raw_size / 1e6:.1f} MB uncompressed")
    gz = gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)
    write_atomic(OUT / "initrd.img", gz)
    bzimage = vmlinuz.read_bytes()
    write_atomic(OUT / "vmlinuz", bzimage)
    elf = extract_vmlinux(bzimage)
    if elf is None:
        raise BuildError("cannot extract an ELF vmlinux from the kernel's bzImage")
    write_atomic(OUT / "vmlinux", elf)
    manifest: dict[str, object] = {
        "kernel_version": kver,
        "kernel_package": f"{kpkg}={versions[kpkg]}",
        "boot_kernel": "vmlinux",
        "cmdline_base": CMDLINE_BASE,
        "cmdline_keys": CMDLINE_KEYS,
        "agent_port": AGENT_PORT,
        "packages": versions,
        "modules": modules,
        "libraries": libs,
        "sizes": {
            "vmlinuz_bytes": len(bzimage),
            "vmlinux_bytes": len(elf),
            "initrd_gz_bytes": len(gz),
            "initrd_uncompressed_bytes": raw_size,
        },
        "inputs_hash": digest,
        "apt_lists_stamp": lists_stamp,
        "build_time_s": round(time.monotonic() - started, 2),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_atomic(OUT / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def program(force: bool) -> int:
    CACHE.mkdir(parents=True, exist_ok=True)
    previous = load_manifest()
    stamp = apt_lists_stamp()
    versions: dict[str, str] | None = None
    if previous and previous.get("apt_lists_stamp") == stamp:
        pkgs = previous.get("packages")
        if isinstance(pkgs, dict) and len(pkgs) == len(USER_PACKAGES) + 1:
            versions = {str(k): str(v) for k, v in pkgs.items()}
    if versions is None:
        versions = resolve_versions()
    digest = inputs_hash(versions)
    if not force and previous and previous.get("inputs_hash") == digest \
            and outputs_intact(previous):
        print(f"images/out: up to date (kernel {previous.get('kernel_version')}, "
              f"inputs {digest[:12]})")
        return 0
    manifest = build(versions, digest, stamp)
    sizes = manifest["sizes"]
    assert isinstance(sizes, dict)
    print(f"images/out: built kernel {manifest['kernel_version']}, initrd "
          f"{sizes['initrd_gz_bytes'] / 1e6:.1f} MB gz in {manifest['build_time_s']} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    try:
        return program(args.force)
    except BuildError as exc:
        print(f"images/build: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
