#!/usr/bin/env bash
# Host test of the command decoding/running part of resources/initramfs/init
# (EMBER_INIT_DRY_RUN=1: no mounts, no ports, no power-off). Needs busybox.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
INIT="$HERE/init"
BB="${EMBER_BUSYBOX:-busybox}"
command -v "$BB" >/dev/null || { echo "test-init: busybox not found" >&2; exit 2; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fails=0

# b64 of argv, each argument followed by NUL
enc() { printf '%s\0' "$@" | base64 -w0; }

# check <expected status> <expected stdout> -- argv...
check() {
    local want_st="$1" want_out="$2" out st
    shift 3
    printf 'console=ttyS0 foo=* ember.cmd=%s quiet\n' "$(enc "$@")" >"$work/cmdline"
    set +e
    out="$(EMBER_INIT_DRY_RUN=1 EMBER_CMDLINE_FILE="$work/cmdline" TMPDIR="$work" \
        "$BB" sh "$INIT" 2>/dev/null)"
    st=$?
    set -e
    want_out="${want_out}ember-init: exit status $want_st"
    if [[ $st != "$want_st" || $out != "$want_out" ]]; then
        echo "FAIL: argv=$(printf '[%s]' "$@") status=$st (want $want_st)" >&2
        printf -- '--- got:\n%s\n--- want:\n%s\n' "$out" "$want_out" >&2
        fails=$((fails + 1))
    else
        echo "ok: $(printf '[%s]' "$@" | tr '\n' '~')"
    fi
}

nl=$'\n'
check 0 "hello${nl}" -- echo hello
check 42 "<a b>${nl}<it's>${nl}<say \"hi\">${nl}<two${nl}lines>${nl}<*>${nl}<>${nl}" -- \
    sh -c 'printf "<%s>\n" "$@"; exit 42' x 'a b' "it's" 'say "hi"' $'two\nlines' '*' ''
check 1 "" -- false
check 255 "" -- sh -c 'exit 255'
check 127 "" -- /nonexistent/command
check 3 "\$HOME \`x\` ;|&${nl}" -- sh -c 'echo "$1"; exit 3' sh '$HOME `x` ;|&'

# no ember.cmd
printf 'console=ttyS0 quiet\n' >"$work/cmdline"
out="$(EMBER_INIT_DRY_RUN=1 EMBER_CMDLINE_FILE="$work/cmdline" "$BB" sh "$INIT")"
if [[ $out == "ember-init: no ember.cmd on the command line" ]]; then echo "ok: no ember.cmd"; else
    echo "FAIL: no ember.cmd: $out" >&2; fails=$((fails + 1)); fi

# Optional (root, unshare, setpriv): run the real boot path of /init from the
# built initramfs in a chroot inside new mount/pid/uts/ipc namespaces, with
# /dev bind-mounted from a scratch dir of plain files (so /dev/port is a file
# and the status byte lands at offset 0xf4) and CAP_SYS_RAWIO dropped, so no
# real port or physical memory can be touched. `poweroff -f` in a child pid
# namespace only ends that namespace.
if [[ ${EMBER_TEST_SANDBOX:-0} == 1 ]]; then
    cpio_path="$("$HERE/build.sh" --uncompressed 2>/dev/null | tail -n1)"
    sbx="$work/sbx" sdev="$work/sdev"
    mkdir -p "$sbx" "$sdev"
    (cd "$sbx" && cpio -id --quiet <"$cpio_path")
    for f in mem port console null; do : >"$sdev/$f"; done
    printf 'console=ttyS0 ember.cmd=%s quiet\n' \
        "$(enc sh -c 'printf "<%s>" "$@"; echo; exit 9' x 'a b' "it's")" >"$sbx/cmdline"
    timeout -s KILL 60 unshare -p -f -m -u -i sh -c '
        set -e
        mount --make-rprivate /
        mount --bind "$2" "$1/dev"
        exec setpriv --bounding-set=-sys_rawio chroot "$1" /bin/busybox env -i \
            EMBER_CMDLINE_FILE=/cmdline /init </dev/null' sh "$sbx" "$sdev" || true
    want=$'ember-init: ready\n<a b><it\'s>\nember-init: exit status 9'
    got="$(cat "$sdev/console")"
    port="$(od -An -tu1 -j244 -N1 "$sdev/port" 2>/dev/null | tr -d ' ')"
    if [[ $got == "$want" && $port == 9 ]]; then echo "ok: sandboxed boot path (port byte $port)"; else
        printf 'FAIL: sandboxed boot path: port=%s console:\n%s\n' "$port" "$got" >&2
        fails=$((fails + 1))
    fi
fi

if ((fails)); then echo "test-init: $fails failure(s)" >&2; exit 1; fi
echo "test-init: all passed"
