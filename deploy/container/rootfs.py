"""Turn unpacked Debian packages plus a wheel install into the image's root filesystem.

build.sh unpacks the packages of ``packages.txt`` into ROOTFS and installs the
project's wheels into SITE (``ROOTFS/usr/lib/python3/dist-packages``, where
Debian's interpreter looks); this script then makes that tree small, runnable
as a non-root user on a read-only filesystem, and reproducible:

1. ``trim``: delete what a proxy never runs (docs, locales, iconv modules,
   test suites, IDLE, Tk, curses, sqlite, ...), an explicit list below.
2. ``strip``: drop the debug symbols of the wheels' extension modules
   (Debian's own libraries are already stripped); uvloop shrinks 14 -> 2 MB.
3. ``zip_stdlib``: the pure-Python standard library becomes
   ``/usr/lib/python311.zip``, an entry that CPython puts on ``sys.path`` by
   default. As in CPython's own Windows "embeddable" distribution, the zip
   holds bytecode only: compiled by the image's own interpreter as
   *unchecked-hash* pycs (PEP 552), so nothing is recompiled or written at
   run time and the result does not depend on file mtimes. Sources would add
   2.3 MB the size budget has no room for; a traceback through the standard
   library names file and line but shows no source text.
4. ``precompile``: the same unchecked-hash bytecode for site-packages, in
   ``__pycache__`` beside the sources (PYTHONDONTWRITEBYTECODE=1 in the image
   then only stops writes; reads still happen).
5. ``add_files``: ``/usr/bin/fluidity`` (the console script), the health
   check, ``/etc/passwd`` with the ``nonroot`` user (uid 65532), nsswitch.conf,
   and a manifest of every package and wheel version.
6. ``normalise``: every mtime set to SOURCE_DATE_EPOCH, modes to 0755/0644.

Usage: ``python3 rootfs.py ROOTFS --epoch SECONDS --healthcheck FILE``.
Runs on the build host with any Python 3.9+; the bytecode is compiled by the
image's interpreter (started through the image's own dynamic loader), so the
host's Python version does not matter. Host and image must share an
architecture.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

PY = "python3.11"
STDLIB = Path("usr/lib") / PY
ZIP = Path("usr/lib/python311.zip")
SITE = Path("usr/lib/python3/dist-packages")
IMAGE_DIR = Path("usr/lib/fluidity-image")
UID = 65532

# PEP 594: deprecated in 3.11, removed in 3.13.
DEAD_BATTERIES = (
    *("aifc", "asynchat", "asyncore", "cgi", "cgitb", "chunk", "crypt", "imghdr", "mailcap"),
    *("nntplib", "pipes", "smtpd", "sndhdr", "sunau", "telnetlib", "uu", "xdrlib"),
)

# Paths (globs relative to the root) that the image never needs. Extension
# modules go together with the pure-Python packages that wrap them and with
# the shared libraries they would load, which packages.txt leaves out.
TRIM = (
    "usr/share/*",
    "usr/lib/binfmt.d",
    "usr/lib/*-linux-gnu/gconv",
    "usr/lib/*-linux-gnu/engines-3",
    "usr/lib/*-linux-gnu/ossl-modules",
    "usr/lib/*-linux-gnu/libexpatw.so*",
    "lib/*-linux-gnu/libBrokenLocale*",
    "lib/*-linux-gnu/libmemusage*",
    "lib/*-linux-gnu/libpcprofile*",
    "lib/*-linux-gnu/libc_malloc_debug*",
    "lib/*-linux-gnu/libthread_db*",
    "lib/*-linux-gnu/libnss_hesiod*",
    "lib/*-linux-gnu/libnss_compat*",
    "lib/*-linux-gnu/libnsl.so*",
    "lib/*-linux-gnu/libmvec*",
    "lib/*-linux-gnu/libanl*",
    f"{STDLIB}/test",
    f"{STDLIB}/idlelib",
    f"{STDLIB}/tkinter",
    f"{STDLIB}/turtledemo",
    f"{STDLIB}/lib2to3",
    f"{STDLIB}/ensurepip",
    f"{STDLIB}/pydoc_data",
    f"{STDLIB}/distutils",
    f"{STDLIB}/venv",
    f"{STDLIB}/curses",
    f"{STDLIB}/dbm",
    f"{STDLIB}/sqlite3",
    f"{STDLIB}/unittest",
    f"{STDLIB}/doctest.py",
    f"{STDLIB}/pydoc.py",
    f"{STDLIB}/turtle.py",
    f"{STDLIB}/_pydecimal.py",  # the fallback of _decimal, which is here
    f"{STDLIB}/antigravity.py",
    f"{STDLIB}/this.py",
    f"{STDLIB}/__hello__.py",
    f"{STDLIB}/__phello__",
    *(f"{STDLIB}/{m}.py" for m in DEAD_BATTERIES),
    f"{STDLIB}/sitecustomize.py",  # Debian's apport hook, a dangling symlink here
    f"{STDLIB}/EXTERNALLY-MANAGED",
    f"{STDLIB}/LICENSE.txt",
    f"{STDLIB}/lib-dynload/_test*",
    f"{STDLIB}/lib-dynload/_ctypes_test*",
    f"{STDLIB}/lib-dynload/_xx*",
    f"{STDLIB}/lib-dynload/xxlimited*",
    f"{STDLIB}/lib-dynload/_curses*",
    f"{STDLIB}/lib-dynload/_dbm*",
    f"{STDLIB}/lib-dynload/_sqlite3*",
    f"{STDLIB}/lib-dynload/_crypt*",
    f"{STDLIB}/lib-dynload/nis*",
    f"{STDLIB}/lib-dynload/ossaudiodev*",
    f"{STDLIB}/lib-dynload/readline*",
    f"{STDLIB}/lib-dynload/audioop*",
    f"{STDLIB}/lib-dynload/_codecs_*",  # CJK codecs
    f"{STDLIB}/lib-dynload/_multibytecodec*",
    f"{SITE}/*.dist-info/RECORD",  # lists hashes of files trimmed or compiled here
    f"{SITE}/*.dist-info/direct_url.json",  # names the build directory
    f"{SITE}/bin",
    # cryptography's compiled module loads only _cffi_backend at run time; the
    # cffi package and its C parser exist to build bindings, which never happens here.
    f"{SITE}/cffi",
    f"{SITE}/pycparser",
    # Fluidity uses websockets' sans-I/O protocol only (protocol/wschannel.py); its
    # asyncio, threading, trio and legacy front ends are never imported.
    f"{SITE}/websockets/legacy",
    f"{SITE}/websockets/sync",
    f"{SITE}/websockets/asyncio",
    f"{SITE}/websockets/trio",
)

# Inside any package directory: test suites and type stubs are not run.
TRIM_ANYWHERE = ("__pycache__", "tests", "test", "*.pyi", "py.typed")

ETC_PASSWD = (
    "root:x:0:0:root:/root:/sbin/nologin\n"
    f"nonroot:x:{UID}:{UID}:nonroot:/home/nonroot:/sbin/nologin\n"
)
ETC_GROUP = f"root:x:0:\nnonroot:x:{UID}:\n"
# Without this file glibc tries DNS before /etc/hosts; containers expect files first.
ETC_NSSWITCH = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"

LAUNCHER = '''#!/usr/bin/{py}
"""Console script ``{name}`` of the container image (entry point {target}).

