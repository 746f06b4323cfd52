"""A multi-node Ray cluster on one machine: a head and further nodes started with `ray start` on loopback, each
with its own ports, temp dir and share of the CPUs, and the app deployed across them. The scale-out tests and
`ragyard bench scale` use it; docs/operations.md shows the same start by hand.

Each node is one `ray start --block` process, whose process tree is the node (GCS and dashboard agent on the
head, raylet and its workers everywhere): `kill_node` kills that tree with SIGKILL, as a machine that dies would
vanish, and `stop` ends every tree this cluster started. `ray stop` is never used: it would stop every Ray on
the machine, not just these nodes.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from services.config import AppConfig
from services.serve.local import free_port

logger = logging.getLogger(__name__)

# Environment every node (and so every replica) runs with.
NODE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Two nodes share two cores: one torch thread per replica, or they trample each other.
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    # Every node is this machine: the head's HTTP proxy should spread requests over the gateway replicas of
    # both nodes, not keep them on its own (Serve's default for a real multi-machine cluster).
    "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0",
    # The GCS declares a node dead after 3 missed health checks 1 s apart (Ray's defaults take tens of seconds),
    # so the calls that wait on a dead node's replicas fail over within a few seconds.
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


@dataclass
class Node:
    name: str
    proc: subprocess.Popen[bytes]
    temp_dir: Path
    metrics_port: int
    log: Path

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


class LocalCluster:
    """``head_cpus`` / ``node_cpus``: the logical CPUs each node offers Ray (scheduling, not threads)."""

    def __init__(self, root: Path, *, head_cpus: float = 2, worker_port_base: int = 0) -> None:
        self.root = Path(root).resolve()
        self.head_cpus = head_cpus
        self.nodes: dict[str, Node] = {}
        self.gcs_port = 0
        self._port_base = worker_port_base
        # Ray authenticates its own RPCs with a token, read from the environment when Ray is imported: this
        # process's token when it has one (the test suite sets one), else a new one, set before Ray loads. (A
        # token file some other Ray left in ~/.ray would otherwise be picked up by some processes and not others.)
        token = os.environ.get("RAY_AUTH_TOKEN")
        if token is None:
            if "ray" in sys.modules:
                raise RuntimeError(
                    "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN before Ray is imported, or start the cluster first"
                )
            token = secrets.token_hex(32)
            os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
        self.token = token

    def env(self) -> dict[str, str]:
        """What a process needs in its environment to join or call this cluster (`deploy` takes it)."""
        return {**NODE_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def _ray(self) -> str:
        found = Path(sys.executable).with_name("ray")
        return str(found) if found.exists() else (shutil.which("ray") or "ray")

    def _start(self, name: str, args: list[str], num_cpus: float) -> Node:
        temp = self.root / name
        # Ray puts Unix sockets at <temp>/session_<date>_<time>_<pid>/sockets/plasma_store (60 bytes more), and
        # a socket path may have 107.
        if len(str(temp)) > 47:
            raise ValueError(f"ray temp dir {temp} is too long for Ray's socket paths: keep it within 47 characters")
        temp.mkdir(parents=True, exist_ok=True)
        metrics = free_port()
        ports = {
            "--node-manager-port": free_port(),
            "--object-manager-port": free_port(),
            "--metrics-export-port": metrics,
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--runtime-env-agent-port": free_port(),
        }
        base = 20000 + 2000 * len(self.nodes) + self._port_base
        cmd = [
            self._ray(),
            "start",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={num_cpus:g}",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
            f"--min-worker-port={base}",
            f"--max-worker-port={base + 1999}",
            f'--resources={{"node:{name}": 1}}',
            *(f"{flag}={port}" for flag, port in ports.items()),
            *args,
        ]
        log = temp / "ray-start.log"
        env = {**os.environ, **self.env()}
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        node = Node(name, proc, temp, metrics, log)
        self.nodes[name] = node
        return node

    def start_head(self, *, object_store_mb: int = 256) -> LocalCluster:
        self.gcs_port = free_port()
        self._start(
            "head",
            [
                "--head",
                f"--port={self.gcs_port}",
                "--include-dashboard=false",
                f"--ray-client-server-port={free_port()}",
                f"--object-store-memory={object_store_mb * 1024 * 1024}",
            ],
            self.head_cpus,
        )
        self.wait_nodes(1)
        return self

    def add_node(self, name: str, num_cpus: float, *, object_store_mb: int = 128) -> Node:
        node = self._start(
            name, [f"--address={self.address}", f"--object-store-memory={object_store_mb * 1024 * 1024}"], num_cpus
        )
        self.wait_nodes(len(self.nodes))
        return node

    def alive_nodes(self) -> int:
        """Nodes the GCS counts alive (asked with the `ray` CLI's Python API in a subprocess, so the
        caller needs no Ray connection of its own)."""
        code = (
            "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR');"
            "print(sum(1 for n in ray.nodes() if n['Alive']))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, self.address],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **self.env()},
        )
        try:
            return int(out.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            return 0

    def wait_nodes(self, n: int, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for node in self.nodes.values():
                if not node.alive:
                    raise RuntimeError(f"ray node {node.name} exited: {node.log.read_text()[-2000:]}")
            if self.alive_nodes() >= n:
                return
            time.sleep(1.0)
        raise TimeoutError(f"the cluster did not reach {n} nodes in {timeout_s:g} s")

    def kill_node(self, name: str) -> int:
        """SIGKILL a node's whole process tree at once (its raylet, its workers, the replicas on it); how many
        processes that was."""
        node = self.nodes[name]
        procs = node.tree()
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)
        return len(procs)

    def stop(self) -> None:
        """End every node (the workers first, the head last), SIGTERM then SIGKILL."""
        for name in [n for n in self.nodes if n != "head"] + (["head"] if "head" in self.nodes else []):
            procs = self.nodes[name].tree()
            for p in procs:
                try:
                    p.terminate()
                except psutil.NoSuchProcess:
                    pass
            _, left = psutil.wait_procs(procs, timeout=3)  # a test cluster: nothing of it needs a graceful end
            for p in left:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
        self.nodes.clear()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def deploy(config: AppConfig, cluster: LocalCluster, *, wait_ready_s: float = 600.0) -> str:
    """Connect to ``cluster`` and run the app on it; its URL once /readyz answers. The HTTP proxy runs on the head
    only: every node of this cluster is this machine, and proxies on each would fight over one port. This
    process's environment takes the cluster's token (a driver needs it to connect)."""
    import ray
    from ray import serve

    from services.serve.app import build_app
    from services.serve.local import APP_NAME, wait_ready

    os.environ.update(cluster.env())
    if not ray.is_initialized():
        ray.init(address=cluster.address, logging_level=logging.WARNING, runtime_env={"env_vars": dict(NODE_ENV)})
    host, port = config.server.host, config.server.port
    serve.start(http_options={"host": host, "port": port}, proxy_location="HeadOnly", detached=False)
    serve.run(build_app(config.model_dump(mode="json")), name=APP_NAME, route_prefix="/", blocking=False)
    url = f"http://{host}:{port}"
    wait_ready(url, wait_ready_s)
    return url
