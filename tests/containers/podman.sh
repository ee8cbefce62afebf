#!/usr/bin/env bash
# podman.sh: the container image and the Kubernetes example, for real.
#
#   1. the manifests in deploy/kubernetes/ parse (PyYAML) and say what the
#      deployment needs (tests/containers/kubernetes.py check);
#   2. deploy/container/Containerfile builds with podman;
#   3. the DaemonSet's container and the reader pod's container run from
#      that image the way a kubelet would run them (same command, user,
#      volumes, read-only root, no capabilities; the node's /run/memseal is
#      a directory here): the reader, an ordinary uid sharing nothing with
#      the daemon but the socket's directory, prints the asset the daemon
#      published from its ConfigMap.
#
# No registry is reachable on the machines this runs on, so the base image
# (debian:bookworm-slim in the Containerfile) is replaced by a local image
# of the Debian 12 rootfs that scripts/systemd-sandbox.sh builds, imported
# once and cached in podman's storage. On these hosts podman needs runc
# (crun refuses hybrid cgroups) and explicit ulimits (its defaults exceed
# the hard limits).
#
# Usage: tests/containers/podman.sh [--allow-skip]
#   --allow-skip  skip loudly when podman cannot run here (not root, not
#                 installable); without it, that is a failure.
# Environment: MEMSEAL_BIN_DIR (default target/debug), KEEP=1.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin_dir=${MEMSEAL_BIN_DIR:-$repo/target/debug}
checker=$repo/tests/containers/kubernetes.py

# shellcheck source=scripts/lib/host-test.sh
source "$repo/scripts/lib/host-test.sh"
host_test_options "container image test" "$@"

die() {
    echo "FAIL: $*" >&2
    exit 1
}

# 1. The manifests, which need only Python.
python3 "$checker" check || die "the Kubernetes manifests do not say what the deployment needs"

[[ $(id -u) == 0 ]] || unable "it must run as root (rootful podman)"
command -v podman >/dev/null || unable "podman is missing (scripts/install-test-deps.sh installs it)"
command -v runc >/dev/null || unable "runc is missing (scripts/install-test-deps.sh installs it)"
for tool in memseald memseal memseal-fleet; do
    [[ -x $bin_dir/$tool ]] || die "$bin_dir/$tool is not built (cargo build --workspace --bins)"
done

image=$(python3 - "$repo/deploy/kubernetes" <<'EOF'
import pathlib, sys, yaml
for path in pathlib.Path(sys.argv[1]).glob("*.yaml"):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc["kind"] == "DaemonSet" and doc["metadata"]["name"] == "memseald":
            print(doc["spec"]["template"]["spec"]["containers"][0]["image"])
EOF
)
[[ -n $image ]] || die "no image named in the DaemonSet"

work=$(mktemp -d /var/tmp/memseal-podman.XXXXXX)
daemon_name=memseald-test-$$
podman_run=(podman --runtime runc run --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)"
    --ulimit "nproc=4096:4096")
teardown() {
    podman rm --force --time 5 "$daemon_name" >/dev/null 2>&1
    podman rmi --force "$image" >/dev/null 2>&1
    if [[ ${KEEP:-0} == 1 ]]; then
        echo "kept $work"
    else
        rm -rf --one-file-system "$work"
    fi
}
trap teardown EXIT

# 2. The image. The stand-in base: Debian 12, tagged by the rootfs's stamp.
"$repo/scripts/systemd-sandbox.sh" build || die "cannot build the Debian rootfs"
rootfs=${MEMSEAL_SANDBOX_ROOT:-/var/tmp/memseal-systemd-root}/rootfs
base=localhost/memseal-test-base:$(sha256sum <"$rootfs/.memseal-sandbox" | cut -c1-12)
if ! podman image exists "$base"; then
    echo "importing $rootfs as $base (once)"
    tar -C "$rootfs" -c . | podman import --quiet - "$base" >/dev/null || die "podman import failed"
fi
mkdir -p "$work/context"
cp "$bin_dir/memseald" "$bin_dir/memseal" "$bin_dir/memseal-fleet" "$work/context/"
if ! podman --runtime runc build --quiet --network=none --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" \
    --build-arg "BASE_IMAGE=$base" -f "$repo/deploy/container/Containerfile" -t "$image" \
    "$work/context" >"$work/build.log" 2>&1; then
    cat "$work/build.log" >&2
    die "podman build of deploy/container/Containerfile failed"
fi
echo "PASS podman build -f deploy/container/Containerfile ($image on $base)"

# 3. The DaemonSet's container, then the reader pod's.
mapfile -t daemon_args < <(python3 "$checker" podman-args daemon "$work/node")
mapfile -t reader_args < <(python3 "$checker" podman-args reader "$work/node")
"${podman_run[@]}" --detach --name "$daemon_name" "${daemon_args[@]}" >/dev/null ||
    die "the DaemonSet's container did not start"
for ((tries = 0; tries < 100; tries++)); do
    [[ -S $work/node/run/memseal/memseald.sock ]] && break
    sleep 0.1
done
[[ -S $work/node/run/memseal/memseald.sock ]] ||
    die "no socket from the daemon's container: $(podman logs "$daemon_name" 2>&1 | tail -n 20)"

expected=$(python3 "$checker" expected-output)
output=$("${podman_run[@]}" --rm "${reader_args[@]}" 2>&1)
status=$?
if [[ $status != 0 || $output != "$expected" ]]; then
    echo "---- the daemon's container log ----" >&2
    podman logs "$daemon_name" 2>&1 | tail -n 20 >&2
    die "the reader pod's container exited $status and printed '$output', expected '$expected'"
fi
echo "PASS the reader pod's container read '$expected' from the DaemonSet's memseald"
echo "container image and kubernetes example: 2 passed, 0 failed"
