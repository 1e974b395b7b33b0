"""`recsys ui` without starting anything: the store it picks and its one-line refusals (the real
UI is started in test_mlflow_server.py)."""

from __future__ import annotations

import http.server
import socket
import sqlite3
import threading

import pytest

from recsys.cli import main
from recsys.commands.ui import check_store, ui_command
from recsys.errors import RecsysError

from .services import free_port


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def answering_server():
    """An http address that answers /health (the stand-in for a tracking server)."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_tracking_server_already_serves_its_ui(capsys, monkeypatch, answering_server):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", answering_server)
    assert main(["ui"]) == 0
    out = capsys.readouterr().out
    # The address opens the experiments in the model-training view, not MLflow 3's GenAI view.
    assert f"open {answering_server}/#/experiments?workflowType=machine_learning" in out


def test_a_tracking_server_that_does_not_answer_is_one_line(capsys):
    dead = f"http://127.0.0.1:{free_port()}"
    assert main(["ui", "--tracking-uri", dead]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot reach the MLflow tracking "
                                               f"server at {dead}")


def test_store_checks_accept_what_mlflow_opens(tmp_path):
    db = tmp_path / "runs.db"
    sqlite3.connect(db).close()  # an existing (empty) SQLite database
    check_store(f"sqlite:///{db}")
    db.write_bytes(b"")  # an empty file is a fine new database
    check_store(f"sqlite:///{db}")
    check_store(f"sqlite:///{tmp_path / 'new' / 'deeper' / 'm.db'}")  # MLflow makes the folders
    assert not (tmp_path / "new").exists()  # the check itself creates nothing


@pytest.mark.parametrize("uri, message", [
    ("databricks", "cannot open a 'databricks' store"),
    ("postgresql+psycopg2://u:p@127.0.0.1:{port}/db", "cannot reach the database at 127.0.0.1"),
    ("sqlite:///{tmp}", "is a directory; give the database file"),
    ("sqlite:///:memory:", "in-memory database"),
])
def test_store_checks_refuse_in_one_line(tmp_path, uri, message):
    with pytest.raises(RecsysError, match=message) as caught:
        check_store(uri.format(port=free_port(), tmp=tmp_path))
    assert "\n" not in str(caught.value)


def test_busy_port_and_file_store_are_one_line_errors(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["ui", "--port", str(port), "--tracking-uri", "sqlite:///m.db"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: port {port} on 127.0.0.1 is in use; pick another with --port"]
    assert main(["ui", "--tracking-uri", "./mlruns"]) == 2
    assert "file store" in capsys.readouterr().err
    assert not (tmp_path / "m.db").exists()


def test_the_ui_runs_mlflow_on_the_same_store():
    cmd = ui_command("sqlite:///mlflow.db", "127.0.0.1", 5000)
    assert cmd[1:] == ["-m", "mlflow", "ui", "--backend-store-uri", "sqlite:///mlflow.db",
                       "--host", "127.0.0.1", "--port", "5000"]
