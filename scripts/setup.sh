#!/usr/bin/env bash
# Installs the Debian packages Ringmaster needs to build and test:
#   protobuf-compiler  protoc, for scripts/generate-proto.sh
#   libsqlite3-dev     SQLite, for the coordinator's state database (GRDB)
#   zlib1g-dev         zlib, to read the reference workload's gzip-compressed data set
#   pkg-config         how SwiftPM finds zlib
#   libibverbs-dev     RDMA verbs, for the data plane
#   ibverbs-providers  the verbs drivers' user-space parts (rxe, for Soft-RoCE, among them)
#   qemu-system-x86    the guest that runs Soft-RoCE for the RDMA tests (scripts/rdma-guest.sh)
#   busybox-static     that guest's initramfs
#   iproute2           `ip`, for integration tests that use network namespaces
#   openssl            inspecting certificates and keys by hand
#   etcd-server        etcd, for the state-store tests' local cluster (scripts/etcd-cluster.sh)
#   etcd-client        etcdctl, which scripts/etcd-cluster.sh uses to check that cluster's health
#
# Packages already installed are skipped, so on a prepared machine this does nothing and needs
# no network. Run as root, or as a user with sudo. It does not install Swift.
set -euo pipefail

packages=(protobuf-compiler libsqlite3-dev zlib1g-dev pkg-config libibverbs-dev ibverbs-providers iproute2 openssl
    qemu-system-x86 busybox-static etcd-server etcd-client)

if ! command -v dpkg >/dev/null || ! command -v apt-get >/dev/null; then
    echo "setup: dpkg and apt-get not found; this script is for Debian and Ubuntu." >&2
    echo "setup: install these packages (or your system's equivalents) by hand: ${packages[*]}" >&2
    exit 1
fi

missing=()
for package in "${packages[@]}"; do
    if dpkg -s "$package" 2>/dev/null | grep -q '^Status: install ok installed$'; then
        echo "setup: $package is installed"
    else
        missing+=("$package")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "setup: all packages present; nothing to do"
    exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then
        as_root=(sudo)
    else
        echo "setup: need root to install ${missing[*]}: run as root, or install sudo" >&2
        exit 1
    fi
fi

echo "setup: apt-get update"
${as_root[@]+"${as_root[@]}"} apt-get update -qq
echo "setup: installing ${missing[*]}"
${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "setup: done"
