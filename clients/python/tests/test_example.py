"""The pre-fork server example: its workers share one model and answer right."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import safetensors.numpy

from daemon import ROOT, Daemon
from procinfo import memory_pss_kib

EXAMPLE = ROOT / "clients" / "python" / "examples" / "prefork_server.py"


def post(port: int, body: Dict[str, Any]) -> Dict[str, Any]:
    request = urllib.request.Request(
        "http://127.0.0.1:%d/predict" % port, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        answer: Dict[str, Any] = json.loads(reply.read())
        return answer


def test_workers_share_the_model_and_predict_what_numpy_does(daemon: Daemon, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    model = {"weight": rng.standard_normal((4096, 1024), np.float32), "bias": rng.standard_normal(1024, np.float32)}
    path = tmp_path / "model.safetensors"
    safetensors.numpy.save_file(model, str(path))
    env = dict(os.environ, MEMSEAL_SOCKET=str(daemon.socket))
    server = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--model", "models/linear", "--publish", str(path), "--workers", "4",
         "--port", "0"],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert server.stdout is not None
        lines: List[str] = []
        while sum("ready" in line for line in lines) < 4:
            line = server.stdout.readline()
            assert line, "the server ended early: %s" % lines
            lines.append(line)
        port = int(re.search(r"http://127.0.0.1:(\d+)", "".join(lines)).group(1))  # type: ignore[union-attr]
        workers = [int(re.match(r"worker (\d+) ready", line).group(1)) for line in lines if "ready" in line]  # type: ignore[union-attr]

        for seed in range(8):
            x = np.random.default_rng(seed).standard_normal(4096).astype(np.float32)
            answer = post(port, {"x": x.tolist()})
            expected = x @ model["weight"] + model["bias"]
            assert answer["worker"] in workers
            assert answer["label"] == int(expected.argmax())
            assert np.allclose(answer["scores"], expected, rtol=1e-4, atol=1e-3)
        with urllib.request.urlopen("http://127.0.0.1:%d/health" % port, timeout=30) as reply:
            assert json.loads(reply.read())["tensors"] == {"weight": [4096, 1024], "bias": [1024]}

        # Four workers hold the 16 MiB of weights once between them.
        held = sum(memory_pss_kib(pid) for pid in workers) * 1024
        assert held <= 1.5 * path.stat().st_size + 4 * 8 * (1 << 20), held
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
