#!/usr/bin/env bash
# Sets up everything a fresh Debian machine needs and boots a guest with its serial console
# on this terminal: builds (once, then cached under ~/.cache/ember) the guest kernel and the
# busybox initramfs, builds Ember, and runs it. Extra arguments go to `ember`, e.g.
#   resources/boot.sh --cpus 4 --memory 1G
#   resources/boot.sh -- uname -a
set -euo pipefail
cd "$(dirname "$0")/.."

LOG_TAG=boot
# shellcheck source=lib.sh
source resources/lib.sh

[[ -e /dev/kvm ]] || die "/dev/kvm is missing: enable KVM"
command -v cargo >/dev/null || die "cargo not found; install Rust (https://rustup.rs)"
# What Ember's build and the guest artefacts need, installed once.
ensure_packages build-essential flex bison bc libelf-dev libssl-dev xz-utils patch python3 \
    lz4 linux-source-6.1 busybox-static cpio e2fsprogs musl-tools

mapfile -t kernel < <(resources/kernel/build.sh)
vmlinux="${kernel[-2]}"
initrd="$(resources/initramfs/build.sh | tail -n 1)"
cargo build --release --quiet
echo "boot: 'poweroff' in the guest ends it; Ctrl-C asks the guest to shut down" >&2
exec target/release/ember --kernel "$vmlinux" --initrd "$initrd" --memory 256M --cpus 2 "$@"
