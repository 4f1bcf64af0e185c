#!/usr/bin/env bash
# Runs a command on real RDMA verbs: inside a qemu guest that boots Debian's own kernel, loads the
# software RoCE driver (rdma_rxe) and makes rxe0 on a dummy interface. This machine's kernel has no
# modules, so rxe cannot run on the host itself (../shared/notes/soft-roce.md has the facts).
#
#   scripts/rdma-guest.sh [--timeout SECONDS] [--env NAME=VALUE]... [--link N:LOCAL:REMOTE] -- COMMAND...
#   scripts/rdma-guest.sh --prepare
#
# The guest sees the host's / read-only (9p) under a tmpfs overlay, so binaries built here (the
# Swift test binary, the ringmaster binary) run there unchanged, from the same working directory;
# it sees this repository's .build-guest/results writable. COMMAND runs as root in the guest with
# rxe0 up (RoCE v2 over dummy0, 192.0.2.1/24, a documentation range that exists only in the
# guest), its output goes to this script's standard output, and this script exits with its status.
# A guest that does not power off within --timeout (default 600 s) is killed: status 124.
# --env sets a variable for COMMAND. --link joins the guest to another one by a virtual Ethernet
# link instead (qemu's dgram netdev: UDP datagrams between host ports LOCAL and REMOTE on
# loopback): rxe0 then runs over that link, with the guest at 192.0.2.N/24 (scripts/rdma-pair.sh
# runs two such guests). --prepare fetches the kernel and builds the initramfs, and exits.
#
# Needs qemu-system-x86, busybox-static and the kernel package (scripts/setup.sh installs the first
# two; the kernel is fetched here with apt-get download into .build-guest/, once, not installed).
# The guest runs under qemu's TCG (no KVM: the nested flavour here is far slower): emulation
# figures prove correctness, not speed.
set -euo pipefail
cd "$(dirname "$0")/.."
timeout_seconds=600
usage="usage: scripts/rdma-guest.sh [--timeout S] [--env NAME=VALUE]... [--link N:LOCAL:REMOTE] -- COMMAND..."
environment=()
link=""
prepare=false
while [ $# -gt 0 ]; do
    case "$1" in
    --timeout) timeout_seconds="$2"; shift 2 ;;
    --env)
        [[ "$2" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || { echo "rdma-guest: --env wants NAME=VALUE, not $2" >&2; exit 2; }
        environment+=("$2"); shift 2 ;;
    --link)
        [[ "$2" =~ ^[1-9][0-9]?:[0-9]+:[0-9]+$ ]] ||
            { echo "rdma-guest: --link wants N:LOCAL:REMOTE (N from 1 to 99, two UDP ports), not $2" >&2; exit 2; }
        link="$2"; shift 2 ;;
    --prepare) prepare=true; shift ;;
    --) shift; break ;;
    *) echo "rdma-guest: unknown option $1 ($usage)" >&2; exit 2 ;;
    esac
