#!/usr/bin/env bash
# systemd-sandbox.sh: a throwaway machine with a real systemd as PID 1, for
# testing memseal's units on hosts whose own PID 1 is not systemd (CI runners,
# containers, build boxes).
#
# How it works
#   build  debootstraps a minimal Debian rootfs with systemd once and caches it.
#          A stamp file records the suite and package list; the rootfs is
#          rebuilt only when they change.
#   up     mounts a fresh overlayfs over the cached rootfs (the cache itself is
#          never written) and boots it with systemd-nspawn, systemd as PID 1,
#          in a private network namespace that has only `lo`.
#   exec   runs a command inside with nsenter, entering every namespace of the
#          container's PID 1. machinectl and `systemd-run -M` would need a
#          host systemd with machined and a system bus, which such hosts lack.
#   put    copies a host file into the running machine.
#   down   powers the machine off, unmounts the overlay and deletes it.
#
# Layout under $MEMSEAL_SANDBOX_ROOT (default /var/tmp/memseal-systemd-root):
#   rootfs/           the cached Debian tree (lower layer, read-only)
#   rootfs.log        output of the last debootstrap
#   machines/NAME/    one booted machine: overlay dirs, pid files, console log
#   last-console.log  the console of the machine that went down last
#
# Must run as root. Every subcommand is safe to repeat; `down` also cleans up
# after a machine whose nspawn was killed.
set -euo pipefail

readonly BASE=${MEMSEAL_SANDBOX_ROOT:-/var/tmp/memseal-systemd-root}
readonly ROOTFS=$BASE/rootfs
readonly NAME=${MEMSEAL_SANDBOX_NAME:-memseal}
readonly MACHINE=$BASE/machines/$NAME
readonly SUITE=${MEMSEAL_SANDBOX_SUITE:-bookworm}
# systemd and dbus make a bootable system; procps provides /bin/kill, which
# memseald.service runs for `systemctl reload`.
readonly PACKAGES=systemd,dbus,procps${MEMSEAL_SANDBOX_EXTRA_PACKAGES:+,$MEMSEAL_SANDBOX_EXTRA_PACKAGES}
readonly BOOT_TIMEOUT=${MEMSEAL_SANDBOX_BOOT_TIMEOUT:-60}

note() { printf 'sandbox: %s\n' "$*" >&2; }
die() {
    note "error: $*"
    exit 1
}

# ----------------------------------------------------------------- the rootfs

# The Debian archive this host's apt already uses, so the rootfs comes from
# the same mirror (and the same proxy, if any) as the host's packages.
debian_mirror() {
    if [[ -n ${MEMSEAL_SANDBOX_MIRROR:-} ]]; then
        echo "$MEMSEAL_SANDBOX_MIRROR"
        return
    fi
    local uri
    for uri in $(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '$1 == "URIs:" {$1 = ""; print}') \
        $(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) {print $i; break}}' \
            /etc/apt/sources.list 2>/dev/null); do
        if [[ $uri =~ /debian/?$ ]]; then
            echo "$uri"
            return
        fi
    done
    echo "http://deb.debian.org/debian"
}

