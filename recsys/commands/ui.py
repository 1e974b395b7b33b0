"""`recsys ui`: the MLflow UI over the tracking store `recsys train` logs to, and its URL.

The store is resolved as training resolves it (``--tracking-uri``, else $MLFLOW_TRACKING_URI,
else ``sqlite:///mlflow.db`` in the working directory). A tracking *server* (http/https URI)
already serves its own UI: the command then only prints its address.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from recsys.errors import RecsysError
from recsys.tracking.options import resolve_tracking_uri

STARTUP_SECONDS = 120


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("ui", help="start the MLflow UI on the tracking store",
                              description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="backend store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.set_defaults(func=run)


def ui_command(uri: str, host: str, port: int) -> list[str]:
    # MLflow's own CLI, run by the same interpreter so it is the mlflow recsys uses.
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
            "--host", host, "--port", str(port)]


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _wait_healthy(url: str, proc: subprocess.Popen, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    return False


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stderr_fd() -> int | None:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stream without a descriptor
        return None


def run(args: argparse.Namespace) -> int:
    uri = resolve_tracking_uri(args.tracking_uri)
    if uri.startswith(("http://", "https://")):
        print(f"{uri} is a tracking server; it serves the MLflow UI itself: open {uri}")
        return 0
    if not 0 < args.port < 65536:
        raise RecsysError(f"--port {args.port}: use a port between 1 and 65535")
    if not _port_free(args.host, args.port):
        raise RecsysError(f"port {args.port} on {args.host} is in use; pick another with --port")
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        print(f"note: {uri} does not exist yet (nothing tracked here so far); it will be "
              "created", file=sys.stderr)
    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{shown_host}:{args.port}"
    print(f"starting the MLflow UI on {uri} ...", file=sys.stderr, flush=True)
    env = dict(os.environ)
    # `mlflow ui` launches uvicorn by name: the interpreter's bin folder must be on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # The UI needs no background job runner (MLflow's GenAI jobs: several worker processes).
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    # MLflow's own chatter goes to stderr: stdout carries only the URL line (scriptable).
    proc = subprocess.Popen(ui_command(uri, args.host, args.port), env=env,
                            stdout=_stderr_fd(), stderr=_stderr_fd())
    # A SIGTERM (service managers, `kill`) stops the UI the way Ctrl-C does.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if not _wait_healthy(url, proc, STARTUP_SECONDS):
            code = proc.poll()
            raise RecsysError(f"the MLflow UI did not start on {url}"
                              + (f" (mlflow exited with {code})" if code is not None else "")
                              + "; see the messages above")
        print(f"MLflow UI: {url}  (backend {uri}; Ctrl-C to stop)", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
