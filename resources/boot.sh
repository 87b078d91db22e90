#!/usr/bin/env bash
# Sets up everything a fresh Debian machine needs and boots a guest with its serial console
# on this terminal: builds (once, then cached under ~/.cache/ember) the guest kernel and the
# busybox initramfs, builds Ember, and runs it. Extra arguments go to `ember`, e.g.
#   resources/boot.sh --cpus 4 --memory 1G
#   resources/boot.sh -- uname -a
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "boot: cargo not found; install Rust (https://rustup.rs)" >&2; exit 1; }
command -v gcc >/dev/null || { echo "boot: gcc not found; apt-get install build-essential" >&2; exit 1; }
[[ -e /dev/kvm ]] || { echo "boot: /dev/kvm is missing: enable KVM" >&2; exit 1; }

# What the guest artefacts need, installed once (apt-get update first: a fresh machine may
# have no package lists, and the build scripts only install).
pkgs=(build-essential flex bison bc libelf-dev libssl-dev xz-utils patch python3
      linux-source-6.1 busybox-static cpio e2fsprogs)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    echo "boot: installing ${missing[*]}" >&2
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi

mapfile -t kernel < <(resources/kernel/build.sh)
vmlinux="${kernel[-2]}"
initrd="$(resources/initramfs/build.sh | tail -n 1)"
cargo build --release --quiet
echo "boot: Ctrl-C stops the VM; 'poweroff -f' in the guest ends it" >&2
exec target/release/ember --kernel "$vmlinux" --initrd "$initrd" --memory 256M --cpus 2 "$@"
