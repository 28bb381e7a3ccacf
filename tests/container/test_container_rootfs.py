"""deploy/container/rootfs.py: the steps that turn unpacked packages into the image's tree.

The whole build (Debian packages, wheels, podman) is checked by
``.ci/container-check``; these tests pin the parts whose mistakes would only
show as a broken or oversized image: what is trimmed and what is kept, the
sourceless stdlib zip being importable and byte-identical across builds, the
console-script lookup, the launcher's exit status and SIGTERM handling, the
manifest, and normalised times and modes.
"""

from __future__ import annotations

import importlib.util
import os
import py_compile
import selectors
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

CONTAINER_DIR = Path(__file__).resolve().parents[2] / "deploy" / "container"
TIMEOUT_S = 10.0


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"container_{name}", CONTAINER_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rootfs = load("rootfs")


def touch(root: Path, *paths: str) -> None:
    for relative in paths:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# {relative}\n")


# -- trim ------------------------------------------------------------------------------------

KEPT = (
    "lib/x86_64-linux-gnu/libc.so.6",
    "lib/x86_64-linux-gnu/libm.so.6",
    "usr/bin/python3.11",
    "usr/lib/x86_64-linux-gnu/libssl.so.3",
    "usr/lib/x86_64-linux-gnu/libcrypto.so.3",
    "usr/lib/python3.11/asyncio/__init__.py",
    "usr/lib/python3.11/ssl.py",
    "usr/lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so",
    "usr/lib/python3.11/lib-dynload/_asyncio.cpython-311-x86_64-linux-gnu.so",
    "usr/lib/python3/dist-packages/h2/connection.py",
    "usr/lib/python3/dist-packages/h2-4.4.1.dist-info/METADATA",
    "usr/lib/python3/dist-packages/fluidity-0.1.0.dist-info/entry_points.txt",
)
TRIMMED = (
    "usr/share/doc/libc6/copyright",
    "usr/share/locale/de/LC_MESSAGES/libc.mo",
    "usr/lib/x86_64-linux-gnu/gconv/UTF-16.so",
    "usr/lib/x86_64-linux-gnu/ossl-modules/legacy.so",
    "lib/x86_64-linux-gnu/libmemusage.so",
    "usr/lib/python3.11/test/test_ssl.py",
    "usr/lib/python3.11/idlelib/idle.py",
    "usr/lib/python3.11/tkinter/__init__.py",
    "usr/lib/python3.11/ensurepip/__init__.py",
    "usr/lib/python3.11/unittest/mock.py",
    "usr/lib/python3.11/telnetlib.py",
    "usr/lib/python3.11/ctypes/test/test_bytes.py",
    "usr/lib/python3.11/email/__pycache__/utils.cpython-311.pyc",
    "usr/lib/python3.11/lib-dynload/_testcapi.cpython-311-x86_64-linux-gnu.so",
    "usr/lib/python3.11/lib-dynload/_sqlite3.cpython-311-x86_64-linux-gnu.so",
    "usr/lib/python3.11/lib-dynload/readline.cpython-311-x86_64-linux-gnu.so",
    "usr/lib/python3/dist-packages/h2-4.4.1.dist-info/RECORD",
    "usr/lib/python3/dist-packages/fluidity-0.1.0.dist-info/direct_url.json",
    "usr/lib/python3/dist-packages/yaml/__init__.pyi",
    "usr/lib/python3/dist-packages/cffi/tests/test_x.py",
)


def test_trim_removes_what_a_proxy_never_runs_and_keeps_the_rest(tmp_path: Path) -> None:
    touch(tmp_path, *KEPT, *TRIMMED)

    rootfs.trim(tmp_path)

    assert [p for p in KEPT if not (tmp_path / p).exists()] == []
    assert [p for p in TRIMMED if (tmp_path / p).exists()] == []


def test_trim_removes_a_dangling_symlink(tmp_path: Path) -> None:
    link = tmp_path / "usr/lib/python3.11/sitecustomize.py"
    link.parent.mkdir(parents=True)
    link.symlink_to("/etc/python3.11/sitecustomize.py")

    rootfs.trim(tmp_path)

    assert not link.is_symlink()


# -- the stdlib zip --------------------------------------------------------------------------


def compile_legacy(tree: Path) -> list[Path]:
    """Unchecked-hash pycs beside their sources, as compile_tree(legacy=True) leaves them."""
    pycs = []
    for source in sorted(tree.rglob("*.py")):
        pyc = source.with_suffix(".pyc")
        mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
        py_compile.compile(str(source), str(pyc), doraise=True, invalidation_mode=mode)
        pycs.append(pyc)
    return pycs