As PID 1 of a container, a process that has no handler for SIGTERM ignores it
(the kernel gives PID 1 no default action), and ``podman stop`` would wait for
its timeout and SIGKILL. Until the program installs its own handler (the
server does, to drain), SIGTERM ends the process as it would anywhere else.
"""
import os
import signal
import sys


def _terminate(signum: int, frame: object) -> None:
    os._exit(128 + signum)


signal.signal(signal.SIGTERM, _terminate)

from {module} import {attr}  # noqa: E402

sys.exit({attr}())
'''


def walk(root: Path) -> Iterator[Path]:
    """Every path under ``root`` (files, links and directories), parents first."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            yield base / name


def remove(path: Path) -> None:
    """Delete a file, symlink or directory tree; a missing path is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def trim(root: Path) -> None:
    """Delete the ``TRIM`` globs, then ``TRIM_ANYWHERE`` names under the Python trees."""
    for pattern in TRIM:
        for path in sorted(root.glob(pattern)):
            remove(path)
    for tree in (root / STDLIB, root / SITE):
        doomed = [p for p in walk(tree) if any(p.match(n) for n in TRIM_ANYWHERE)]
        for path in doomed:
            remove(path)


def strip_extensions(root: Path) -> None:
    """Strip debug symbols from the wheels' shared objects (needs binutils ``strip``)."""
    objects = sorted(p for p in walk(root / SITE) if p.suffix == ".so" and p.is_file())
    if objects:
        subprocess.run(["strip", "--strip-unneeded", *map(str, objects)], check=True)


