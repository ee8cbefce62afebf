#!/usr/bin/env bash
# real-systemd.sh: memseal under a real systemd, end to end.
#
# Boots a throwaway Debian machine with systemd as PID 1 (through
# scripts/systemd-sandbox.sh), installs the built memseald and memseal and
# the project's unit, sysusers, tmpfiles and config files exactly as shipped,
# and checks what only a real service manager can show:
#
#   1. the first client connection starts the service (socket activation);
#   2. assets of 0 B, 5 KiB and 3 MiB publish and read back byte-identical;
#   3. after `systemctl restart`, every asset is back with the same version
#      and hash, and the fd store holds one memfd per blob plus the catalog;
#   4. the same after SIGKILL and the automatic restart;
#   5. an asset configured in /etc/memseal/assets.d is served, and
#      `systemctl reload` serves a new version of it after its file changed;
#   6. the access policy: a plain user may publish only under user/<uid>/,
#      a member of the group memseal may publish anywhere, anyone may fetch,
#      and a plain user told nothing reaches the system service;
#   7. `systemctl stop` ends the daemon cleanly while the socket stays;
#   8. the next connection after a stop starts the daemon again.
#
# Usage: tests/systemd/real-systemd.sh [--allow-skip]
#   --allow-skip  exit 0 with a loud SKIPPED message when this host cannot
#                 run the test (not root, no way to boot the machine);
#                 without it, that is a failure.
# Environment:
#   MEMSEAL_BIN_DIR  where memseald and memseal are (default target/debug)
#   MEMSEAL_TEST_JOURNAL  if set, a file to save the machine's whole journal
#                         in before it is torn down
#   MEMSEAL_SANDBOX_ROOT, MEMSEAL_SANDBOX_NAME: see scripts/systemd-sandbox.sh
#
# Prints one PASS/FAIL line per check, the journal of the units after a
# failure, and exits non-zero if any check failed. The machine is torn down
# on every exit path.

# The checks are called by name through `record`, and teardown by a trap;
# the linter cannot follow either and would call them unreachable.
# shellcheck disable=SC2317
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
sandbox=$repo/scripts/systemd-sandbox.sh
bin_dir=${MEMSEAL_BIN_DIR:-$repo/target/debug}
export MEMSEAL_SANDBOX_NAME=${MEMSEAL_SANDBOX_NAME:-memseal-test-$$}

# Inside the machine. Root uses the system socket by default; other users
# would look under their runtime directory, so they are given it explicitly.
readonly SOCKET=/run/memseal/memseald.sock
readonly SERVICE=memseald.service
readonly SOCKET_UNIT=memseald.socket
readonly ALICE_UID=2001 # a plain user
readonly BOB_UID=2002   # a member of the group memseal
# How long a client call may take before it counts as hung.
readonly CALL_TIMEOUT=30

# shellcheck source=scripts/lib/host-test.sh
source "$repo/scripts/lib/host-test.sh"
host_test_options "real-systemd test" "$@"

[[ $(id -u) == 0 ]] || unable "it must run as root (it boots a systemd-nspawn container)"
for tool in memseald memseal; do
    [[ -x $bin_dir/$tool ]] || {
        echo "FAIL: $bin_dir/$tool is not built (cargo build first, or set MEMSEAL_BIN_DIR)" >&2
        exit 1
    }
done
# Both must at least describe themselves; a placeholder binary would make
# every check below fail in confusing ways.
for tool in memseald memseal; do
    if ! "$bin_dir/$tool" --help 2>&1 | grep -q '^Usage:'; then
        echo "FAIL: '$bin_dir/$tool --help' prints no usage; is it fully built?" >&2
        exit 1
    fi
done

# ------------------------------------------------------------------ helpers