ensure_host_tools() {
    local wanted=()
    command -v systemd-nspawn >/dev/null || wanted+=(systemd-container)
    command -v debootstrap >/dev/null || wanted+=(debootstrap)
    command -v nsenter >/dev/null || wanted+=(util-linux)
    ((${#wanted[@]} == 0)) && return
    command -v apt-get >/dev/null || die "missing ${wanted[*]} and no apt-get to install them"
    note "installing on the host: ${wanted[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${wanted[@]}" >/dev/null
}

cmd_build() {
    ensure_host_tools
    local stamp="$SUITE $PACKAGES"
    if [[ -f $ROOTFS/.memseal-sandbox && $(<"$ROOTFS/.memseal-sandbox") == "$stamp" ]]; then
        return
    fi
    if grep -qs "lowerdir=${ROOTFS}[,:]" /proc/mounts; then
        die "a machine still runs on $ROOTFS; run '$0 down' first"
    fi
    if [[ -e $ROOTFS ]]; then
        note "package list changed; rebuilding $ROOTFS"
        rm -rf --one-file-system "$ROOTFS"
    fi
    mkdir -p "$BASE"
    local mirror started=$SECONDS
    mirror=$(debian_mirror)
    note "debootstrap $SUITE ($PACKAGES) from $mirror; this takes a minute once"
    if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$mirror" \
        >"$BASE/rootfs.log" 2>&1; then
        tail -n 20 "$BASE/rootfs.log" >&2
        rm -rf --one-file-system "$ROOTFS"
        die "debootstrap failed; full log in $BASE/rootfs.log"
    fi
    # A quiet, fast boot: no login prompt fighting for the console, nothing
    # waiting for a network that a private namespace never brings up.
    chroot "$ROOTFS" systemctl mask --quiet \
        console-getty.service getty.target systemd-networkd-wait-online.service
    # An empty machine-id makes systemd generate a fresh one at every boot.
    : >"$ROOTFS/etc/machine-id"
    echo "$stamp" >"$ROOTFS/.memseal-sandbox"
    note "rootfs ready in $((SECONDS - started))s ($(du -sh "$ROOTFS" | cut -f1))"
}

# ----------------------------------------------------------- machine lookups

# True when PID is alive, not a zombie, and its command name is COMM.
pid_runs() {
    local state comm
    read -r state comm < <(ps -o stat=,comm= -p "$1" 2>/dev/null) || return 1
    [[ $state != Z* && $comm == "$2" ]]
}

nspawn_pid() {
    local pid
    pid=$(cat "$MACHINE/nspawn.pid" 2>/dev/null) && pid_runs "$pid" systemd-nspawn && echo "$pid"
}

# The container's PID 1 as the host sees it. Remembered in a file so that it
# can still be found (and stopped) if nspawn itself died.
init_pid() {
    local pid
    pid=$(cat "$MACHINE/init.pid" 2>/dev/null) && pid_runs "$pid" systemd && echo "$pid"
}

# ------------------------------------------------------ commands inside it

# Every command runs with a clean environment, so nothing of the caller's
# (MEMSEAL_SOCKET, XDG_RUNTIME_DIR, ...) leaks in and changes what it does.
readonly INSIDE_ENV=(env -i
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    HOME=/root LANG=C.UTF-8 TERM=dumb SYSTEMD_PAGER= SYSTEMD_COLORS=0)

# Run a command inside and return its exit status. The nsenter process is
# recorded in running/ while it lasts: `down` must end such commands before
# it powers off, because systemd's final shutdown stage freezes every
# process with SIGSTOP, a frozen child freezes its nsenter with it, and
# shutdown then waits 90 seconds for a process nobody reaps.
cmd_exec() {
    (($# > 0)) || die "exec needs a command"
    local init nsenter status=0
    init=$(init_pid) || die "machine '$NAME' is not running; run '$0 up'"
    mkdir -p "$MACHINE/running"
    # Started in the background and awaited, so that a signal to this script
    # is handled at once instead of after the command finishes. The explicit
    # redirection keeps our stdin (a background job would get /dev/null).
    nsenter --target "$init" --all --root --wd "${INSIDE_ENV[@]}" "$@" <&0 &
    nsenter=$!
    echo "$init" >"$MACHINE/running/$nsenter"
    wait "$nsenter" || status=$?
    rm -f "$MACHINE/running/$nsenter"
    return "$status"
}

# End the commands recorded in running/ that still live. The child inside
# goes first, so its nsenter sees it die, reaps it and exits by itself.
stop_running_commands() {
    local record nsenter child tries
    for record in "$MACHINE"/running/*; do
        [[ -e $record ]] || continue
        nsenter=${record##*/}
        if pid_runs "$nsenter" nsenter; then
            note "ending a command still running inside (nsenter $nsenter)"
            for child in $(ps -o pid= --ppid "$nsenter"); do
                kill -KILL "$child" 2>/dev/null || true
            done
            for ((tries = 0; tries < 30; tries++)); do
                pid_runs "$nsenter" nsenter || break
                sleep 0.1
            done
            if pid_runs "$nsenter" nsenter; then
                kill -KILL "$nsenter" 2>/dev/null || true
            fi
        fi
        rm -f "$record"
    done
}

# ---------------------------------------------------------------- up and down

cmd_up() {
    if nspawn_pid >/dev/null && init_pid >/dev/null; then
        note "machine '$NAME' already running (PID 1 is host pid $(init_pid))"
        return
    fi
    [[ -e $MACHINE ]] && cmd_down # leftovers of a machine that died
    cmd_build

    mkdir -p "$MACHINE"/{upper,work,root}
    mount -t overlay "memseal-sandbox-$NAME" \
        -o "lowerdir=$ROOTFS,upperdir=$MACHINE/upper,workdir=$MACHINE/work" "$MACHINE/root"

    # --register=no and --keep-unit: there is no machined and no system bus
    # on the host to register with; without --keep-unit nspawn fails with
    # "Failed to open system bus". setsid keeps our terminal's signals away
    # from the machine; it execs nspawn in place, so $! is nspawn's pid.
    setsid systemd-nspawn --quiet --directory="$MACHINE/root" --machine="$NAME" \
        --boot --register=no --keep-unit --console=passive --private-network \
        </dev/null >"$MACHINE/console.log" 2>&1 &
    echo $! >"$MACHINE/nspawn.pid"

    local deadline=$((SECONDS + BOOT_TIMEOUT)) nspawn child=""
    while [[ -z $child ]]; do
        ((SECONDS < deadline)) || { cmd_down; die "no container PID 1 after ${BOOT_TIMEOUT}s"; }
        sleep 0.05
        # Right after fork, the pid still runs setsid; give it time to exec.
        nspawn=$(cat "$MACHINE/nspawn.pid")
        if ! kill -0 "$nspawn" 2>/dev/null; then
            cat "$MACHINE/console.log" >&2
            cmd_down
            die "systemd-nspawn exited while booting"
        fi
        pid_runs "$nspawn" systemd-nspawn || continue
        for child in $(ps -o pid= --ppid "$nspawn") ""; do
            [[ -n $child ]] && pid_runs "$child" systemd && break
        done
    done
    echo "$child" >"$MACHINE/init.pid"

    # PID 1 answers systemctl only once its private bus socket exists, so
    # retry the first call until it connects.
    local state=""
    while ((SECONDS < deadline)); do
        state=$(timeout "$BOOT_TIMEOUT" nsenter --target "$child" --all --root --wd \
            "${INSIDE_ENV[@]}" systemctl is-system-running --wait 2>&1 </dev/null) || true
        [[ -n $state && $state != *"Failed to connect"* ]] && break
        sleep 0.1
    done
    note "machine '$NAME' booted: system $state (PID 1 is host pid $child)"
    if [[ $state != running ]]; then
        cmd_exec systemctl --failed --no-legend </dev/null >&2 || true
    fi
}

cmd_down() {
    local nspawn init tries
    nspawn=$(nspawn_pid) || nspawn=""
    init=$(init_pid) || init=""
    if [[ -n $init ]]; then
        stop_running_commands
        nsenter --target "$init" --all --root --wd "${INSIDE_ENV[@]}" \
            systemctl poweroff --no-block >/dev/null 2>&1 </dev/null || true
    elif [[ -n $nspawn ]]; then
        kill -TERM "$nspawn" 2>/dev/null || true
    fi
    for ((tries = 0; tries < 200; tries++)); do
        nspawn_pid >/dev/null || init_pid >/dev/null || break
        sleep 0.1
    done
    if nspawn=$(nspawn_pid); then
        note "machine '$NAME' did not power off within 20s; terminating systemd-nspawn"
        kill -TERM "$nspawn" 2>/dev/null || true
        sleep 3
        if nspawn_pid >/dev/null; then
            kill -KILL "$nspawn" 2>/dev/null || true
        fi
    fi
    if init=$(init_pid); then
        note "container PID 1 (host pid $init) outlived nspawn; killing it"
        kill -KILL "$init" 2>/dev/null || true
        sleep 0.5
    fi
    if [[ -d $MACHINE ]]; then
        # Keep the console of the last machine that went down, for post-mortems.
        if [[ -f $MACHINE/console.log ]]; then
            cp "$MACHINE/console.log" "$BASE/last-console.log"
        fi
        if mountpoint -q "$MACHINE/root"; then
            umount "$MACHINE/root" 2>/dev/null || umount --lazy "$MACHINE/root"
        fi
        rm -rf --one-file-system "$MACHINE"
    fi
    # nspawn leaves its mount-propagation directory behind when killed.
    rmdir "/run/systemd/nspawn/propagate/$NAME" 2>/dev/null || true
}

cmd_status() {
    if nspawn_pid >/dev/null && init_pid >/dev/null; then
        echo "machine '$NAME' running: PID 1 is host pid $(init_pid), root $MACHINE/root"
        cmd_exec systemctl is-system-running </dev/null || true
    elif init_pid >/dev/null; then
        echo "machine '$NAME': nspawn is gone but its PID 1 still runs; run '$0 down'"
        return 1
    else
        echo "machine '$NAME' not running"
        return 1
    fi
}

# put SRC DEST [MODE]: copy a host file to DEST inside the running machine.
cmd_put() {
    (($# >= 2)) || die "usage: $0 put SRC DEST [MODE]"
    init_pid >/dev/null || die "machine '$NAME' is not running; run '$0 up'"
    install -D -m "${3:-0644}" "$1" "$MACHINE/root/${2#/}"
}

usage() {
    cat <<EOF
usage: $0 COMMAND [ARG...]

  build               build the cached Debian $SUITE rootfs ($PACKAGES) if needed
  up                  boot machine '$NAME' on a fresh overlay of the rootfs
  exec CMD [ARG...]   run CMD inside the machine; exits with its status
  sh 'SCRIPT'         run a bash script inside the machine
  put SRC DEST [MODE] copy a host file into the machine (default mode 0644)
  status              tell whether the machine runs
  down                power the machine off and throw its overlay away

environment:
  MEMSEAL_SANDBOX_ROOT            where the rootfs and machines live ($BASE)
  MEMSEAL_SANDBOX_NAME            machine name, for several at once ($NAME)
  MEMSEAL_SANDBOX_EXTRA_PACKAGES  more Debian packages for the rootfs, comma-separated
  MEMSEAL_SANDBOX_MIRROR          Debian mirror (default: the host's apt mirror)
EOF
}

main() {
    local command=${1:-help}
    (($# > 0)) && shift
    case $command in
    help | -h | --help)
        usage
        return
        ;;
    esac
    [[ $(id -u) == 0 ]] || die "must run as root (it mounts overlays and boots containers)"
    case $command in
    build) cmd_build ;;
    up) cmd_up ;;
    exec) cmd_exec "$@" ;;
    sh) cmd_exec bash -c "$*" ;;
    put) cmd_put "$@" ;;
    status) cmd_status ;;
    down) cmd_down ;;
    *)
        usage >&2
        exit 2
        ;;
    esac
}

main "$@"