def image_python(root: Path) -> list[str]:
    """A command that runs the image's interpreter on the host, loader and libraries included.

    The loader is called directly so no library of the host is mixed in; the
    interpreter finds its standard library from ``argv[0]`` (``ROOT/usr/bin``).
    """
    loaders = sorted(root.glob("lib/*-linux-gnu/ld-linux*.so.*"))
    if not loaders:
        raise SystemExit(f"rootfs.py: no dynamic loader under {root}/lib; is libc6 unpacked?")
    libs = ":".join(str(p) for p in sorted(root.glob("*lib/*-linux-gnu")))
    # -B: the interpreter must not leave caches of the modules it runs itself.
    return [str(loaders[0]), "--library-path", libs, str(root / "usr/bin" / PY), "-B", "-S", "-E"]


def compile_tree(root: Path, tree: Path, shown_as: str, legacy: bool) -> None:
    """Compile every ``.py`` under ``tree`` with the image's interpreter, unchecked-hash pycs.

    ``shown_as`` is the directory tracebacks name instead of the build path;
    ``legacy`` puts ``x.pyc`` beside ``x.py`` (the layout zipimport reads)
    instead of in ``__pycache__``.
    """
    command = [*image_python(root), "-m", "compileall", "-q", "-j", "0", "-f"]
    command += ["--invalidation-mode", "unchecked-hash", "-s", str(tree), "-p", shown_as]
    command += ["-b"] if legacy else []
    subprocess.run([*command, str(tree)], check=True)


def zip_stdlib(root: Path, epoch: int) -> None:
    """Move the pure-Python standard library into ``/usr/lib/python311.zip``.

    ``lib-dynload`` (extension modules, which cannot be imported from a zip)
    stays on disk, and so does an empty ``python3.11`` directory: the
    interpreter derives ``sys.path`` from it.
    """
    stdlib = root / STDLIB
    compile_tree(root, stdlib, f"/{ZIP}", legacy=True)
    members = [p for p in walk(stdlib) if p.suffix == ".pyc" and "lib-dynload" not in p.parts]
    write_zip(root / ZIP, stdlib, members, epoch)
    for path in sorted(stdlib.iterdir()):
        if path.name != "lib-dynload":
            remove(path)


def write_zip(target: Path, base: Path, members: Iterable[Path], epoch: int) -> None:
    """A deflated zip of ``members`` (named relative to ``base``), byte-identical across runs."""
    stamp = max(epoch, 315532800)  # zip dates start in 1980
    date_time = time_tuple(stamp)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path in sorted(members):
            info = zipfile.ZipInfo(path.relative_to(base).as_posix(), date_time)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, path.read_bytes(), compresslevel=9)


def time_tuple(epoch: int) -> tuple[int, int, int, int, int, int]:
    """UTC broken-down time of ``epoch`` as zipfile wants it."""
    t = time.gmtime(epoch)
    return (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)


