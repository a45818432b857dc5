"""The CLI's one way of asking the worker: each command gets the worker's JSON answer or
an exit code (1: the request was refused as wrong; 2: no answer) with the reason on stderr."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import ClassVar

import orjson
import pytest
from pydantic import SecretStr

from streams import cli
from streams.settings import Settings


class _Worker(http.server.BaseHTTPRequestHandler):
    """Answers /status/<code> with that code, /busy-once/<key> 503 the first time, echoes
    the request otherwise."""

    seen: ClassVar[set[str]] = set()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.startswith("/status/"):
            code = int(self.path.split("/")[2])
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b'{"error": "refused for a test"}')
            return
        if self.path.startswith("/busy-once/"):
            # 503 on the first request of a key, the echo after.
            key = self.path.split("/")[2]
            if key not in _Worker.seen:
                _Worker.seen.add(key)
                self.send_response(503)
                self.end_headers()
                self.wfile.write(b'{"error": "temporarily unavailable, retry"}')
                return
        if self.path == "/garbled":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>not json")
            return
        self.send_response(200)
        self.end_headers()
        self.wfile.write(orjson.dumps({"method": self.command, "path": self.path, "body": body.decode(),
                                       "auth": self.headers.get("Authorization")}))

    do_GET = _answer
    do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def worker() -> Iterator[Settings]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Worker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Settings.from_env().model_copy(update={"web_port": server.server_address[1],
                                                 "admin_token": SecretStr("t0ken")})
    server.shutdown()


def test_an_answer_is_the_parsed_json_and_a_post_carries_its_body(worker: Settings) -> None:
    got = cli.admin_call(worker, "/v1/admin/held?limit=3")
    assert got == {"method": "GET", "path": "/v1/admin/held?limit=3", "body": "", "auth": "Bearer t0ken"}
    got = cli.admin_call(worker, "/v1/admin/rebuild", b'{"offset": 0}')
    assert isinstance(got, dict) and got["method"] == "POST" and got["body"] == '{"offset": 0}'


@pytest.mark.parametrize(("code", "exit_code"), [(400, 1), (404, 1), (409, 1), (422, 1), (401, 2), (403, 2),
                                                 (500, 2), (503, 2)])
def test_refusals_exit_1_and_worker_errors_exit_2(worker: Settings, code: int, exit_code: int,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "RETRY_503_S", 0.01)  # a 503 is asked 6 times before it is an error
    assert cli.admin_call(worker, f"/status/{code}") == exit_code
    assert f"error: worker answered {code}: " in capsys.readouterr().err


def test_a_503_is_asked_again_and_its_answer_taken(worker: Settings) -> None:
    got = cli.admin_call(worker, "/busy-once/repair", b"{}")
    assert isinstance(got, dict) and got["path"] == "/busy-once/repair"


def test_no_worker_and_an_answer_that_is_not_json_exit_2(worker: Settings,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.admin_call(worker, "/garbled") == 2
    assert "no usable answer" in capsys.readouterr().err
    assert cli.admin_call(worker.model_copy(update={"web_port": 1}), "/v1/admin/reconcile") == 2
    assert "error: no worker at http://127.0.0.1:1" in capsys.readouterr().err


def test_a_command_passes_the_exit_code_on(worker: Settings, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LOYALTY_WEB_PORT", "1")
    assert cli.main(["settlement", "statement", "--date", "2026-11-28", "--bu", "mall"]) == 2
    assert cli.main(["reconcile"]) == 2
    assert "no worker at" in capsys.readouterr().err
