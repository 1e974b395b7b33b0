"""`recsys ui`: the MLflow UI over the tracking store `recsys train` logs to, and its URL.

The store is resolved as training resolves it (``--tracking-uri``, else $MLFLOW_TRACKING_URI,
else ``sqlite:///mlflow.db`` in the working directory). A tracking *server* (http/https URI)
already serves its own UI: the command then only prints its address (once it answers).

The URI is checked before MLflow starts, so a store the UI could not open is one line and exit 2
rather than MLflow's traceback: the scheme must be a database MLflow opens (sqlite, postgresql,
mysql, mssql) or a tracking server; a SQLite file must be a database, or creatable (MLflow makes
its missing folders); a server must answer.
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
import urllib.parse
import urllib.request
from pathlib import Path

from recsys.commands.common import ui_page
from recsys.errors import RecsysError
from recsys.tracking.setup import resolve_tracking_uri

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


# Backend stores `mlflow ui --backend-store-uri` opens (SQLAlchemy databases, optionally with a
# driver: postgresql+psycopg2://); http(s) servers serve their own UI; MLflow 3 refuses files.
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
DEFAULT_DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
_SQLITE_MAGIC = b"SQLite format 3\x00"


def check_store(uri: str, timeout: float = 5.0) -> None:
    """Refuse, in one line, a tracking URI the MLflow UI could not open, before MLflow starts
    (whose own refusal is a traceback): an unsupported scheme, a SQLite file whose folder cannot
    be created or that is not a database, a server that does not answer."""
    scheme = uri.split(":", 1)[0].lower()
    if scheme in ("http", "https"):
        _check_http(uri, timeout)
        return
    base = scheme.split("+", 1)[0]
    if base not in DATABASE_SCHEMES:
        raise RecsysError(f"tracking URI '{uri}': the MLflow UI cannot open a '{scheme}' store; "
                          "use sqlite:///PATH.db, a database URI (postgresql://, mysql://, "
                          "mssql://) or the http(s):// address of a tracking server")
    if base == "sqlite":
        _check_sqlite(uri)
    else:
        _check_database_host(uri, base, timeout)


def _check_http(uri: str, timeout: float) -> None:
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return  # it answered (an auth proxy may refuse /health): the server is there
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RecsysError(f"cannot reach the MLflow tracking server at {uri} ({reason}); start "
                          "it or set --tracking-uri / MLFLOW_TRACKING_URI") from None


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite URI (None: in memory)."""
    rest = uri.split(":", 1)[1].split("?", 1)[0]
    if not rest.startswith("///"):  # sqlite:// (no path) is an in-memory database
        return None
    path = rest[3:]
    return None if path in ("", ":memory:") else Path(path)


def _check_sqlite(uri: str) -> None:
    path = _sqlite_path(uri)
    if path is None:
        raise RecsysError(f"tracking URI '{uri}' is an in-memory database, which holds no runs; "
                          "use sqlite:///PATH.db")
    if path.is_dir():
        raise RecsysError(f"tracking URI '{uri}': {path} is a directory; give the database "
                          "file, e.g. sqlite:///mlflow.db")
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
        if head and head != _SQLITE_MAGIC:
            raise RecsysError(f"tracking URI '{uri}': {path} is not a SQLite database; give "
                              "the tracking database (e.g. sqlite:///mlflow.db)")
        return
    # MLflow creates the file and its missing folders: the nearest existing one must be a
    # folder we may write in.
    folder = path.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise RecsysError(f"tracking URI '{uri}': {folder} is a file, so the database's folder "
                          "cannot be created; choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RecsysError(f"tracking URI '{uri}': cannot create {path} (no write permission "
                          f"in {folder}); choose another path")


def _check_database_host(uri: str, base: str, timeout: float) -> None:
    parts = urllib.parse.urlsplit(uri)
    try:
        host, port = parts.hostname, parts.port or DEFAULT_DB_PORTS[base]
    except ValueError:
        raise RecsysError(f"tracking URI '{uri}': not a valid database URI") from None
    if not host:
        return  # a local socket or a driver-specific form: left to the driver
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise RecsysError(f"tracking URI '{uri}': cannot reach the database at {host}:{port} "
                          f"({exc.strerror or type(exc).__name__}); start it or set "
                          "--tracking-uri") from None


def run(args: argparse.Namespace) -> int:
    uri = resolve_tracking_uri(args.tracking_uri)
    if not 0 < args.port < 65536 and not uri.startswith(("http://", "https://")):
        raise RecsysError(f"--port {args.port}: use a port between 1 and 65535")
    check_store(uri)
    if uri.startswith(("http://", "https://")):
        print(f"{uri} is a tracking server; it serves the MLflow UI itself: open "
              f"{ui_page(uri)}")
        return 0
    if not _port_free(args.host, args.port):
        raise RecsysError(f"port {args.port} on {args.host} is in use; pick another with --port")
    sqlite_file = _sqlite_path(uri) if uri.lower().startswith("sqlite") else None
    if sqlite_file is not None and not sqlite_file.exists():
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
        print(f"MLflow UI: {ui_page(url)}  (backend {uri}; Ctrl-C to stop)", flush=True)
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
