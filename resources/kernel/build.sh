#!/usr/bin/env bash
# Build Ember's minimal x86_64 guest kernel from Debian's linux-source-6.1.
#
#   resources/kernel/build.sh
#
# Config: `make tinyconfig` + resources/kernel/ember.config (every option of
# the fragment is verified after olddefconfig). Source patches:
# resources/kernel/patches/*.patch, applied with `patch -p1` in sorted order.
#
# Results are cached in ~/.cache/ember/kernel-<key>/{vmlinux,bzImage}, where
# <key> = first 16 hex digits of sha256 over ember.config, the patches, this
# script and the installed linux-source-6.1 version. A cache hit returns at
# once.
#
# Output: progress goes to stderr; the last two lines of stdout are the
# absolute paths of vmlinux and bzImage (nothing else is printed on stdout).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
FRAGMENT="$HERE/ember.config"
PATCH_DIR="$HERE/patches"
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
CACHE_ROOT="${EMBER_CACHE_DIR:-$HOME/.cache/ember}"
SRC_PKG=linux-source-6.1
SRC_TARBALL=/usr/src/linux-source-6.1.tar.xz
JOBS="${EMBER_KERNEL_JOBS:-2}"

LOG_TAG=kernel
# shellcheck source=../lib.sh
source "$HERE/../lib.sh"

ensure_packages "$SRC_PKG" build-essential flex bison bc libelf-dev libssl-dev xz-utils lz4 patch python3
[[ -f $SRC_TARBALL ]] || die "$SRC_TARBALL not found (is $SRC_PKG installed?)"
SRC_VERSION="$(dpkg-query -W -f='${Version}' "$SRC_PKG")"

shopt -s nullglob
PATCHES=("$PATCH_DIR"/*.patch)
shopt -u nullglob
# sorted order (glob order depends on locale; force byte order)
if ((${#PATCHES[@]})); then
    mapfile -t PATCHES < <(printf '%s\n' "${PATCHES[@]}" | LC_ALL=C sort)
fi

KEY="$(
    {
        printf 'linux-source-6.1 %s\n' "$SRC_VERSION"
        printf '== ember.config\n'; cat "$FRAGMENT"
        for p in "${PATCHES[@]}"; do printf '== patch %s\n' "$(basename "$p")"; cat "$p"; done
        printf '== build.sh\n'; cat "$SELF"
    } | sha256sum | cut -c1-16
)"
OUT="$CACHE_ROOT/kernel-$KEY"

if [[ -f $OUT/vmlinux && -f $OUT/bzImage ]]; then
    log "cached: $OUT"
    printf '%s\n%s\n' "$OUT/vmlinux" "$OUT/bzImage"
    exit 0
fi

mkdir -p "$CACHE_ROOT"
BUILD="$CACHE_ROOT/build-$KEY"
LOG="$CACHE_ROOT/build-$KEY.log"
rm -rf "$BUILD"
mkdir -p "$BUILD"
: >"$LOG"

fail_with_log() {
    log "FAILED: $1 (log: $LOG); last lines:"
    tail -n 40 "$LOG" >&2 || true
    exit 1
}

log "key $KEY ($SRC_PKG $SRC_VERSION); building in $BUILD (log: $LOG)"
log "extracting $SRC_TARBALL"
tar -C "$BUILD" -xf "$SRC_TARBALL" >>"$LOG" 2>&1 || fail_with_log "extract"
KSRC="$BUILD/linux-source-6.1"
[[ -d $KSRC ]] || die "unexpected tarball layout (no linux-source-6.1/)"

for p in "${PATCHES[@]}"; do
    log "patch $(basename "$p")"
    patch -d "$KSRC" -p1 --forward --batch <"$p" >>"$LOG" 2>&1 || fail_with_log "patch $(basename "$p")"
done

MAKE=(make -C "$KSRC" ARCH=x86_64)

log "config: tinyconfig + ember.config"
"${MAKE[@]}" tinyconfig >>"$LOG" 2>&1 || fail_with_log "make tinyconfig"
(cd "$KSRC" && ARCH=x86_64 scripts/kconfig/merge_config.sh -m .config "$FRAGMENT") >>"$LOG" 2>&1 \
    || fail_with_log "merge_config.sh"
"${MAKE[@]}" olddefconfig >>"$LOG" 2>&1 || fail_with_log "make olddefconfig"

# Every line of the fragment must have taken effect.
bad=0
while IFS= read -r line; do
    if [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
        opt="${BASH_REMATCH[1]}"
        if grep -q "^$opt=" "$KSRC/.config"; then
            log "config: wanted '$line', got '$(grep "^$opt=" "$KSRC/.config")'"
            bad=1
        fi
    elif [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
        opt="${BASH_REMATCH[1]}"
        if ! grep -qxF -- "$line" "$KSRC/.config"; then
            got="$(grep -E "^$opt=|^# $opt is not set" "$KSRC/.config" || echo "(absent: unmet dependency?)")"
            log "config: wanted '$line', got '$got'"
            bad=1
        fi
    fi
done <"$FRAGMENT"
((bad == 0)) || die "config fragment did not take effect (see above)"
log "config verified ($(grep -c '^CONFIG_' "$FRAGMENT") set, $(grep -c '^# CONFIG_.* is not set' "$FRAGMENT") unset)"

log "make -j$JOBS vmlinux bzImage (a few minutes)"
start=$SECONDS
"${MAKE[@]}" -j"$JOBS" vmlinux bzImage >>"$LOG" 2>&1 || fail_with_log "make vmlinux bzImage"
log "built in $((SECONDS - start)) s"

# PVH entry: vmlinux must carry the Xen ELF note (type 18, XEN_ELFNOTE_PHYS32_ENTRY).
if command -v readelf >/dev/null; then
    readelf -n "$KSRC/vmlinux" 2>/dev/null | grep -qi "xen" || die "vmlinux has no Xen (PVH) ELF note"
fi

TMP_OUT="$CACHE_ROOT/.kernel-$KEY.tmp.$$"
rm -rf "$TMP_OUT"
mkdir -p "$TMP_OUT"
cp "$KSRC/vmlinux" "$TMP_OUT/vmlinux"
cp "$KSRC/arch/x86/boot/bzImage" "$TMP_OUT/bzImage"
cp "$KSRC/.config" "$TMP_OUT/config"
cp "$LOG" "$TMP_OUT/build.log"
if ! mv -T "$TMP_OUT" "$OUT" 2>/dev/null; then
    # someone else finished first; keep theirs
    rm -rf "$TMP_OUT"
    [[ -f $OUT/vmlinux && -f $OUT/bzImage ]] || die "could not install $OUT"
fi
rm -rf "$BUILD" "$LOG"
log "done: $OUT"
printf '%s\n%s\n' "$OUT/vmlinux" "$OUT/bzImage"
