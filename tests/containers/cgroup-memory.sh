#!/usr/bin/env bash
# cgroup-memory.sh: measure whose memory cgroup pays for an asset's pages.
#
# Puts memseald, a publisher and a reader each in a memory cgroup of its
# own (children of this shell's memory cgroup, so nothing escapes the
# limits it runs under), publishes 64 MiB three ways, reads it back, and
# prints how much shared memory ("shmem" in memory.stat) each cgroup was
# charged:
#
#   - streamed (the library's publish_bytes; the daemon fills its memfd),
#   - by file descriptor (`memseal publish NAME FILE`; the daemon copies),
#   - from a pipe (`... | memseal publish NAME -`; the CLI fills a sealed
#     memfd and the daemon adopts it without a copy),
#   - then a reader maps every asset and touches every page.
#
# A measurement, not a test: it prints figures (SECURITY.md quotes them)
# and fails only when it cannot measure. Needs root and a memory cgroup
# controller (cgroup v1's memory hierarchy, or v2 with memory enabled).
#
# Usage: tests/containers/cgroup-memory.sh
# Environment: MEMSEAL_BIN_DIR (default target/debug).
# The scripts given to `sh -c` expand their own arguments ($0, $1, ...).
# shellcheck disable=SC2016
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin_dir=${MEMSEAL_BIN_DIR:-$repo/target/debug}
readonly MIB=$((1024 * 1024))
readonly SIZE=$((64 * MIB))

[[ ${1:-} == "" ]] || {
    sed -n '2,/^$/{/^$/q; s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"
    exit 0
}
[[ $(id -u) == 0 ]] || {
    echo "cgroup-memory: not measurable: it must run as root" >&2
    exit 1
}

# This shell's memory cgroup, v1 or v2.
if v1=$(awk -F: '$2 == "memory" {print $3}' /proc/self/cgroup) && [[ -n $v1 ]] &&
    [[ -d /sys/fs/cgroup/memory$v1 ]]; then
    parent=/sys/fs/cgroup/memory$v1
    layout="cgroup v1 memory hierarchy"
elif v2=$(awk -F: '$1 == "0" {print $3}' /proc/self/cgroup) &&
    grep -qw memory "/sys/fs/cgroup$v2/cgroup.subtree_control" 2>/dev/null; then
    parent=/sys/fs/cgroup$v2
    layout="cgroup v2"
else
    echo "cgroup-memory: not measurable here: no memory cgroup controller this shell can use" >&2
    exit 1
fi

work=$(mktemp -d /var/tmp/memseal-cgroup.XXXXXX)
top=$parent/memseal-measure-$$
daemon_pid=""
cleanup() {
    if [[ -n $daemon_pid ]]; then
        kill "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    local cg
    for cg in daemon publisher reader; do
        rmdir "$top/$cg" || echo "cgroup-memory: cannot remove $top/$cg" >&2
    done
    rmdir "$top" || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir "$top" "$top/daemon" "$top/publisher" "$top/reader"

shmem() { awk '$1 == "shmem" {print $2}' "$top/$1/memory.stat"; }
# Run a command inside cgroup $1.
in_cgroup() {
    local cg=$1
    shift
    sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$top/$cg" "$@"
}

socket=$work/memseald.sock
: >"$work/memseald.toml"
# Not through in_cgroup: $! must be the daemon itself (sh execs it).
sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$top/daemon" \
    "$bin_dir/memseald" --socket "$socket" --config "$work/memseald.toml" >"$work/memseald.log" 2>&1 &
daemon_pid=$!
for ((tries = 0; tries < 100; tries++)); do
    "$bin_dir/memseal" --socket "$socket" status >/dev/null 2>&1 && break
    sleep 0.1
done

# Random bytes, different for each method so that no two share a memfd.
for method in stream file pipe; do
    head -c "$SIZE" /dev/urandom >"$work/$method.bin"
done

declare -A before
snapshot() {
    local cg
    for cg in daemon publisher reader; do before[$cg]=$(shmem "$cg"); done
}
report() { # report WHAT
    local cg line="$1"
    for cg in daemon publisher reader; do
        line+=$(awk -v now="$(shmem "$cg")" -v then="${before[$cg]}" -v mib="$MIB" \
            'BEGIN {printf " | %6.1f", (now - then) / mib}')
    done
    echo "$line"
}

echo "memory cgroup charges in MiB of shmem for 64 MiB assets ($layout, kernel $(uname -r))"
echo "what | daemon | publisher | reader"

snapshot
in_cgroup publisher python3 - "$repo/clients/python" "$socket" "$work/stream.bin" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
import memseal
with open(sys.argv[3], "rb") as f:
    data = f.read()
memseal.Client(sys.argv[2]).publish_bytes("measure/stream", data)
EOF
report "streamed upload (the daemon fills the memfd)"

snapshot
in_cgroup publisher "$bin_dir/memseal" --socket "$socket" publish measure/file "$work/file.bin" >/dev/null
report "file by descriptor (the daemon copies it)"

snapshot
in_cgroup publisher sh -c 'cat "$0" | "$1" --socket "$2" publish measure/pipe - >/dev/null' \
    "$work/pipe.bin" "$bin_dir/memseal" "$socket"
report "pipe (the CLI fills a sealed memfd, the daemon adopts it)"

snapshot
for method in stream file pipe; do
    in_cgroup reader sh -c '"$0" --socket "$1" get "$2" | cat >/dev/null' \
        "$bin_dir/memseal" "$socket" "measure/$method"
done
report "a reader maps and touches all three"