done
$prepare || [ $# -gt 0 ] || { echo "rdma-guest: no command given ($usage)" >&2; exit 2; }
for tool in qemu-system-x86_64 busybox gzip; do
    command -v "$tool" >/dev/null || { echo "rdma-guest: $tool not found: run scripts/setup.sh" >&2; exit 2; }
done
busybox_path=$(command -v busybox)
ldd "$busybox_path" >/dev/null 2>&1 && { echo "rdma-guest: $busybox_path is not static: install busybox-static" >&2; exit 2; }

state=.build-guest
mkdir -p "$state"

# The kernel: the package linux-image-amd64 depends on, unpacked (not installed).
package=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ { print $2; exit }')
[ -n "$package" ] || { echo "rdma-guest: apt knows no linux-image-amd64 (run apt-get update)" >&2; exit 2; }
version=${package#linux-image-}
kernel="$state/kernel-$version"
if [ ! -f "$kernel/ready" ]; then
    echo "rdma-guest: fetching $package (once, into $kernel)" >&2
    rm -rf "$kernel" && mkdir -p "$kernel"
    (cd "$kernel" && apt-get download "$package" >/dev/null 2>&1) ||
        { echo "rdma-guest: apt-get download $package failed" >&2; exit 2; }
    dpkg-deb -x "$kernel"/*.deb "$kernel/root"
    rm -f "$kernel"/*.deb
    touch "$kernel/ready"
fi
modules_root="$kernel/root/lib/modules/$version"

# The initramfs: busybox, the modules rxe, 9p, the overlay and dummy need (with what they depend
# on), and /init below. Rebuilt when this script changes.
initramfs="$state/initramfs-$version.cpio.gz"
if [ ! -f "$initramfs" ] || [ "$0" -nt "$initramfs" ]; then
    tree=$(mktemp -d)
    trap 'rm -rf "$tree"' EXIT
    mkdir -p "$tree"/{bin,dev,proc,sys,host,rw,root,results,lib/modules/"$version"}
    cp "$busybox_path" "$tree/bin/busybox"
    for applet in sh mount mkdir insmod modprobe poweroff cat echo sleep ip chroot; do
        ln -s busybox "$tree/bin/$applet"
    done
    declare -A wanted=()
    want() {
        local name=${1//-/_} file depends
        [ -z "${wanted[$name]:-}" ] || return 0
        file=$(find "$modules_root/kernel" \( -name "$name.ko" -o -name "${name//_/-}.ko" \) | head -1)
        [ -n "$file" ] || return 0 # built into the kernel
        wanted[$name]=$file
        # The .modinfo section's depends= entry (no kmod here to ask).
        depends=$(tr '\0' '\n' <"$file" | sed -n 's/^depends=//p' | head -1)
        for dependency in ${depends//,/ }; do want "$dependency"; done
    }
    # rxe asks the crypto API for crc32 (not a declared dependency).
    for module in rdma_rxe ib_uverbs 9p 9pnet_virtio overlay dummy virtio_pci virtio_net crc32_generic crc32_pclmul; do
        want "$module"
    done
    for name in "${!wanted[@]}"; do
        relative=${wanted[$name]#"$modules_root/"}
        mkdir -p "$tree/lib/modules/$version/$(dirname "$relative")"
        cp "${wanted[$name]}" "$tree/lib/modules/$version/$relative"
    done
    busybox depmod -b "$tree" "$version"
    cat >"$tree/init" <<'INIT'
#!/bin/sh
# The guest's first process: modules, the host's root under an overlay, rxe0, then the command.
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for module in virtio_pci virtio_net 9pnet_virtio 9p overlay dummy crc32_generic crc32_pclmul rdma_rxe ib_uverbs; do
    modprobe "$module" 2>/dev/null
done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=1048576,cache=loose host /host
mount -t tmpfs rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /root
mount -t proc proc /root/proc
mount -t sysfs sys /root/sys
mount -t devtmpfs dev /root/dev
mkdir -p /root/guest-results
mount -t 9p -o trans=virtio,version=9p2000.L,msize=1048576 results /root/guest-results
chroot /root /bin/bash /guest-results/run.sh
poweroff -f
INIT
    chmod +x "$tree/init"
    (cd "$tree" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) >"$initramfs.new"
    mv "$initramfs.new" "$initramfs"
    rm -rf "$tree"
    trap - EXIT
fi

$prepare && exit 0

# The command, run in the guest through the writable share; its status comes back the same way.
# Each guest has its own results directory, so that two can run at once.
results=$(mktemp -d "$state/results.XXXXXX")
trap 'rm -rf "$results"' EXIT
network=(-nic none)
{
    echo '#!/bin/bash'
    echo 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root'
    for assignment in "${environment[@]}"; do printf 'export %q\n' "$assignment"; done
    echo 'ip link set lo up'
    if [ -z "$link" ]; then
        # Loading dummy makes dummy0 already; make it if it did not.
        echo 'netdev=dummy0 address=192.0.2.1'
        echo 'ip link show dummy0 >/dev/null 2>&1 || ip link add dummy0 type dummy'
    else
        IFS=: read -r number local_port remote_port <<<"$link"
        network=(
            -netdev "dgram,id=link,local.type=inet,local.host=127.0.0.1,local.port=$local_port,remote.type=inet,remote.host=127.0.0.1,remote.port=$remote_port"
            -device "virtio-net-pci,netdev=link,mac=52:54:00:00:02:$(printf %02x "$number")"
        )
        # The virtual link's interface: the one Ethernet device (no udev here to name it).
        echo "address=192.0.2.$number"
        echo 'netdev=$(for path in /sys/class/net/*; do [ -e "$path/device" ] && basename "$path"; done | head -1)'
    fi
    echo 'ip addr add "$address/24" dev "$netdev" && ip link set "$netdev" up'
    echo 'rdma link add rxe0 type rxe netdev "$netdev" || { echo "rdma-guest: could not make rxe0 on $netdev" >&2; echo 3 >/guest-results/status; exit 3; }'
    printf 'cd %q || exit 4\n' "$PWD"
    printf '%q ' "$@"
    echo '>/guest-results/output 2>&1'
    echo 'echo $? >/guest-results/status'
} >"$results/run.sh"

set +e
timeout --kill-after=10 "$timeout_seconds" qemu-system-x86_64 \
    -accel tcg,thread=multi -smp 2 -m 3072 -nographic -no-reboot \
    -kernel "$kernel/root/boot/vmlinuz-$version" -initrd "$initramfs" \
    -append "console=ttyS0 quiet panic=-1 rdinit=/init" \
    -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap \
    -virtfs "local,path=$PWD/$results,mount_tag=results,security_model=none" \
    "${network[@]}" >"$results/console.log" 2>&1
qemu_status=$?
set -e
[ -f "$results/output" ] && cat "$results/output"
if [ $qemu_status -eq 124 ] || [ $qemu_status -eq 137 ]; then
    echo "rdma-guest: the guest did not finish within $timeout_seconds s; its console:" >&2
    tail -20 "$results/console.log" >&2
    exit 124
fi
if [ ! -f "$results/status" ]; then
    echo "rdma-guest: the guest ended without the command's status (qemu status $qemu_status); its console:" >&2
    tail -20 "$results/console.log" >&2
    exit 1
fi
exit "$(cat "$results/status")"
