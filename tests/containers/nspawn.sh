#!/usr/bin/env bash
# nspawn.sh: containers on one node share that node's memseald.
#
# Runs the daemon on the host, as root, and clients in a systemd-nspawn
# container with a private user namespace (--private-users=pick: uid 0
# inside is a high, unprivileged uid outside) into which only the daemon's
# socket directory is bind-mounted, read-only. No /dev/shm, no host files,
# no privileges are shared. Inside run the `memseal` CLI and a program
# linked statically against libmemseal.a (tests/containers/probe.c).
# Checks, one PASS/FAIL line each:
#
#   1. the container is in its own user namespace: its root is host uid
#      BASE (not 0), and it sees the host's daemon and socket as the
#      overflow uid;
#   2. root in the container fetches an asset published on the host: the
#      bytes are identical, and the mapping is sealed and read-only;
#   3. the same for an ordinary user (uid 1000) in the container;
#   4. publish, as the daemon sees it: container root is uid BASE, so it
#      may publish only under user/BASE/ (not shared/..., not user/0/);
#   5. the container's uid 1000 is host uid BASE+1000, with its own prefix;
#   6. granting: with BASE in the policy's publisher_users (and a reload),
#      container root may publish any name; its uid 1000 still may not;
#   7. only the socket crossed: the container's /run/memseal holds the
#      socket alone, and its /dev/shm is its own.
#
# The container's tree is an overlay on the Debian rootfs that
# scripts/systemd-sandbox.sh builds and caches (the real-systemd test uses
# the same one): `pick` chowns the tree to the container's uid range, which
# here changes only the overlay's upper layer, never the cached rootfs.
#
# Usage: tests/containers/nspawn.sh [--allow-skip]
#   --allow-skip  exit 0 with a loud SKIPPED message when this host cannot
#                 run it (not root); without it, that is a failure.
# Environment: MEMSEAL_BIN_DIR (default target/debug), MEMSEAL_SANDBOX_ROOT
# (where the cached rootfs lives, see scripts/systemd-sandbox.sh), KEEP=1
# keeps the work directory.

# The checks are called by name through `record`; the linter cannot see it.
# shellcheck disable=SC2317
# The scripts given to `sh -c` expand their own arguments ($0, $1, ...).
# shellcheck disable=SC2016
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin_dir=${MEMSEAL_BIN_DIR:-$repo/target/debug}
readonly USER_UID=1000 # an ordinary user inside the container
readonly ASSET=shared/model
readonly ASSET_BYTES=$((3 * 1024 * 1024 + 5))

# shellcheck source=scripts/lib/host-test.sh
source "$repo/scripts/lib/host-test.sh"
host_test_options "container test" "$@"

[[ $(id -u) == 0 ]] || unable "it must run as root (systemd-nspawn with a user namespace)"
for tool in systemd-nspawn setpriv cc pkg-config; do
    command -v "$tool" >/dev/null || unable "$tool is missing (scripts/install-test-deps.sh installs it)"
done
for tool in memseald memseal; do
    [[ -x $bin_dir/$tool ]] || {
        echo "FAIL: $bin_dir/$tool is not built (cargo build --workspace --bins)" >&2
        exit 1
    }
done

# ------------------------------------------------------------------ set-up

