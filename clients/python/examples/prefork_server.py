#!/usr/bin/env python3
"""A pre-fork HTTP server whose workers share one safetensors model.

    prefork_server.py --model NAME [--publish FILE] [--workers 4] [--port 8000]

The parent binds the port, optionally publishes FILE as the asset NAME, and
forks the workers. Each worker maps the model from memseald on its own
(``memseal.safetensors.load``): the weights are read-only views of one
sealed memfd, so four workers hold one copy of the model between them and
none of them can change it. The model is a linear classifier: tensors
``weight`` (inputs x classes) and ``bias`` (classes).

    POST /predict   {"x": [..one number per input..]}  ->  {"scores": [..], "label": N, "worker": PID}
    GET  /health    ->  {"worker": PID, "tensors": {...shapes...}}

Standard library and numpy only; stop it with Ctrl-C (or SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Dict, List

import numpy as np

import memseal
import memseal.safetensors

# Set in each worker after the fork: the model's tensors, views of the sealed mapping.
MODEL: Dict[str, Any] = {}


def predict(x: List[float]) -> Dict[str, Any]:
    scores = np.asarray(x, dtype=np.float32) @ MODEL["weight"] + MODEL["bias"]
    return {"scores": scores.tolist(), "label": int(scores.argmax()), "worker": os.getpid()}


class Handler(BaseHTTPRequestHandler):
    def _reply(self, status: int, body: Dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path != "/health":
            return self._reply(404, {"error": "try POST /predict or GET /health"})
        shapes = {name: list(t.shape) for name, t in MODEL.items()}
        self._reply(200, {"worker": os.getpid(), "tensors": shapes})

    def do_POST(self) -> None:
        if self.path != "/predict":
            return self._reply(404, {"error": "try POST /predict"})
        try:
            request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            self._reply(200, predict(request["x"]))
        except (ValueError, KeyError, TypeError) as e:
            self._reply(400, {"error": "expected {\"x\": [numbers]}: %s" % e})

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: one line per request would drown the start-up report


def serve(server: HTTPServer, name: str) -> None:
    """One worker: map the model, warm it up, and serve until told to stop."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    MODEL.update(memseal.safetensors.load(name))
    predict([0.0] * MODEL["weight"].shape[0])  # touches every weight once
    # One write per line: workers share the pipe, and print() writes the
    # text and its newline separately, which lets two workers' lines mix.
    line = "worker %d ready: %s\n" % (os.getpid(), {k: v.shape for k, v in MODEL.items()})
    os.write(sys.stdout.fileno(), line.encode())
    server.serve_forever()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the asset holding the safetensors model")
    parser.add_argument("--publish", metavar="FILE", help="publish this safetensors file as --model first")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()

    if args.publish:
        with memseal.Client() as client:
            info = client.publish_file(args.model, args.publish)
            print("published %s version %d (%d bytes)" % (info.name, info.version, info.size), flush=True)
    server = HTTPServer((args.host, args.port), Handler)
    print("listening on http://%s:%d with %d workers" % (args.host, server.server_port, args.workers), flush=True)
    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:  # the worker: nothing of the model was inherited, it maps its own
            status = 0
            try:
                serve(server, args.model)
            except SystemExit:
                pass
            except BaseException:
                traceback.print_exc()
                status = 1
            os._exit(status)
        children.append(pid)
    server.socket.close()

    def stop(*_: object) -> None:
        for pid in children:
            os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    try:
        for pid in children:
            os.waitpid(pid, 0)
    except KeyboardInterrupt:
        stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
