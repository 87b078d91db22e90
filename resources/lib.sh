# Shared by resources/boot.sh, resources/*/build.sh and .ci/run (sourced, not run):
# logging and installing the Debian packages a script needs. Set LOG_TAG before sourcing.

log() { printf '[%s] %s\n' "${LOG_TAG:-ember}" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "${LOG_TAG:-ember}" "$*" >&2; exit 1; }

# ensure_packages PKG...: installs those of the Debian packages that are not installed yet,
# after `apt-get update` (a fresh machine may have no package lists). Output goes to stderr.
ensure_packages() {
    local need=() p sudo=""
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p")
    done
    ((${#need[@]})) || return 0
    log "installing: ${need[*]}"
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2 \
        || die "apt-get install ${need[*]} failed"
}

# build_static NAME: compiles resources/initramfs/NAME.c statically with musl and prints the
# path of the binary, cached in ~/.cache/ember/NAME-<key> (key: the source, the musl version
# and this function's flags). The guest's init is `build_static init`.
build_static() {
    local name="$1" here src cache key out tmp
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    src="$here/initramfs/$name.c"
    cache="${EMBER_CACHE_DIR:-$HOME/.cache/ember}"
    ensure_packages musl-tools
    local flags=(-static -Os -s -Wall -Wextra -Werror -fno-asynchronous-unwind-tables)
    key="$(
        {
            dpkg-query -W -f='musl ${Version}\n' musl-tools
            printf '%s\n' "${flags[*]}"
            cat "$src"
        } | sha256sum | cut -c1-16
    )"
    out="$cache/$name-$key"
    if [[ ! -x $out ]]; then
        mkdir -p "$cache"
        tmp="$(mktemp "$cache/.$name-$key.XXXXXX")"
        musl-gcc "${flags[@]}" -o "$tmp" "$src" >&2 || { rm -f "$tmp"; die "cannot compile $src"; }
        chmod 0755 "$tmp"
        mv -f "$tmp" "$out"
    fi
    printf '%s\n' "$out"
}

# build_init: the guest's init (see build_static).
build_init() {
    build_static init
}
