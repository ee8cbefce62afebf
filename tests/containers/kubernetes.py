#!/usr/bin/env python3
"""Check the Kubernetes example in deploy/kubernetes/, and run it without a cluster.

    kubernetes.py check
        Parse every manifest with PyYAML and check the fields the deployment
        depends on: the DaemonSet runs memseald on the node's /run/memseal
        with its configuration, without capabilities, under a memory limit
        above its budget; the reader pod mounts that directory read-only and
        nothing else of the node, runs as an ordinary uid, and reads an asset
        the daemon is configured to publish. Prints one line per check.

    kubernetes.py podman-args daemon|reader NODE_DIR
        Print, one per line, the `podman run` arguments (image and command
        included) that run the DaemonSet's or the pod's container the way a
        kubelet would: the same image, command, user, volumes (hostPath under
        NODE_DIR, ConfigMap items written there) and restrictions.

    kubernetes.py expected-output
        Print what the reader pod should print: the content of the asset it
        reads, from the ConfigMap.
"""

import pathlib
import sys
import tomllib

import yaml

DEPLOY = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
SOCKET_DIR = "/run/memseal"


def load():
    """Every document of every manifest, by kind and name."""
    docs = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        with path.open() as f:
            for doc in yaml.safe_load_all(f):
                if doc:
                    docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def find(docs, kind, name=None):
    found = [doc for (k, n), doc in docs.items() if k == kind and name in (None, n)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def bytes_of(size):
    """A size as memseald reads it: bytes, or "2G" with K, M, G, T."""
    if isinstance(size, int):
        return size
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    return int(float(size[:-1]) * units[size[-1]]) if size[-1] in units else int(size)


def quantity(value):
    """A Kubernetes memory quantity ("3Gi", "256Mi") in bytes."""
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return int(value[: -len(suffix)]) * factor
    return int(value)


class Deployment:
    """The example's objects, and how they refer to each other."""

    def __init__(self):
        docs = load()
        self.daemonset = find(docs, "DaemonSet", "memseald")
        self.agentset = find(docs, "DaemonSet", "memseal-fleet")
        self.agent_spec = self.agentset["spec"]["template"]["spec"]
        (self.agent,) = self.agent_spec["containers"]
        self.pod = find(docs, "Pod")
        self.configmap = find(docs, "ConfigMap")
        self.daemon_spec = self.daemonset["spec"]["template"]["spec"]
        (self.daemon,) = self.daemon_spec["containers"]
        (self.reader,) = self.pod["spec"]["containers"]

    def volumes(self, spec):
        return {v["name"]: v for v in spec.get("volumes", [])}

    def mounts(self, spec, container):
        """(volume, mount) pairs of a container."""
        volumes = self.volumes(spec)
        return [(volumes[m["name"]], m) for m in container.get("volumeMounts", [])]

    def daemon_config(self):
        return tomllib.loads(self.configmap["data"]["memseald.toml"])


def check():
    d = Deployment()
    results = []

    def expect(description, condition):
        results.append((description, bool(condition)))

    ds = d.daemonset
    expect("the DaemonSet is apps/v1", ds["apiVersion"] == "apps/v1")
    expect(
        "the DaemonSet's selector matches its pods' labels",
        ds["spec"]["selector"]["matchLabels"].items()
        <= ds["spec"]["template"]["metadata"]["labels"].items(),
    )
    args = d.daemon["args"]
    socket = args[args.index("--socket") + 1]
    expect(f"memseald listens in {SOCKET_DIR}", socket == f"{SOCKET_DIR}/memseald.sock")
    daemon_mounts = {m["mountPath"]: v for v, m in d.mounts(d.daemon_spec, d.daemon)}
    host_dir = daemon_mounts.get(SOCKET_DIR, {}).get("hostPath", {})
    expect(f"the daemon's {SOCKET_DIR} is the node's {SOCKET_DIR}", host_dir.get("path") == SOCKET_DIR)
    config_path = args[args.index("--config") + 1]
    expect("the daemon's --config is mounted from the ConfigMap", "configMap" in daemon_mounts.get(config_path, {}))
    config = d.daemon_config()
    expect("memseald.toml parses and has a [policy]", "policy" in config)
    assets_dir = config.get("assets_dir")
    expect("the assets directory is mounted", "configMap" in daemon_mounts.get(assets_dir, {}))
    security = d.daemon.get("securityContext", {})
    expect(
        "the daemon has no capabilities and cannot gain privileges",
        security.get("capabilities", {}).get("drop") == ["ALL"]
        and security.get("allowPrivilegeEscalation") is False,
    )
    expect("the daemon runs as root inside (clients trust root)", security.get("runAsUser") == 0)
    limit = quantity(d.daemon["resources"]["limits"]["memory"])
    expect(
        "the daemon's memory limit is above max_total_bytes",
        limit > bytes_of(config["max_total_bytes"]),
    )
    expect(
        "the daemon shares no PID, IPC or network namespace with the node",
        not any(d.daemon_spec.get(k) for k in ("hostPID", "hostIPC", "hostNetwork")),
    )

    pod = d.pod["spec"]
    reader_mounts = d.mounts(pod, d.reader)
    expect("the reader mounts exactly one volume", len(reader_mounts) == 1)
    volume, mount = reader_mounts[0]
    expect(
        f"that volume is the node's {SOCKET_DIR}, read-only, at {SOCKET_DIR}",
        volume.get("hostPath", {}).get("path") == SOCKET_DIR
        and mount["mountPath"] == SOCKET_DIR
        and mount.get("readOnly") is True,
    )
    expect(
        "the reader shares no PID, IPC or network namespace with the node",
        not any(pod.get(k) for k in ("hostPID", "hostIPC", "hostNetwork")),
    )
    expect(
        "the reader runs as an ordinary uid",
        pod["securityContext"].get("runAsNonRoot") is True and pod["securityContext"].get("runAsUser", 0) != 0,
    )
    expect("the reader runs the image the DaemonSet runs", d.reader["image"] == d.daemon["image"])
    command = d.reader["command"]
    asset = tomllib.loads(d.configmap["data"]["greeting.asset"])
    expect(
        "the reader gets the asset the daemon publishes at start",
        command[:2] == ["memseal", "get"] and command[2] == asset["name"],
    )

    agent = d.agent
    expect("the fleet agent is a DaemonSet of its own (memseald's pod stays off the network)",
           d.agentset["metadata"]["namespace"] == ds["metadata"]["namespace"]
           and agent["command"] == ["memseal-fleet"])
    agent_args = agent["args"]
    expect(f"the agent talks to the daemon's socket in {SOCKET_DIR}",
           agent_args[agent_args.index("--socket") + 1] == socket)
    agent_mounts = d.mounts(d.agent_spec, agent)
    node_paths = {v["hostPath"]["path"]: m for v, m in agent_mounts if "hostPath" in v}
    expect(f"of the node the agent mounts only {SOCKET_DIR} and, read-only, its CA certificates",
           set(node_paths) == {SOCKET_DIR, "/etc/ssl/certs"}
           and node_paths["/etc/ssl/certs"].get("readOnly") is True)
    agent_uid = d.agent_spec["securityContext"].get("runAsUser")
    expect("the agent runs as an ordinary uid the daemon lists as a publisher",
           d.agent_spec["securityContext"].get("runAsNonRoot") is True
           and str(agent_uid) in config["policy"].get("publisher_users", []))
    agent_security = agent.get("securityContext", {})
    expect("the agent has no capabilities and cannot gain privileges",
           agent_security.get("capabilities", {}).get("drop") == ["ALL"]
           and agent_security.get("allowPrivilegeEscalation") is False)
    expect("the agent's credentials come from a Secret, not the manifest",
           any("secretRef" in source for source in agent.get("envFrom", []))
           and not any(e["name"].startswith("AWS_SECRET") for e in agent.get("env", [])))
    state_dir = agent_args[agent_args.index("--state-dir") + 1]
    expect("the agent's state directory is writable (an emptyDir)",
           any(m["mountPath"] == state_dir and "emptyDir" in v for v, m in agent_mounts))
    expect("the agent runs the image the daemon runs", agent["image"] == d.daemon["image"])

    for description, ok in results:
        print(f"{'PASS' if ok else 'FAIL'} {description}")
    failed = sum(1 for _, ok in results if not ok)
    print(f"kubernetes manifests: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


def podman_args(which, node_dir):
    """`podman run` arguments for one container of the example."""
    d = Deployment()
    spec, container = (d.daemon_spec, d.daemon) if which == "daemon" else (d.pod["spec"], d.reader)
    node = pathlib.Path(node_dir)
    args = ["--network=none"]
    security = {**spec.get("securityContext", {}), **container.get("securityContext", {})}
    if "runAsUser" in security:
        args.append(f"--user={security['runAsUser']}:{security.get('runAsGroup', security['runAsUser'])}")
    if security.get("capabilities", {}).get("drop") == ["ALL"]:
        args.append("--cap-drop=ALL")
    if security.get("allowPrivilegeEscalation") is False:
        args.append("--security-opt=no-new-privileges")
    if security.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    for env in container.get("env", []):
        args.append(f"--env={env['name']}={env['value']}")
    for volume, mount in d.mounts(spec, container):
        if "hostPath" in volume:
            source = node / volume["hostPath"]["path"].lstrip("/")
            source.mkdir(parents=True, exist_ok=True)
        else:
            # A ConfigMap volume: its items as files in a directory.
            source = node / "configmaps" / volume["name"]
            source.mkdir(parents=True, exist_ok=True)
            for item in volume["configMap"]["items"]:
                (source / item["path"]).write_text(d.configmap["data"][item["key"]])
            if "subPath" in mount:
                source = source / mount["subPath"]
        suffix = ":ro" if mount.get("readOnly") else ""
        args.append(f"--volume={source}:{mount['mountPath']}{suffix}")
    args.append(container["image"])
    if "command" in container:
        args = args[:-1] + [f"--entrypoint={container['command'][0]}", container["image"]]
        args += container["command"][1:]
    args += container.get("args", [])
    print("\n".join(args))
    return 0


def main(argv):
    if argv[1:] == ["check"]:
        return check()
    if len(argv) == 4 and argv[1] == "podman-args" and argv[2] in ("daemon", "reader"):
        return podman_args(argv[2], argv[3])
    if argv[1:] == ["expected-output"]:
        print(Deployment().configmap["data"]["greeting.txt"], end="")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
