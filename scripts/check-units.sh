#!/usr/bin/env bash
# check-units.sh: static checks of the systemd units in systemd/.
#
#   1. `systemd-analyze verify` must accept memseald.socket and
#      memseald.service without printing a single line. verify exits 0 on
#      unknown keys and bad values (it only warns), so any output counts as
#      a failure here.
#   2. `systemd-analyze security --offline=yes` must rate memseald.service
#      at an overall exposure of 1.0 or lower.
#
# verify insists that ExecStart= names an existing executable, so it checks
# a copy of the units whose ExecStart= points at the built daemon
# ($MEMSEAL_BIN_DIR/memseald, default target/debug). When no daemon has been
# built yet, the copy points at a placeholder script; verify never runs it.
# Nothing else in the copy differs from the shipped files.
#
# Usage: scripts/check-units.sh        (exit status 0 when both checks pass)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
units=$repo/systemd
bin_dir=${MEMSEAL_BIN_DIR:-$repo/target/debug}
# systemd-analyze's threshold is on a 0-100 scale, ten times the exposure it
# prints: 10 means "fail above 1.0".
max_exposure=1.0
threshold=10

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
daemon=$bin_dir/memseald
if [[ -x $daemon ]]; then
    daemon=$(cd "$(dirname "$daemon")" && pwd)/memseald
else
    say "note: $daemon is not built; verifying against a placeholder executable"
    daemon=$scratch/memseald-placeholder
    printf '#!/bin/sh\nexit 1\n' >"$daemon"
    chmod 0755 "$daemon"
fi
cp "$units/memseald.socket" "$scratch/"
sed "s|^ExecStart=/usr/bin/memseald\$|ExecStart=$daemon|" \
    "$units/memseald.service" >"$scratch/memseald.service"
grep -qx "ExecStart=$daemon" "$scratch/memseald.service" ||
    fail "memseald.service has no line 'ExecStart=/usr/bin/memseald' to point at the build"

verify_rc=0
verify_out=$(cd "$scratch" && systemd-analyze verify memseald.socket memseald.service 2>&1) ||
    verify_rc=$?
if [[ $verify_rc != 0 || -n $verify_out ]]; then
    say "$verify_out" >&2
    fail "systemd-analyze verify: exit status $verify_rc, $(grep -c '' <<<"$verify_out") line(s) of complaints"
fi
say "PASS: systemd-analyze verify memseald.socket memseald.service (no warnings)"

# --- 2. security exposure ----------------------------------------------------
security_rc=0
security_out=$(systemd-analyze security --offline=yes --threshold="$threshold" \
    "$units/memseald.service" 2>&1) || security_rc=$?
exposure=$(sed -n 's/.*Overall exposure level for memseald\.service: \([0-9.]*\).*/\1/p' <<<"$security_out")
[[ -n $exposure ]] || { say "$security_out" >&2; fail "could not read the exposure level"; }
say "memseald.service exposure: $exposure (limit $max_exposure)"
if [[ $security_rc != 0 ]]; then
    # The settings that cost points are the rows ending in their exposure.
    grep -E '[0-9]\.[0-9]+[[:space:]]*$' <<<"$security_out" >&2 || true
    fail "exposure $exposure is above $max_exposure"
fi
say "PASS: systemd-analyze security (exposure $exposure <= $max_exposure)"
