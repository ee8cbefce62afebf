#!/usr/bin/env bash
# check-units.sh: static checks of the systemd units in systemd/.
#
#   1. `systemd-analyze verify` must accept memseald.socket and
#      memseald.service without printing a single line. verify exits 0 on
#      unknown keys and bad values (it only warns), so any output counts as
#      a failure here.
#   2. `systemd-analyze security --offline=yes` must rate memseald.service
#      at an overall exposure of 1.0 or lower, and memseal-fleet.service (the
#      fleet agent, which needs the network) at 2.0 or lower.
#
# verify insists that ExecStart= names an existing executable, so it checks
# a copy of the units whose ExecStart= points at the built daemon
# ($MEMSEAL_BIN_DIR/memseald, default target/debug) and agent
# (memseal-fleet). When one has not been built yet, the copy points at a
# placeholder script; verify never runs it.
# Nothing else in the copy differs from the shipped files.
#
# Usage: scripts/check-units.sh        (exit status 0 when both checks pass)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
units=$repo/systemd
bin_dir=${MEMSEAL_BIN_DIR:-$repo/target/debug}
# systemd-analyze's threshold is on a 0-100 scale, ten times the exposure it
# prints: 10 means "fail above 1.0".

say() { printf '%s\n' "$*"; }
fail() { say "FAIL: $*" >&2; exit 1; }

if ! command -v systemd-analyze >/dev/null; then
    if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
        fail "systemd-analyze not found; install the 'systemd' package"
    fi
    say "systemd-analyze not found; installing the systemd package"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
say "using $(systemd-analyze --version | head -n1)"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# --- 1. verify ---------------------------------------------------------------
# copy_unit UNIT PROGRAM: copy UNIT into the scratch directory with the
# /usr/bin/PROGRAM of its ExecStart= line pointing at the build.
copy_unit() {
    local unit=$1 program=$2 built=$bin_dir/$2
    if [[ -x $built ]]; then
        built=$(cd "$(dirname "$built")" && pwd)/$program
    else
        say "note: $built is not built; verifying against a placeholder executable"
        built=$scratch/$program-placeholder
        printf '#!/bin/sh\nexit 1\n' >"$built"
        chmod 0755 "$built"
    fi
    sed "s|^ExecStart=/usr/bin/$program\\b|ExecStart=$built|" \
        "$units/$unit" >"$scratch/$unit"
    grep -q "^ExecStart=$built" "$scratch/$unit" ||
        fail "$unit has no line 'ExecStart=/usr/bin/$program' to point at the build"
}
cp "$units/memseald.socket" "$scratch/"
copy_unit memseald.service memseald
copy_unit memseal-fleet.service memseal-fleet

verify_rc=0
verify_out=$(cd "$scratch" &&
    systemd-analyze verify memseald.socket memseald.service memseal-fleet.service 2>&1) ||
    verify_rc=$?
if [[ $verify_rc != 0 || -n $verify_out ]]; then
    say "$verify_out" >&2
    fail "systemd-analyze verify: exit status $verify_rc, $(grep -c '' <<<"$verify_out") line(s) of complaints"
fi
say "PASS: systemd-analyze verify memseald.socket memseald.service memseal-fleet.service (no warnings)"

# --- 2. security exposure ----------------------------------------------------
# check_exposure UNIT MAX: the unit's overall exposure must be MAX or lower.
check_exposure() {
    local unit=$1 max_exposure=$2 threshold security_rc=0 security_out exposure
    threshold=$(awk -v max="$max_exposure" 'BEGIN { printf "%d", max * 10 }')
    security_out=$(systemd-analyze security --offline=yes --threshold="$threshold" \
        "$units/$unit" 2>&1) || security_rc=$?
    exposure=$(sed -n "s/.*Overall exposure level for ${unit//./\\.}: \\([0-9.]*\\).*/\\1/p" \
        <<<"$security_out")
    [[ -n $exposure ]] || { say "$security_out" >&2; fail "could not read the exposure level of $unit"; }
    say "$unit exposure: $exposure (limit $max_exposure)"
    if [[ $security_rc != 0 ]]; then
        # The settings that cost points are the rows ending in their exposure.
        grep -E '[0-9]\.[0-9]+[[:space:]]*$' <<<"$security_out" >&2 || true
        fail "$unit: exposure $exposure is above $max_exposure"
    fi
    say "PASS: systemd-analyze security $unit (exposure $exposure <= $max_exposure)"
}
check_exposure memseald.service 1.0
# The agent needs the network (IPv4/IPv6 to the store), which costs points.
check_exposure memseal-fleet.service 2.0
