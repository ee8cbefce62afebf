# host-test.sh: sourced by the tests that need something of the host (root,
# systemd-nspawn, podman, valgrind): their command line, and what to do when
# the host lacks a prerequisite.
#
#   source "$repo/scripts/lib/host-test.sh"
#   host_test_options "container test" "$@"
#
# `--allow-skip` turns a missing prerequisite into a loud SKIPPED instead of
# a failure (scripts/test passes it unless MEMSEAL_REQUIRE_ALL=1, which CI
# sets); `-h` or `--help` prints the comment block at the top of the calling
# script, up to its first blank line; any other argument is a usage error.

# Read the calling script's arguments; `$1` names the test in messages.
host_test_options() {
    host_test=$1
    shift
    allow_skip=0
    local arg
    for arg in "$@"; do
        case $arg in
        --allow-skip) allow_skip=1 ;;
        -h | --help)
            sed -n '2,/^$/{/^$/q; s/^# \{0,1\}//p}' "$0"
            exit 0
            ;;
        *)
            echo "unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
        esac
    done
}

# A line nobody scrolling a test log can miss.
skipped() {
    echo "*****************************************************************"
    echo "SKIPPED: $*"
    echo "*****************************************************************"
}

# The host lacks a prerequisite of the whole test: skip it (exit 0) when
# allowed, fail (exit 1) otherwise.
unable() {
    if ((allow_skip)); then
        skipped "$host_test not run: $*"
        exit 0
    fi
    echo "FAIL: $host_test cannot run: $*" >&2
    exit 1
}