# On a disk, not tmpfs: overlayfs wants a real upper layer.
work=$(mktemp -d /var/tmp/memseal-containers.XXXXXX)
machine=memseal-ct-$$
daemon_pid=""
teardown() {
    if [[ -n $daemon_pid ]]; then
        kill "$daemon_pid" 2>/dev/null
        wait "$daemon_pid" 2>/dev/null
    fi
    if mountpoint -q "$work/root"; then
        umount "$work/root" 2>/dev/null || umount --lazy "$work/root"
    fi
    # nspawn leaves its mount-propagation directory behind.
    rmdir "/run/systemd/nspawn/propagate/$machine" 2>/dev/null
    if [[ ${KEEP:-0} == 1 ]]; then
        echo "kept $work"
    else
        rm -rf --one-file-system "$work"
    fi
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

die() {
    echo "FAIL: $*" >&2
    exit 1
}

# The container's tree: an overlay on the cached Debian rootfs.
"$repo/scripts/systemd-sandbox.sh" build || die "cannot build the Debian rootfs"
rootfs=${MEMSEAL_SANDBOX_ROOT:-/var/tmp/memseal-systemd-root}/rootfs
mkdir -p "$work"/{upper,overlay-work,root}
mount -t overlay "memseal-containers-$$" \
    -o "lowerdir=$rootfs,upperdir=$work/upper,workdir=$work/overlay-work" "$work/root" ||
    die "cannot mount an overlay of $rootfs"

# The probe, linked statically against libmemseal.a (and glibc): the
# container needs no library of ours.
"$repo/scripts/install-capi.sh" "$work/prefix" >/dev/null || die "install-capi.sh failed"
export PKG_CONFIG_PATH=$work/prefix/lib/pkgconfig
# shellcheck disable=SC2046  # pkg-config's output is a list of words
if ! cc -std=c11 -Wall -Wextra -Werror -static -o "$work/memseal-probe" \
    "$repo/tests/containers/probe.c" -I"$repo/capi/tests/c" $(pkg-config --cflags memseal) \
    -L"$(pkg-config --variable=libdir memseal)" -l:libmemseal.a -lutil -lrt -lpthread -lm -ldl \
    >"$work/probe-build.log" 2>&1; then
    cat "$work/probe-build.log" >&2
    die "cannot build the probe"
fi

# The node's daemon: root, on a socket in a directory of its own.
rundir=$work/run/memseal
mkdir -p "$rundir"
chmod 0755 "$work" "$work/run" "$rundir"
socket=$rundir/memseald.sock
config=$work/memseald.toml
write_policy() { # write_policy 'publisher_users = [...]'
    printf '[policy]\npublisher_groups = []\n%s\nuser_prefix = "user/{uid}/"\n' "$1" >"$config"
}
write_policy 'publisher_users = []'
"$bin_dir/memseald" --socket "$socket" --config "$config" >"$work/memseald.log" 2>&1 &
daemon_pid=$!
host_memseal() { timeout 30 "$bin_dir/memseal" --socket "$socket" "$@"; }
for ((tries = 0; tries < 100; tries++)); do
    host_memseal status >/dev/null 2>&1 && break
    sleep 0.1
done
host_memseal status >/dev/null || die "memseald did not start: $(cat "$work/memseald.log")"

head -c "$ASSET_BYTES" /dev/urandom >"$work/model.bin"
host_memseal publish "$ASSET" "$work/model.bin" >/dev/null || die "cannot publish $ASSET on the host"
asset_sha=$(sha256sum <"$work/model.bin" | cut -d' ' -f1)
asset_hash=$(host_memseal stat "$ASSET" --json | sed -n 's/.*"hash": *"\([0-9a-f]*\)".*/\1/p')
[[ ${#asset_hash} == 64 ]] || die "cannot read the hash of $ASSET"
touch /dev/shm/memseal-containers-host-marker-$$

# Run a command in a fresh container (a new set of namespaces each time,
# on the same tree). The host's socket directory is the only thing shared.
# --console=pipe hands the command our stdout and stderr as they are (a
# terminal would turn every newline into CR LF). Without a machined to
# register with, nspawn complains on exit that it may not clean up its
# propagation directory; teardown removes it.
container() {
    timeout 60 systemd-nspawn --quiet --register=no --keep-unit --machine="$machine" \
        --directory="$work/root" --private-users=pick --private-users-ownership=chown \
        --private-network --console=pipe --bind-ro="$rundir:/run/memseal" \
        --bind-ro="$bin_dir/memseal:/usr/local/bin/memseal" \
        --bind-ro="$work/memseal-probe:/usr/local/bin/memseal-probe" \
        "$@" </dev/null 2> >(grep -v '^Attempted to remove disk file system under' >&2)
}
# The same, as the container's ordinary user.
readonly AS_USER=(setpriv --reuid="$USER_UID" --regid="$USER_UID" --clear-groups)
container_user() { container "${AS_USER[@]}" "$@"; }
# The exit status of a publish of TEXT inside, as WHO ("root" or "user").
publish_status() { # publish_status WHO NAME TEXT
    local as=() status=0
    [[ $1 == user ]] && as=("${AS_USER[@]}")
    container --setenv=TEXT="$3" "${as[@]}" sh -c 'printf "%s" "$TEXT" | memseal publish "$0" -' "$2" \
        >"$work/last.out" 2>&1 || status=$?
    echo "$status"
}

# ------------------------------------------------------------------ checks

failures=0
why=""
detail=""
record() { # record NUMBER DESCRIPTION CHECK-FUNCTION
    why=""
    detail=""
    if "$3"; then
        echo "PASS $1. $2${detail:+ ($detail)}"
    else
        echo "FAIL $1. $2: ${why:-see above}"
        failures=$((failures + 1))
    fi
}
fail() {
    why=$*
    return 1
}

base="" # host uid of the container's root
overflow=$(cat /proc/sys/kernel/overflowuid)

check_user_namespace() {
    local map owner
    map=$(container cat /proc/self/uid_map) || fail "the container did not start" || return 1
    read -r _ base _ <<<"$map"
    [[ -n $base && $base != 0 ]] || fail "container root is host uid '$base' (uid_map: $map)" || return 1
    owner=$(container stat -c %u /run/memseal/memseald.sock) || fail "no socket inside" || return 1
    [[ $owner == "$overflow" ]] ||
        fail "the socket's owner appears as uid $owner inside, not the overflow uid $overflow" || return 1
    detail="container root = host uid $base; the host's root appears as uid $owner inside"
}

# Fetch with the CLI and the probe as WHO ("root" or "user").
fetch_as() {
    local run=container sha report
    [[ $1 == user ]] && run=container_user
    sha=$($run sh -c 'memseal get "$0" -o /tmp/asset && sha256sum </tmp/asset' "$ASSET" 2>&1) ||
        fail "memseal get $ASSET failed: $sha" || return 1
    [[ ${sha%% *} == "$asset_sha" ]] || fail "fetched sha256 ${sha%% *}, published $asset_sha" || return 1
    report=$($run memseal-probe "$ASSET" 2>&1) || fail "the probe failed: ${report//$'\n'/; }" || return 1
    grep -qx "hash $asset_hash" <<<"$report" || fail "the probe saw another hash: ${report//$'\n'/; }" || return 1
    grep -qx "socket /run/memseal/memseald.sock" <<<"$report" ||
        fail "the probe did not use the system socket: ${report//$'\n'/; }" || return 1
    detail="$(grep -o '[0-9]* passed, 0 failed' <<<"$report") seal and read-only checks"
}
check_fetch_root() { fetch_as root; }
check_fetch_user() { fetch_as user; }

# The publisher uid the daemon recorded for NAME.
publisher_of() {
    host_memseal stat "$1" --json | sed -n 's/.*"publisher_uid": *\([0-9]*\).*/\1/p'
}
expect_publish() { # expect_publish WHO NAME WANT-STATUS
    local status
    status=$(publish_status "$1" "$2" "from the container's $1")
    [[ $status == "$3" ]] && return 0
    fail "$1 in the container: publish $2 exited $status, expected $3: $(cat "$work/last.out")"
}

check_policy_root() {
    expect_publish root shared/from-container 5 || return 1
    expect_publish root user/0/x 5 || return 1
    expect_publish root "user/$base/x" 0 || return 1
    [[ $(publisher_of "user/$base/x") == "$base" ]] ||
        fail "the daemon recorded publisher uid $(publisher_of "user/$base/x"), not $base" || return 1
    [[ $(host_memseal get "user/$base/x") == "from the container's root" ]] ||
        fail "the host reads other bytes under user/$base/x" || return 1
    detail="denied shared/ and user/0/, allowed user/$base/"
}

check_policy_user() {
    local uid=$((base + USER_UID))
    expect_publish user "user/$USER_UID/x" 5 || return 1
    expect_publish user "user/$uid/x" 0 || return 1
    [[ $(publisher_of "user/$uid/x") == "$uid" ]] || fail "publisher uid is not $uid" || return 1
    detail="uid $USER_UID inside = uid $uid to the daemon"
}

check_grant() {
    write_policy "publisher_users = [\"$base\"]"
    kill -HUP "$daemon_pid"
    # The daemon rereads the policy as soon as it sees the signal.
    local tries status
    for ((tries = 0; tries < 50; tries++)); do
        status=$(publish_status root shared/from-container granted)
        [[ $status == 0 ]] && break
        sleep 0.1
    done
    [[ $status == 0 ]] ||
        fail "after the reload container root still may not publish: $(cat "$work/last.out")" || return 1
    [[ $(host_memseal get shared/from-container) == granted ]] || fail "the host reads other bytes" || return 1
    expect_publish user shared/from-container-user 5 || return 1
    detail="publisher_users = [\"$base\"]"
}

check_isolation() {
    local listing shm
    listing=$(container ls -A /run/memseal) || fail "cannot list /run/memseal inside" || return 1
    [[ $listing == memseald.sock ]] || fail "/run/memseal inside holds: $listing" || return 1
    shm=$(container ls -A /dev/shm) || fail "cannot list /dev/shm inside" || return 1
    [[ $shm != *memseal-containers-host-marker* ]] || fail "the host's /dev/shm is visible inside" || return 1
}

run_checks() {
    record 1 "private user namespace: container root is not host root" check_user_namespace
    [[ -n $base ]] || {
        echo "container test: the container does not run; nothing else can be checked"
        return 1
    }
    record 2 "root in the container fetches a sealed, read-only asset" check_fetch_root
    record 3 "uid $USER_UID in the container fetches a sealed, read-only asset" check_fetch_user
    record 4 "container root publishes only under user/<its host uid>/" check_policy_root
    record 5 "the container's uid $USER_UID publishes only under its own host uid" check_policy_user
    record 6 "publisher_users grants container root any name, not its other users" check_grant
    record 7 "only the socket is shared: /run/memseal and /dev/shm inside" check_isolation
    echo "containers (systemd-nspawn): $((7 - failures)) passed, $failures failed"
    if ((failures)); then
        echo "---- memseald log (last 20 lines) ----"
        tail -n 20 "$work/memseald.log"
        return 1
    fi
}

status=0
run_checks || status=$?
rm -f /dev/shm/memseal-containers-host-marker-$$
exit "$status"
