#!/usr/bin/env bash
# Installs what building and testing crated needs on Debian 12: a C toolchain for -sys crates
# and the real peers the tests run against (containerd's ctr and shim, runc, ...), and protoc for
# the CRI API stubs (k8s-cri).
# Rust itself comes from rustup (https://rustup.rs); Debian 12's rustc is too old.
set -euo pipefail

packages=(build-essential pkg-config git containerd runc btrfs-progs busybox-static docker-registry skopeo umoci openssl
    dmsetup e2fsprogs qemu-system-x86 docker.io protobuf-compiler containernetworking-plugins catatonit
    python3-venv)
# `--bench`: also what the benchmarks alone need (pigz: the unpack floor of the pull row).
if [ "${1:-}" = "--bench" ]; then
    packages+=(pigz)
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The devmapper tests boot Debian's kernel in qemu (this host's kernel has no device-mapper):
# its package is unpacked, not installed.
vm_dir="${CRATED_VM_DIR:-/var/cache/crated-test/vm}"
if [ "$(dpkg --print-architecture)" = amd64 ] && ! compgen -G "$vm_dir/boot/vmlinuz-*" >/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    image=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    download=$(mktemp -d)
    chmod 755 "$download"
    (cd "$download" && apt-get download -qq -o APT::Sandbox::User=root "$image")
    $sudo mkdir -p "$vm_dir"
    $sudo dpkg-deb -x "$download"/*.deb "$vm_dir"
    rm -rf "$download"
fi
# gRPC's C core as a client (PyPI's grpcio, in its own environment): it sends a unix socket's
# path as :authority.
grpcio_dir="${CRATED_GRPCIO_DIR:-/var/cache/crated-test/grpcio}"
if ! "$grpcio_dir/bin/python3" -c 'import grpc' 2>/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo /usr/bin/python3 -m venv "$grpcio_dir"
    $sudo "$grpcio_dir/bin/pip" install -q --disable-pip-version-check grpcio
fi
# crictl and critest (sigs.k8s.io/cri-tools), built with the machine's Go from the module
# proxy: test peers only, crated's build never needs Go.
cri_tools_version=v1.37.0
cri_tools_dir="${CRATED_CRI_TOOLS_DIR:-/var/cache/crated-test/cri-tools-$cri_tools_version}"
if [ ! -x "$cri_tools_dir/critest" ] || [ ! -x "$cri_tools_dir/crictl" ]; then
    go=$(command -v go || echo /usr/local/go/bin/go)
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo mkdir -p "$cri_tools_dir"
    $sudo env GOBIN="$cri_tools_dir" "$go" install "sigs.k8s.io/cri-tools/cmd/crictl@$cri_tools_version"
    # critest is a Go test binary.
    module="$("$go" env GOMODCACHE)/sigs.k8s.io/cri-tools@$cri_tools_version"
    (cd "$module" && $sudo "$go" test -c -o "$cri_tools_dir/critest" ./cmd/critest)
fi
# Debian's containerd package starts a system containerd; the tests start their own daemons on
# private roots and never use it.
if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust with rustup (https://rustup.rs), then run this again" >&2
    exit 1
fi
