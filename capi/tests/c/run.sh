#!/usr/bin/env bash
# run.sh: libmemseal's C and C++ tests, built the way a user builds them.
#
#   1. install the library, headers and pkg-config file into a temporary
#      prefix with scripts/install-capi.sh, and check what was installed
#      (soname, symlinks, exported symbols, pkg-config);
#   2. compile the tests, and the README's C example, against that
#      installed copy with `pkg-config --cflags --libs memseal`, and once
#      against libmemseal.a;
#   3. start the real memseald on a temporary socket and run them: as a
#      publisher, as a plain user (uid 65534, root only), then stopping the
#      daemon under an asset that must outlive it;
#   4. the same again under valgrind memcheck: no invalid access, no leak.
#
# Usage: capi/tests/c/run.sh [--allow-skip]
#   --allow-skip  when not root (no plain-user run) or valgrind is missing,
#                 skip those parts loudly instead of failing
# Environment: MEMSEAL_BIN_DIR (default target/debug), KEEP=1 keeps the
# temporary directory.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
here=$repo/capi/tests/c
bin_dir=${MEMSEAL_BIN_DIR:-$repo/target/debug}
# shellcheck source=scripts/lib/host-test.sh
source "$repo/scripts/lib/host-test.sh"
host_test_options "C library test" "$@"

failures=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}
# A part of the test this host cannot run: skipped when allowed, a
# failure otherwise; the other parts run either way.
unable_part() {
    if ((allow_skip)); then
        skipped "$*"
    else
        fail "cannot run: $* (--allow-skip skips it)"
    fi
}

for tool in cc c++ pkg-config; do
    command -v "$tool" >/dev/null || {
        echo "FAIL: $tool is missing (scripts/install-test-deps.sh installs it)" >&2
        exit 1
    }
done
[[ -x $bin_dir/memseald && -x $bin_dir/memseal ]] || {
    echo "FAIL: memseald and memseal are not built in $bin_dir (cargo build --workspace --bins)" >&2
    exit 1
}

