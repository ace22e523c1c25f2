"""images/build.py's pure parts and its cache: rebuilt only when the inputs change.

The builder is a standalone script (stdlib only), loaded here from its path; nothing is
downloaded or built: `resolve_versions` and `build` are replaced where the cache is tested.
"""

from __future__ import annotations

import importlib.util
import io
import json
import lzma
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def b():
    spec = importlib.util.spec_from_file_location("edgeiot_image_build",
                                                  ROOT / "images" / "build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


APT_SHOW = """\
Package: linux-image-amd64
Version: 6.1.192-2
Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)
Description: Linux for 64-bit PCs (meta-package)
 This package depends on the latest Linux kernel.

Package: busybox-static
Version: 1:1.35.0-4+deb12u1+b1
Description: Standalone rescue shell

Package: busybox-static
Version: 1:1.30.1-6
"""


def test_apt_cache_show_is_parsed_first_stanza_per_package(b):
    shown = b.parse_apt_show(APT_SHOW)
    assert shown["busybox-static"]["Version"] == "1:1.35.0-4+deb12u1+b1"
    assert b.kernel_from_meta(shown["linux-image-amd64"]["Depends"]) == (
        "linux-image-6.1.0-56-amd64", "6.1.192-2")


def test_a_meta_package_without_a_debian_12_kernel_is_refused(b):
    with pytest.raises(b.BuildError, match="linux-image-6.1.0"):
        b.kernel_from_meta("linux-image-6.12.0-1-amd64 (= 6.12.3-1)")


def test_modules_come_after_everything_they_depend_on(b, tmp_path):
    def ko(name, depends):
        path = tmp_path / f"{name}.ko"
        path.write_bytes(b"\x7fELF..\x00depends=" + ",".join(depends).encode() + b"\x00vermagic")
        return path

    index = {"virtio_pci": ko("virtio_pci", ["virtio", "virtio_ring", "virtio_pci_modern_dev"]),
             "virtio": ko("virtio", []), "virtio_ring": ko("virtio_ring", ["virtio"]),
             "virtio_pci_modern_dev": ko("virtio_pci_modern_dev", []),
             "virtio_net": ko("virtio_net", ["net_failover", "virtio", "virtio_ring"]),
             "net_failover": ko("net_failover", ["failover"]), "failover": ko("failover", [])}
    order = b.module_order(["virtio_pci", "virtio_net"], index)
    assert sorted(order) == sorted(index)
    for name, path in index.items():
        assert all(order.index(dep) < order.index(name) for dep in b.module_depends(path))
    with pytest.raises(b.BuildError, match="virtio_console"):
        b.module_order(["virtio_console"], index)


def test_the_elf_kernel_is_found_inside_an_xz_bzimage(b):
    elf = b"\x7fELF" + bytes(range(256)) * 4
    bzimage = b"MZ setup code" + lzma.compress(elf, format=lzma.FORMAT_XZ) + b"\x00" * 16
    assert b.extract_vmlinux(bzimage) == elf
    assert b.extract_vmlinux(b"MZ no xz stream here") is None


def test_the_initramfs_archive_is_reproducible(b, tmp_path):
    src = tmp_path / "agent.py"
    src.write_text("print('hi')\n")

    def archive():
        image = b.Image()
        image.file("opt/edgeiot/agent.py", src, 0o644)
        image.add("bin/sh", b.Entry("symlink", 0o777, target="/bin/busybox"))
        image.add("dev/console", b.Entry("chr", 0o600, rdev=(5, 1)))
        out = io.BytesIO()
        size = b.write_cpio(image, out)
        return size, out.getvalue()

    size, data = archive()
    assert (size, data) == archive() and size == len(data) and size % 4 == 0
    assert data.startswith(b"070701") and b"TRAILER!!!" in data
    assert b"opt/edgeiot" in data  # parent directories are added


# --- the cache ------------------------------------------------------------------------


@pytest.fixture
def tree(b, tmp_path, monkeypatch):
    """A built image on disk (as far as the cache can tell) and a record of rebuilds."""
    out, lists = tmp_path / "out", tmp_path / "lists"
    out.mkdir()
    lists.mkdir()
    (lists / "deb.debian.org_Packages").write_text("Package: a\n")
    monkeypatch.setattr(b, "OUT", out)
    monkeypatch.setattr(b, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(b, "APT_LISTS", lists)
    versions = {"linux-image-6.1.0-56-amd64": "6.1.192-2",
                **{p: "1.0" for p in b.USER_PACKAGES}}
    files = {"vmlinuz": b"z" * 10, "vmlinux": b"x" * 30, "initrd.img": b"i" * 20}
    for name, data in files.items():
        (out / name).write_bytes(data)
    manifest = {"kernel_version": "6.1.0-56-amd64", "packages": versions,
                "apt_lists_stamp": b.apt_lists_stamp(), "inputs_hash": b.inputs_hash(versions),
                "sizes": {"vmlinuz_bytes": 10, "vmlinux_bytes": 30, "initrd_gz_bytes": 20}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    builds: list[dict[str, str]] = []
    resolved = dict(versions)

    def fake_build(vs, digest, stamp):
        builds.append(dict(vs))
        return {"kernel_version": "6.1.0-56-amd64", "build_time_s": 0.1,
                "sizes": {"initrd_gz_bytes": 20}}

    monkeypatch.setattr(b, "build", fake_build)
    monkeypatch.setattr(b, "resolve_versions", lambda: dict(resolved))
    return {"builds": builds, "resolved": resolved, "lists": lists, "out": out}


def test_unchanged_inputs_are_not_rebuilt(b, tree, capsys):
    assert b.program(force=False) == 0
    assert tree["builds"] == [] and "up to date" in capsys.readouterr().out


def test_new_apt_lists_with_the_same_versions_are_not_rebuilt(b, tree):
    (tree["lists"] / "security.debian.org_Packages").write_text("Package: b\n")
    assert b.program(force=False) == 0
    assert tree["builds"] == []


def test_a_new_package_version_is_rebuilt(b, tree):
    (tree["lists"] / "deb.debian.org_Packages").write_text("Package: a\nVersion: 2\n")
    tree["resolved"]["libc6"] = "2.36-9+deb12u99"
    b.program(force=False)
    assert [v["libc6"] for v in tree["builds"]] == ["2.36-9+deb12u99"]


def test_a_damaged_output_is_rebuilt(b, tree):
    (tree["out"] / "initrd.img").write_bytes(b"i" * 5)
    b.program(force=False)
    assert len(tree["builds"]) == 1


def test_force_rebuilds(b, tree):
    b.program(force=True)
    assert len(tree["builds"]) == 1


def test_the_inputs_hash_covers_package_versions_and_sources(b, tmp_path, monkeypatch):
    src = tmp_path / "agent.py"
    src.write_text("COUNTER = 1\n")
    monkeypatch.setattr(b, "ROOT", tmp_path)
    monkeypatch.setattr(b, "source_files", lambda: [src])
    first = b.inputs_hash({"libc6": "1"})
    assert b.inputs_hash({"libc6": "1"}) == first
    assert b.inputs_hash({"libc6": "2"}) != first
    src.write_text("COUNTER = 2\n")
    assert b.inputs_hash({"libc6": "1"}) != first
