"""`recsys ui` without starting anything: the store it picks and its one-line refusals (the real
UI is started in test_mlflow_server.py)."""

from __future__ import annotations

import socket

from recsys.cli import main
from recsys.commands.ui import ui_command


def test_a_tracking_server_already_serves_its_ui(capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert main(["ui"]) == 0
    assert "open http://127.0.0.1:5999" in capsys.readouterr().out


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