work=$(mktemp -d "${TMPDIR:-/tmp}/memseal-capi-test.XXXXXX")
# The plain user must reach the socket, the binaries and the libraries.
chmod 0755 "$work"
daemon_pid=""
cleanup() {
    if [[ -n $daemon_pid ]]; then
        kill "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    if [[ ${KEEP:-0} == 1 ]]; then
        echo "kept $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

# --------------------------------------------------------- install, check

prefix=$work/prefix
"$repo/scripts/install-capi.sh" "$prefix" >/dev/null
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
version=$(pkg-config --modversion memseal)
lib=$prefix/lib/libmemseal.so.$version
[[ -f $lib && -f $prefix/lib/libmemseal.a && -f $prefix/include/memseal.h &&
    -f $prefix/include/memseal.hpp ]] || fail "install-capi.sh left out a file: $(ls -R "$prefix")"
[[ $(readlink "$prefix/lib/libmemseal.so") == libmemseal.so.${version%%.*} &&
    $(readlink "$prefix/lib/libmemseal.so.${version%%.*}") == libmemseal.so.$version ]] ||
    fail "the libmemseal.so symlinks are wrong"
soname=$(readelf -d "$lib" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
[[ $soname == libmemseal.so.${version%%.*} ]] || fail "soname is '$soname'"
# Only the C API leaves the shared library.
stray=$(nm -D --defined-only "$lib" | awk '{print $3}' | grep -v '^memseal_' || true)
[[ -z $stray ]] || fail "the shared library exports more than memseal_*: $stray"
# Every function the header declares is exported.
for fn in $(grep -o '\bmemseal_[a-z_]*(' "$prefix/include/memseal.h" | tr -d '(' | sort -u); do
    nm -D --defined-only "$lib" | grep -qw "$fn" || fail "the header declares $fn, the library lacks it"
done
echo "installed libmemseal $version under a temporary prefix (soname $soname)"

# ---------------------------------------------------------------- compile

cflags=(-std=c11 -Wall -Wextra -Werror -pthread -g)
# shellcheck disable=SC2046  # pkg-config's output is a list of words
cc "${cflags[@]}" -o "$work/test_memseal" "$here/test_memseal.c" $(pkg-config --cflags --libs memseal)
# The same tests linked statically against libmemseal.a.
# shellcheck disable=SC2046
cc "${cflags[@]}" -o "$work/test_memseal_static" "$here/test_memseal.c" \
    $(pkg-config --cflags memseal) $(pkg-config --static --libs memseal | sed 's/-lmemseal\b/-l:libmemseal.a/')
# shellcheck disable=SC2046
c++ -std=c++17 -Wall -Wextra -Werror -g -o "$work/test_memseal_cpp" "$here/test_memseal.cpp" \
    $(pkg-config --cflags --libs memseal)
# The README's C example, so that it cannot rot.
awk '/^## C and C\+\+/ {section = 1} section && /^```c$/ {code = 1; next}
    code && /^```$/ {exit} code {print}' "$repo/README.md" >"$work/readme_example.c"
[[ -s $work/readme_example.c ]] || fail "no C example found in README.md"
# shellcheck disable=SC2046
cc "${cflags[@]}" -o "$work/readme_example" "$work/readme_example.c" $(pkg-config --cflags --libs memseal)
if readelf -d "$work/test_memseal_static" | grep -q 'libmemseal'; then
    fail "the static build still needs libmemseal.so"
fi
readelf -d "$work/test_memseal" | grep -q "NEEDED.*\[$soname\]" ||
    fail "the dynamic build does not record $soname"
export LD_LIBRARY_PATH=$prefix/lib

# ------------------------------------------------------------------- run

socket=$work/memseald.sock
: >"$work/memseald.toml"
start_daemon() {
    "$bin_dir/memseald" --socket "$socket" --config "$work/memseald.toml" --keep-versions 2 \
        >>"$work/memseald.log" 2>&1 &
    daemon_pid=$!
    local tries
    for ((tries = 0; tries < 100; tries++)); do
        "$bin_dir/memseal" --socket "$socket" status >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "FAIL: memseald did not start; its log:" >&2
    cat "$work/memseald.log" >&2
    exit 1
}
# The daemon-down run stopped it; reap it.
daemon_stopped() {
    wait "$daemon_pid" 2>/dev/null || true
    daemon_pid=""
}

export MEMSEAL_SOCKET=$socket
run() { # run LABEL COMMAND...: a test binary, with its output, under a time limit
    local label=$1
    shift
    echo "-- $label"
    timeout 600 "$@" || fail "$label"
}

# shellcheck disable=SC2054  # the commas belong to valgrind's option values
valgrind_cmd=(valgrind --quiet --error-exitcode=99 --leak-check=full
    --errors-for-leak-kinds=definite,possible --show-leak-kinds=definite,possible
    --child-silent-after-fork=yes)

# One round: every mode of the C tests against a fresh daemon.
round() { # round [WRAPPER...]
    start_daemon
    run "C, publisher${1:+ under $1}" "$@" "$work/test_memseal" publisher
    if [[ $# == 0 ]]; then
        run "C linked statically, publisher" "$work/test_memseal_static" publisher
        run "C++ wrapper" "$work/test_memseal_cpp"
        run "the README's C example" "$work/readme_example"
        local printed
        printed=$("$work/readme_example")
        [[ $printed == "2 3 5 7 11 (version "*")" ]] || fail "the README's example printed '$printed'"
    else
        run "C++ wrapper under $1" "$@" "$work/test_memseal_cpp"
    fi
    if [[ $(id -u) == 0 ]]; then
        run "C, plain user uid 65534${1:+ under $1}" setpriv --reuid=65534 --regid=65534 \
            --clear-groups env MEMSEAL_TEST_DAEMON_UID=0 "$@" "$work/test_memseal" user
    else
        unable_part "the plain-user run of the C tests needs root (to become uid 65534)"
    fi
    run "C, daemon stops under a fetched asset${1:+ under $1}" "$@" \
        "$work/test_memseal" daemon-down "$daemon_pid"
    daemon_stopped
}

round
if command -v valgrind >/dev/null; then
    round "${valgrind_cmd[@]}"
else
    unable_part "valgrind is not installed (scripts/install-test-deps.sh installs it as root)"
fi

if ((failures)); then
    echo "---- memseald log ----" >&2
    tail -n 40 "$work/memseald.log" >&2
    echo "libmemseal: $failures part(s) failed" >&2
    exit 1
fi
echo "libmemseal: C, static and C++ tests passed, also under valgrind"
