#!/usr/bin/env bash
# One file that runs fluidity on a machine with no Python packages installed.
#
#   deploy/onefile/build.sh [--wheel dist/fluidity-*.whl] [--out DIR] [--tool pyinstaller|shiv]
#
# Makes DIR/fluidity (fluidity.exe on Windows; DIR defaults to dist/onefile) with
# PyInstaller --onefile: the interpreter, fluidity and its dependencies in one
# executable. It runs on the system it was built on (and newer ones of the same
# kind): build the Linux file on Linux (the oldest glibc you support), the macOS
# one on macOS, the Windows one on Windows (in Git Bash: PYTHON=py deploy/onefile/build.sh).
#
# --tool shiv makes DIR/fluidity.pyz instead, a zipapp of fluidity and its
# dependencies that needs a Python 3.11+ on the machine; docs/install.md says
# why PyInstaller is the default (the two were measured).
#
# The build happens in a fresh virtualenv holding only fluidity (from --wheel,
# else from this checkout) and the build tool, so nothing else gets bundled.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=$repo/dist/onefile
tool=pyinstaller
source=$repo
python=${PYTHON:-python3}
while (($#)); do
    case $1 in
    --wheel) source=$(cd "$(dirname "$2")" && pwd)/$(basename "$2"); shift 2 ;;
    --out) mkdir -p "$2"; out=$(cd "$2" && pwd); shift 2 ;;
    --tool) tool=$2; shift 2 ;;
    -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

# --strip: the debug symbols of libpython, uvloop and cryptography are most of what
# the executable unpacks on every start (78 MB unstripped); strip is not on Windows.
case $(uname -s) in
MINGW* | MSYS* | CYGWIN*) bindir=Scripts; exe=.exe; strip= ;;
*) bindir=bin; exe=; strip=yes ;;
esac
work=$(mktemp -d "${TMPDIR:-/tmp}/fluidity-onefile.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$python" -m venv "$work/venv"
venv_python=$work/venv/$bindir/python$exe
pip_install() {
    # this machine's pip config may name extra local indexes that do not exist
    "$venv_python" -m pip install --quiet --disable-pip-version-check "$@" \
        2> >(grep -v "is ignored: it is neither" >&2)
}
mkdir -p "$out"
case $tool in
pyinstaller)
    pip_install "$source" 'pyinstaller>=6.5,<7'
    # The command imports most modules lazily (so --help stays fast): collect them
    # all, and pyspnego's NTLM/Kerberos back-ends, which it imports by name.
    "$venv_python" -m PyInstaller --onefile --name fluidity --noconfirm --clean \
        --log-level WARN --distpath "$out" --workpath "$work/build" --specpath "$work" ${strip:+--strip} \
        --collect-submodules fluidity --collect-submodules spnego \
        "$here/entry.py"
    result=$out/fluidity$exe
    ;;
shiv)
    pip_install 'shiv>=1.0,<2'
    "$work/venv/$bindir/shiv$exe" --quiet -c fluidity -p '/usr/bin/env python3' \
        -o "$out/fluidity.pyz" "$source" 2> >(grep -v "is ignored: it is neither" >&2)
    result=$out/fluidity.pyz
    ;;
*)
    echo "build.sh: --tool must be pyinstaller or shiv, not $tool" >&2
    exit 2
    ;;
esac
echo "built $result ($(du -h "$result" | cut -f1))"