# The checks run in a background job that this shell waits for: bash runs
# a signal trap only between commands, and a check can sit in a command
# substitution for a while; `wait` returns at once when a signal arrives.
checks_pid=""
teardown() {
    trap '' INT TERM
    if [[ -n $checks_pid ]]; then
        kill -TERM "$checks_pid" 2>/dev/null || true
    fi
    if [[ -n ${MEMSEAL_TEST_JOURNAL:-} ]] && "$sandbox" status >/dev/null 2>&1; then
        "$sandbox" exec journalctl -b --no-pager -o short-monotonic </dev/null >"$MEMSEAL_TEST_JOURNAL" 2>&1 || true
    fi
    "$sandbox" down
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Run a command / a bash script inside the machine.
inside() { "$sandbox" exec "$@" </dev/null; }
inside_sh() { "$sandbox" sh "$1" </dev/null; }
# The memseal CLI inside, as root or as another uid (setpriv keeps it free
# of PAM and sessions; --init-groups gives the user's real groups).
memseal() { inside timeout "$CALL_TIMEOUT" memseal --socket "$SOCKET" "$@"; }
memseal_as() {
    local uid=$1
    shift
    inside timeout "$CALL_TIMEOUT" setpriv --reuid="$uid" --regid="$uid" --init-groups \
        memseal --socket "$SOCKET" "$@"
}
prop() { inside systemctl show --property="$2" --value "$1"; }
file_sha() { inside_sh "sha256sum < '$1' | cut -d' ' -f1"; }
# The version number in `memseal stat --json` output.
json_version() { grep -o '"version"[[:space:]]*:[[:space:]]*[0-9]*' <<<"$1" | grep -o '[0-9]*$'; }

# Poll a condition (a command run on the host) every 0.1s, $1 seconds
# plus the time the condition itself takes.
wait_for() {
    local seconds=$1 tries
    shift
    for ((tries = 0; tries < seconds * 10; tries++)); do
        "$@" && return 0
        sleep 0.1
    done
    "$@"
}

failures=0
why=""    # set by a check to say what went wrong
detail="" # set by a check to say what it saw when it passed

record() { # record NUMBER DESCRIPTION CHECK-FUNCTION
    local number=$1 description=$2
    why=""
    detail=""
    if "$3"; then
        echo "PASS $number. $description${detail:+ ($detail)}"
    else
        echo "FAIL $number. $description: ${why:-see above}"
        failures=$((failures + 1))
        echo "---- journal of $SERVICE and $SOCKET_UNIT (last 40 lines) ----"
        inside journalctl -b -u "$SERVICE" -u "$SOCKET_UNIT" --no-pager -n 40 -o short-monotonic
        echo "----"
    fi
}
fail() {
    why=$*
    return 1
}

# The assets this test publishes, by name: their file inside the machine.
declare -A asset_file=(
    [test/empty]=/root/data/empty.bin
    [test/small]=/root/data/small.bin
    [test/big]=/root/data/big.bin
)
readonly CONFIG_ASSET=config/greeting
readonly CONFIG_DATA=/srv/memseal-data/greeting.txt
declare -A expected_sha expected_stat
# The assets checks 3 and 4 expect back: those check 2 saw served. All have
# distinct contents, so the fd store should hold one memfd for each of them
# plus the catalog.
tracked=()

# Fetch NAME and compare it with what was published; compare its metadata.
asset_intact() {
    local name=$1 out sha stat
    out=/root/fetched/${name//\//_}
    memseal get "$name" -o "$out" || {
        why="fetching $name failed"
        return 1
    }
    sha=$(file_sha "$out")
    [[ $sha == "${expected_sha[$name]:-}" ]] || {
        why="$name: fetched sha256 '$sha', published '${expected_sha[$name]:-}'"
        return 1
    }
    stat=$(memseal stat "$name" --json) || {
        why="stat $name failed"
        return 1
    }
    [[ $stat == "${expected_stat[$name]:-}" ]] || {
        local before=${expected_stat[$name]:-}
        why="$name: stat changed from '${before//$'\n'/ }' to '${stat//$'\n'/ }'"
        return 1
    }
}

all_assets_intact() {
    local name
    ((${#tracked[@]} > 0)) || fail "no asset was published in check 2" || return 1
    for name in "${tracked[@]}"; do
        asset_intact "$name" || return 1
    done
}

store_size_is() { [[ $(prop "$SERVICE" NFileDescriptorStore) == "$1" ]]; }

store_holds_all() {
    # One memfd per distinct asset, the catalog snapshot and its journal.
    local want=$((${#tracked[@]} + 2))
    if ! wait_for 5 store_size_is "$want"; then
        fail "NFileDescriptorStore is $(prop "$SERVICE" NFileDescriptorStore), expected $want" \
            "(${#tracked[@]} distinct assets + the catalog snapshot and its journal)"
        return 1
    fi
    detail="${tracked[*]} intact; NFileDescriptorStore=$want"
}

service_is() { [[ $(inside systemctl is-active "$SERVICE") == "$1" ]]; }

# ------------------------------------------------------------------ checks

check_activation() {
    local state
    state=$(inside systemctl is-active "$SERVICE")
    [[ $state == inactive ]] || fail "before any client the service is '$state', not inactive" || return 1
    memseal status >/dev/null || fail "'memseal status' failed on the first connection" || return 1
    wait_for 5 service_is active ||
        fail "after the first connection the service is '$(inside systemctl is-active "$SERVICE")'"
}

check_publish() {
    inside_sh 'mkdir -p /root/data /root/fetched &&
        : > /root/data/empty.bin &&
        head -c 5120 /dev/urandom > /root/data/small.bin &&
        head -c 3145728 /dev/urandom > /root/data/big.bin' || fail "could not create the test files" || return 1
    local name
    for name in "${!asset_file[@]}"; do
        memseal publish "$name" "${asset_file[$name]}" >/dev/null || fail "publishing $name failed" || return 1
        expected_sha[$name]=$(file_sha "${asset_file[$name]}")
        expected_stat[$name]=$(memseal stat "$name" --json) || fail "stat $name --json failed" || return 1
        [[ $(json_version "${expected_stat[$name]}") == 1 ]] ||
            fail "$name: first publish is not version 1: ${expected_stat[$name]}" || return 1
        asset_intact "$name" || return 1
        tracked+=("$name")
    done
    # The configured asset should have been published when the daemon
    # started; if so, restarts must keep it too. Whether it was is check 5.
    if expected_stat[$CONFIG_ASSET]=$(memseal stat "$CONFIG_ASSET" --json 2>/dev/null); then
        expected_sha[$CONFIG_ASSET]=$(file_sha "$CONFIG_DATA")
        tracked+=("$CONFIG_ASSET")
    fi
}

check_restart() {
    local pid_before pid_after
    pid_before=$(prop "$SERVICE" MainPID)
    inside timeout 60 systemctl restart "$SERVICE" || fail "systemctl restart failed" || return 1
    pid_after=$(prop "$SERVICE" MainPID)
    [[ $pid_after != 0 && $pid_after != "$pid_before" ]] ||
        fail "MainPID did not change ($pid_before -> $pid_after)" || return 1
    all_assets_intact && store_holds_all
}

restarted_once_more() {
    [[ $(prop "$SERVICE" NRestarts) -gt $1 ]] && service_is active
}

check_crash() {
    local restarts
    restarts=$(prop "$SERVICE" NRestarts)
    inside systemctl kill --signal=KILL "$SERVICE" || fail "systemctl kill failed" || return 1
    wait_for 20 restarted_once_more "$restarts" ||
        fail "no automatic restart within 20s (NRestarts $(prop "$SERVICE" NRestarts)," \
            "state $(inside systemctl is-active "$SERVICE"))" || return 1
    all_assets_intact && store_holds_all || return 1
    detail="NRestarts $restarts -> $(prop "$SERVICE" NRestarts); $detail"
}

config_version_is() {
    local stat
    stat=$(memseal stat "$CONFIG_ASSET" --json 2>/dev/null) || return 1
    [[ $(json_version "$stat") == "$1" ]]
}

check_reload() {
    local old_version new_version
    [[ -n ${expected_stat[$CONFIG_ASSET]:-} ]] ||
        fail "$CONFIG_ASSET, declared in /etc/memseal/assets.d, was not served after start" || return 1
    asset_intact "$CONFIG_ASSET" || return 1
    old_version=$(json_version "${expected_stat[$CONFIG_ASSET]}")
    new_version=$((old_version + 1))
    inside_sh "echo 'hello, second edition' > $CONFIG_DATA" || fail "could not change $CONFIG_DATA" || return 1
    inside systemctl reload "$SERVICE" || fail "systemctl reload failed" || return 1
    wait_for 10 config_version_is "$new_version" ||
        fail "$CONFIG_ASSET is not at version $new_version 10s after the reload:" \
            "$(memseal stat "$CONFIG_ASSET" --json 2>&1)" || return 1
    expected_sha[$CONFIG_ASSET]=$(file_sha "$CONFIG_DATA")
    expected_stat[$CONFIG_ASSET]=$(memseal stat "$CONFIG_ASSET" --json)
    asset_intact "$CONFIG_ASSET" || return 1
    service_is active || fail "the service is not active after the reload" || return 1
    detail="version $old_version -> $new_version"
}

# Run memseal as UID and expect exit status WANT; say what happened if not.
expect_exit() { # expect_exit WANT UID ARG...
    local want=$1 uid=$2 status=0 output
    shift 2
    output=$(memseal_as "$uid" "$@" 2>&1) || status=$?
    [[ $status == "$want" ]] && return 0
    fail "uid $uid: 'memseal $*' exited $status, expected $want: $output"
}

check_policy() {
    inside_sh "useradd --no-create-home --uid $ALICE_UID --user-group alice &&
        useradd --no-create-home --uid $BOB_UID --user-group --groups memseal bob &&
        echo 'from a user' > /tmp/user.txt && echo 'for everyone' > /tmp/shared.txt &&
        chmod 0644 /tmp/user.txt /tmp/shared.txt" ||
        fail "could not create the test users" || return 1
    # A plain user: refused outside user/<uid>/, allowed inside it.
    expect_exit 5 "$ALICE_UID" publish shared/x /tmp/user.txt || return 1
    expect_exit 5 "$ALICE_UID" publish "user/$BOB_UID/x" /tmp/user.txt || return 1
    expect_exit 0 "$ALICE_UID" publish "user/$ALICE_UID/x" /tmp/user.txt || return 1
    # A member of the group memseal may publish any name.
    expect_exit 0 "$BOB_UID" publish shared/x /tmp/shared.txt || return 1
    # Nobody but a publisher or the owner may remove.
    expect_exit 5 "$ALICE_UID" rm shared/x || return 1
    # Anyone may fetch, their own assets and everyone else's.
    expect_exit 0 "$ALICE_UID" get "user/$ALICE_UID/x" -o /tmp/alice-x.out || return 1
    expect_exit 0 "$ALICE_UID" get shared/x -o /tmp/alice-shared.out || return 1
    [[ $(file_sha /tmp/alice-x.out) == $(file_sha /tmp/user.txt) ]] ||
        fail "user/$ALICE_UID/x fetched by its owner differs from the published file" || return 1
    [[ $(file_sha /tmp/alice-shared.out) == $(file_sha /tmp/shared.txt) ]] ||
        fail "shared/x fetched by uid $ALICE_UID differs from the published file" || return 1
    expect_exit 4 "$ALICE_UID" get shared/nothing-here || return 1
    # Told nothing (no --socket, no MEMSEAL_SOCKET, no per-user daemon), a
    # plain user finds the system service.
    local found reached
    found=$(inside timeout "$CALL_TIMEOUT" setpriv --reuid="$ALICE_UID" --regid="$ALICE_UID" \
        --init-groups env -u MEMSEAL_SOCKET -u XDG_RUNTIME_DIR memseal get shared/x) ||
        fail "uid $ALICE_UID's default 'memseal get' did not reach the system service" || return 1
    [[ $found == "for everyone" ]] ||
        fail "uid $ALICE_UID's default 'memseal get' printed '$found'" || return 1
    reached=$(inside timeout "$CALL_TIMEOUT" setpriv --reuid="$ALICE_UID" --regid="$ALICE_UID" \
        --init-groups env -u MEMSEAL_SOCKET -u XDG_RUNTIME_DIR memseal status) ||
        fail "uid $ALICE_UID's default 'memseal status' failed" || return 1
    grep -q "the system service" <<<"$reached" ||
        fail "memseal status did not say it reached the system service: $reached" || return 1
}

check_stop() {
    local cursor result code status owner
    # Only what the journal says from here on concerns this stop.
    cursor=$(inside journalctl --lines=0 --show-cursor --no-pager | sed -n 's/^-- cursor: //p')
    # systemctl warns that the socket can start the service again: intended.
    inside timeout 60 systemctl stop "$SERVICE" 2>/dev/null || fail "systemctl stop failed" || return 1
    result=$(prop "$SERVICE" Result)
    code=$(prop "$SERVICE" ExecMainCode)     # 1: exited, 2: killed by a signal
    status=$(prop "$SERVICE" ExecMainStatus) # exit status, or the signal number
    [[ $result == success && $code == 1 && $status == 0 ]] ||
        fail "stop was not clean: Result=$result ExecMainCode=$code ExecMainStatus=$status" || return 1
    if inside journalctl --after-cursor="$cursor" -u "$SERVICE" --no-pager -o cat |
        grep -q 'stop-sigterm.*timed out\|Killing process'; then
        fail "systemd had to kill the daemon on stop"
        return 1
    fi
    [[ $(inside systemctl is-active "$SOCKET_UNIT") == active ]] ||
        fail "$SOCKET_UNIT is not active after the service stopped" || return 1
    owner=$(inside stat -c '%F %U:%G %a' "$SOCKET") || fail "$SOCKET is gone after the stop" || return 1
    [[ $owner == "socket root:memseal 666" ]] || fail "$SOCKET is '$owner', not 'socket root:memseal 666'"
}

check_reactivation() {
    service_is inactive || fail "the service is '$(inside systemctl is-active "$SERVICE")' after the stop" || return 1
    memseal ls >/dev/null || fail "'memseal ls' failed after the stop" || return 1
    wait_for 5 service_is active || fail "the connection after the stop did not start the service"
}

# ------------------------------------------------------------------ machine

if ! "$sandbox" up; then
    unable "the systemd machine did not boot (see the messages above)"
fi

install_files() {
    local root=/usr/lib
    "$sandbox" put "$bin_dir/memseald" /usr/bin/memseald 0755 &&
        "$sandbox" put "$bin_dir/memseal" /usr/bin/memseal 0755 &&
        "$sandbox" put "$repo/systemd/memseald.socket" "$root/systemd/system/memseald.socket" &&
        "$sandbox" put "$repo/systemd/memseald.service" "$root/systemd/system/memseald.service" &&
        "$sandbox" put "$repo/systemd/memseal.sysusers" "$root/sysusers.d/memseal.conf" &&
        "$sandbox" put "$repo/systemd/memseal.tmpfiles" "$root/tmpfiles.d/memseal.conf" &&
        "$sandbox" put "$repo/systemd/memseald.toml" /etc/memseal/memseald.toml || return 1
    # What a package's maintainer scripts do: create the user and the
    # directories, pick up the units, enable the socket.
    inside_sh "systemd-sysusers memseal.conf &&
        systemd-tmpfiles --create memseal.conf &&
        mkdir -p ${CONFIG_DATA%/*} &&
        echo 'hello, first edition' > $CONFIG_DATA &&
        printf 'name = \"%s\"\npath = \"%s\"\n' $CONFIG_ASSET $CONFIG_DATA > /etc/memseal/assets.d/greeting.asset &&
        systemctl daemon-reload &&
        systemctl enable --now $SOCKET_UNIT"
}
run_checks() {
    if ! install_files; then
        echo "FAIL: installing memseal into the machine failed" >&2
        exit 1
    fi
    record 1 "first connection socket-activates $SERVICE" check_activation
    record 2 "publish 0 B, 5 KiB, 3 MiB assets; fetched back identical" check_publish
    record 3 "systemctl restart keeps every asset, version and hash; fd store = blobs + 2" check_restart
    record 4 "SIGKILL -> automatic restart keeps every asset; fd store = blobs + 2" check_crash
    record 5 "assets.d asset served; changed file + systemctl reload -> new version" check_reload
    record 6 "policy: user/<uid>/ only for plain users, anything for group memseal, fetch for all; a plain user finds the system service unasked" check_policy
    record 7 "systemctl stop exits cleanly; the socket stays with $SOCKET_UNIT" check_stop
    record 8 "the next connection after a stop starts the daemon again" check_reactivation

    echo "real-systemd: $((8 - failures)) passed, $failures failed"
    if ((failures)); then
        exit 1
    fi
}

run_checks &
checks_pid=$!
status=0
wait "$checks_pid" || status=$?
checks_pid=""
exit "$status"
