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
