#!/usr/bin/env bash
# Build the container image localhost/fluidity:latest without any registry.
#
#   deploy/container/build.sh [--rootfs-only]
#
# 1. apt-get download the Debian packages of packages.txt and unpack them
#    (dpkg-deb -x) into build/context/rootfs: a distroless-style base of
#    glibc, OpenSSL and Python 3.11;
# 2. build the project's wheel from the working tree and pip install it with
#    its runtime dependencies (pinned by constraints.txt) for the image's
#    Python 3.11 and glibc into the rootfs's dist-packages;
# 3. rootfs.py trims, strips, zips the standard library and adds the launcher,
#    the health check and the non-root user;
# 4. podman (preferred) or docker builds Containerfile: FROM scratch + COPY.
#
# Needs a Debian/Ubuntu build host whose apt has Python 3.11 (Debian 12
# "bookworm" is what the image is tested with), of the image's architecture,
# with apt lists updated (apt-get update), binutils (strip), python3 with pip,
# and podman or docker. Root is not needed for steps 1-3.
#
# Environment: CONTAINER_ENGINE=podman|docker to choose, IMAGE to rename,
# PYTHON for the host interpreter that runs pip, SOURCE_DATE_EPOCH for the
# file times (default: the time of the last commit).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
build="$here/build"
context="$build/context"
rootfs="$context/rootfs"
image=${IMAGE:-localhost/fluidity:latest}
python=${PYTHON:-python3}
py_version=3.11
site="$rootfs/usr/lib/python3/dist-packages"

die() { echo "build.sh: $*" >&2; exit 1; }
step() { echo "==> $*"; }

pick_engine() {
    if [[ -n ${CONTAINER_ENGINE:-} ]]; then
        command -v "$CONTAINER_ENGINE" >/dev/null || die "CONTAINER_ENGINE=$CONTAINER_ENGINE is not installed"
        echo "$CONTAINER_ENGINE"
    elif command -v podman >/dev/null; then
        echo podman
    elif command -v docker >/dev/null; then
        echo docker
    else
        die "neither podman nor docker is installed; on Debian: apt-get install -y podman runc"
    fi
}

check_host() {
    local tool
    for tool in apt-get apt-cache dpkg dpkg-deb strip git; do
        command -v "$tool" >/dev/null || die "'$tool' is missing: build on Debian/Ubuntu with binutils and git installed"
    done
    "$python" -m pip --version >/dev/null 2>&1 || die "'$python -m pip' does not run; set PYTHON to a python3 with pip"
    apt-cache show "python$py_version-minimal" >/dev/null 2>&1 ||
        die "apt knows no python$py_version-minimal: run 'apt-get update' on a Debian 12 (bookworm) host"
}

download_debs() {
    step "downloading Debian packages"
    rm -rf "$build/debs" && mkdir -p "$build/debs"
    local packages
    packages=$(grep -v '^#' "$here/packages.txt" | xargs)
    # shellcheck disable=SC2086  # one word per package
    if ! (cd "$build/debs" && apt-get download -q $packages) >"$build/apt-download.log" 2>&1; then
        cat "$build/apt-download.log" >&2
        die "apt-get download failed; run 'apt-get update' first"
    fi
    local count
    count=$(find "$build/debs" -name '*.deb' | wc -l)
    [[ $count -eq $(wc -w <<<"$packages") ]] || die "downloaded $count of the packages in packages.txt"
    echo "    $count packages: $(cd "$build/debs" && echo *.deb)"
}

unpack_debs() {
    step "unpacking into $rootfs"
    rm -rf "$context" && mkdir -p "$rootfs" "$context/home"
    local deb
    for deb in "$build"/debs/*.deb; do
        dpkg-deb -x "$deb" "$rootfs"
    done
}

# manylinux tags the image's glibc accepts, newest first: manylinux_2_36 ... _2_17, manylinux2014.
platform_flags() {
    local arch glibc minor
    arch=$(uname -m)
    glibc=$(dpkg-deb -f "$build"/debs/libc6_*.deb Version)
    minor=${glibc#2.}
    minor=${minor%%[!0-9]*}
    for ((; minor >= 17; minor--)); do
        echo "--platform=manylinux_2_${minor}_${arch}"
    done
    echo "--platform=manylinux2014_${arch}"
}

project_sources() {
    step "copying the project's sources"
    rm -rf "$build/src" "$build/wheels" && mkdir -p "$build/src" "$build/wheels"
    # Tracked files plus new ones not ignored: what a commit of this tree would hold.
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard -- pyproject.toml README.md LICENSE src |
        tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$build/src"
    # pyproject names README.md as the readme; a tree without one still builds.
    [[ -f $build/src/README.md ]] || echo "# fluidity" >"$build/src/README.md"
}

install_wheels() {
    # pip's advice about root and its own version is noise here.
    export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
    step "building the project's wheel"
    "$python" -m pip wheel -q --no-deps -w "$build/wheels" "$build/src"
    step "installing it and its runtime dependencies for Python $py_version, glibc of the image"
    local flags
    mapfile -t flags < <(platform_flags)
    "$python" -m pip install -q --target "$site" --no-compile --no-warn-script-location \
        --only-binary=:all: --implementation cp --python-version "$py_version" --abi "cp${py_version/./}" \
        "${flags[@]}" --constraint "$here/constraints.txt" "$build"/wheels/fluidity-*.whl
}

build_image() {
    local engine=$1 epoch=$2
    cp "$here/Containerfile" "$context/Containerfile"
    step "building $image with $engine"
    local previous
    previous=$("$engine" image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
    if [[ $engine == podman ]]; then
        # docker format: the OCI format has no HEALTHCHECK. No intermediate
        # images (--layers=false); --timestamp makes the layer reproducible.
        podman build --format docker --layers=false --timestamp "$epoch" \
            -t "$image" -f "$context/Containerfile" "$context"
    else
        docker build -t "$image" -f "$context/Containerfile" "$context"
    fi
    # The image this build replaced, now untagged: remove it, and only it.
    if [[ -n $previous && $previous != $("$engine" image inspect --format '{{.Id}}' "$image") ]]; then
        "$engine" rmi "$previous" >/dev/null 2>&1 || true
    fi
    local size
    size=$("$engine" image inspect --format '{{.Size}}' "$image")
    echo "==> $image: $size bytes ($((size / 1000000)) MB)"
}

main() {
    local rootfs_only=false
    [[ ${1:-} == --rootfs-only ]] && rootfs_only=true
    check_host
    local engine=""
    $rootfs_only || engine=$(pick_engine)
    local epoch=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)}
    download_debs
    unpack_debs
    project_sources
    install_wheels
    step "assembling the root filesystem"
    "$python" "$here/rootfs.py" "$rootfs" --debs "$build/debs" --healthcheck "$here/healthcheck.py" --epoch "$epoch"
    echo "==> rootfs: $(du -sb "$rootfs" | cut -f1) bytes"
    $rootfs_only || build_image "$engine" "$epoch"
}

main "$@"