def console_script(root: Path, name: str) -> tuple[str, str]:
    """``(module, attr)`` of console script ``name`` from the installed dist-info."""
    for entry_points in sorted((root / SITE).glob("*.dist-info/entry_points.txt")):
        section = ""
        for line in entry_points.read_text().splitlines():
            line = line.strip()
            if line.startswith("["):
                section = line.strip("[]")
            elif section == "console_scripts" and line.partition("=")[0].strip() == name:
                module, _, attr = line.partition("=")[2].strip().partition(":")
                return module.strip(), attr.strip()
    raise SystemExit(
        f"rootfs.py: no console script {name!r} in {root / SITE}; is the wheel installed?"
    )


def launcher(module: str, attr: str) -> str:
    """The text of ``/usr/bin/fluidity``: runs ``module.attr()`` and exits with its result."""
    return LAUNCHER.format(
        py=PY, name="fluidity", target=f"{module}:{attr}", module=module, attr=attr
    )


def add_files(root: Path, healthcheck: Path) -> None:
    """The launcher, the health check, users and groups, nsswitch.conf, mount points."""
    script = root / "usr/bin/fluidity"
    script.write_text(launcher(*console_script(root, "fluidity")))
    script.chmod(0o755)
    (root / "usr/bin/python3").symlink_to(PY)
    (root / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(healthcheck, root / IMAGE_DIR / "healthcheck.py")
    etc = root / "etc"
    (etc / "passwd").write_text(ETC_PASSWD)
    (etc / "group").write_text(ETC_GROUP)
    (etc / "nsswitch.conf").write_text(ETC_NSSWITCH)
    # Mount points: tmpfs (/tmp, /run: podman mounts them with --read-only), volumes.
    for directory in ("tmp", "run", "root", "config", "certs"):
        (root / directory).mkdir(exist_ok=True)


def write_manifest(root: Path, debs: Iterable[Path]) -> None:
    """``/usr/lib/fluidity-image/manifest.txt``: every Debian package and wheel, with versions."""
    lines = ["# Debian packages (name version)"]
    for deb in sorted(debs):
        fields = subprocess.run(
            ["dpkg-deb", "-f", str(deb), "Package", "Version"], check=True, capture_output=True
        )
        name, version = (f.split(":", 1)[1].strip() for f in fields.stdout.decode().splitlines())
        lines.append(f"{name} {version}")
    lines.append("# Python distributions (name version)")
    for info in sorted((root / SITE).glob("*.dist-info")):
        lines.append(" ".join(info.name.removesuffix(".dist-info").rsplit("-", 1)))
    (root / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    (root / IMAGE_DIR / "manifest.txt").write_text("\n".join(lines) + "\n")


def normalise(root: Path, epoch: int) -> None:
    """Fixed mtimes; directories and programs 0755, everything else 0644; no set-id bits."""
    for path in [*walk(root), root]:
        if not path.is_symlink():
            executable = path.is_dir() or os.access(path, os.X_OK)
            path.chmod(0o755 if executable else 0o644)
        os.utime(path, (epoch, epoch), follow_symlinks=False)
    (root / "tmp").chmod(0o1777)


def assemble(root: Path, debs: list[Path], healthcheck: Path, epoch: int) -> None:
    """Run every step on ``root`` in order (see the module docstring)."""
    trim(root)
    strip_extensions(root)
    zip_stdlib(root, epoch)
    compile_tree(root, root / SITE, f"/{SITE}", legacy=False)
    add_files(root, healthcheck)
    write_manifest(root, debs)
    normalise(root, epoch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rootfs", type=Path, help="unpacked packages + wheels, changed in place")
    parser.add_argument("--debs", type=Path, required=True, help="directory of the .deb files")
    parser.add_argument("--healthcheck", type=Path, required=True, help="healthcheck.py to copy")
    parser.add_argument("--epoch", type=int, required=True, help="SOURCE_DATE_EPOCH for mtimes")
    args = parser.parse_args(argv)
    debs = sorted(args.debs.glob("*.deb"))
    assemble(args.rootfs.resolve(), debs, args.healthcheck, args.epoch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