def test_a_sourceless_zip_of_unchecked_pycs_imports(tmp_path: Path) -> None:
    tree = tmp_path / "lib"
    (tree / "demo_pkg").mkdir(parents=True)
    (tree / "demo_pkg/__init__.py").write_text("from demo_pkg.core import ANSWER\n")
    (tree / "demo_pkg/core.py").write_text("ANSWER = 6 * 7\n")
    archive = tmp_path / "python311.zip"

    rootfs.write_zip(archive, tree, compile_legacy(tree), epoch=1_700_000_000)
    shutil.rmtree(tree)  # nothing but the zip is left
    code = "import demo_pkg; print(demo_pkg.ANSWER, demo_pkg.__spec__.origin)"
    done = subprocess.run(
        [
            sys.executable,
            "-B",
            "-I",
            "-c",
            f"import sys; sys.path[:0] = [{str(archive)!r}]; {code}",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=True,
    )

    assert done.stdout.split() == ["42", f"{archive}/demo_pkg/__init__.pyc"]


def test_the_zip_is_byte_identical_whatever_the_file_times(tmp_path: Path) -> None:
    tree = tmp_path / "lib"
    touch(tree, "a.py", "pkg/__init__.py", "pkg/b.py")
    members = compile_legacy(tree)

    rootfs.write_zip(tmp_path / "first.zip", tree, members, epoch=1_700_000_000)
    for path in members:
        os.utime(path, (1_800_000_000, 1_800_000_000))
    rootfs.write_zip(tmp_path / "second.zip", tree, reversed(members), epoch=1_700_000_000)

    assert (tmp_path / "first.zip").read_bytes() == (tmp_path / "second.zip").read_bytes()


def test_image_python_names_the_missing_loader(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no dynamic loader"):
        rootfs.image_python(tmp_path)


# -- console script and launcher --------------------------------------------------------------


def write_entry_points(root: Path, text: str) -> None:
    info = root / rootfs.SITE / "fluidity-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "entry_points.txt").write_text(text)


def test_console_script_is_read_from_the_installed_dist_info(tmp_path: Path) -> None:
    write_entry_points(
        tmp_path,
        "[gui_scripts]\nfluidity = wrong:main\n\n[console_scripts]\nfluidity = fluidity.cli:main\n",
    )

    assert rootfs.console_script(tmp_path, "fluidity") == ("fluidity.cli", "main")


def test_a_missing_console_script_stops_the_build_with_its_name(tmp_path: Path) -> None:
    write_entry_points(tmp_path, "[console_scripts]\nother = other:main\n")

    with pytest.raises(SystemExit, match="no console script 'fluidity'"):
        rootfs.console_script(tmp_path, "fluidity")


FAKE_CLI = """
import signal, sys

def main():
    if "--own-handler" in sys.argv:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print("ready", flush=True)
    return 3 if sys.stdin.read() == "" else 4
"""


def start_launcher(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    (tmp_path / "fake_cli.py").write_text(FAKE_CLI)
    script = tmp_path / "fluidity"
    script.write_text(rootfs.launcher("fake_cli", "main"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    command = [sys.executable, "-B", str(script), *args]
    proc = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
    )
    with selectors.DefaultSelector() as selector:
        assert proc.stdout is not None
        selector.register(proc.stdout, selectors.EVENT_READ)
        assert selector.select(TIMEOUT_S), "the launcher did not start its program"
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_the_launcher_exits_with_what_the_program_returns(tmp_path: Path) -> None:
    proc = start_launcher(tmp_path)

    proc.communicate("", timeout=TIMEOUT_S)

    assert proc.returncode == 3


def test_sigterm_ends_a_program_without_a_handler_with_status_143(tmp_path: Path) -> None:
    # As PID 1 an unhandled SIGTERM would be ignored; the launcher's handler
    # ends the process the way the default action does elsewhere (128 + 15).
    proc = start_launcher(tmp_path)

    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=TIMEOUT_S)

    assert proc.returncode == 128 + signal.SIGTERM


def test_a_program_that_handles_sigterm_itself_keeps_its_handler(tmp_path: Path) -> None:
    proc = start_launcher(tmp_path, "--own-handler")

    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=TIMEOUT_S)

    assert proc.returncode == 0


# -- manifest and normalisation --------------------------------------------------------------


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian)")
def test_the_manifest_lists_packages_and_distributions_with_versions(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "DEBIAN").mkdir(parents=True)
    (package / "DEBIAN/control").write_text(
        "Package: demo\nVersion: 1:2.3-4+deb12u1\nArchitecture: all\n"
        "Maintainer: nobody <nobody@example.org>\nDescription: demo\n"
    )
    deb = tmp_path / "demo.deb"
    subprocess.run(["dpkg-deb", "-b", str(package), str(deb)], check=True, capture_output=True)
    root = tmp_path / "root"
    (root / rootfs.SITE / "h2-4.4.1.dist-info").mkdir(parents=True)
    (root / rootfs.SITE / "PyYAML-6.0.4.dist-info").mkdir()

    rootfs.write_manifest(root, [deb])

    lines = (root / rootfs.IMAGE_DIR / "manifest.txt").read_text().splitlines()
    assert [line for line in lines if not line.startswith("#")] == [
        "demo 1:2.3-4+deb12u1",
        "PyYAML 6.0.4",
        "h2 4.4.1",
    ]


def test_normalise_sets_every_time_to_the_epoch_and_plain_modes(tmp_path: Path) -> None:
    touch(tmp_path, "usr/bin/python3.11", "etc/passwd", "tmp/.keep")
    (tmp_path / "usr/bin/python3.11").chmod(0o4711)  # set-uid must not survive
    (tmp_path / "etc/passwd").chmod(0o600)
    (tmp_path / "usr/bin/python3").symlink_to("python3.11")

    rootfs.normalise(tmp_path, 1_700_000_000)

    def mode(path: str) -> int:
        return stat.S_IMODE((tmp_path / path).lstat().st_mode)

    assert (mode("usr/bin/python3.11"), mode("etc/passwd"), mode("usr/bin")) == (
        0o755,
        0o644,
        0o755,
    )
    assert mode("tmp") == 0o1777
    times = {p.lstat().st_mtime for p in [tmp_path, *tmp_path.rglob("*")]}
    assert times == {1_700_000_000}
