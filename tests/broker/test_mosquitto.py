"""Mosquitto configuration: committed files current, and accepted by the real mosquitto."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from brokers import free_port, require_binary, wait_for_port

from broker.mosquitto import generate, render_conf, render_test_conf, stale
from broker.passwords import hash_password

REPO = Path(__file__).resolve().parents[2]


def test_committed_files_are_current() -> None:
    stale_files = stale(REPO)
    assert not stale_files, f"stale: {stale_files}; run `mapleverse topics generate`"
    assert set(generate(REPO)) == {
        Path("mosquitto/mosquitto.conf"),
        Path("mosquitto/passwd"),
        Path("mosquitto/acl"),
    }


def test_deployment_config() -> None:
    conf = render_conf().splitlines()
    for line in [
        "listener 1883",
        "listener 9001",
        "protocol websockets",
        "set_tcp_nodelay true",
        "use_username_as_clientid true",
        "allow_anonymous false",
        "password_file /mosquitto/config/passwd",
        "acl_file /mosquitto/config/acl",
        "max_packet_size 65536",
        "persistence true",
        "persistence_location /mosquitto/data/",
    ]:
        assert line in conf, line
    assert conf.count("use_username_as_clientid true") == 2  # a listener option


def test_test_config_has_no_websockets(tmp_path: Path) -> None:
    conf = render_test_conf(18999, tmp_path, tmp_path / "p", tmp_path / "a")
    assert "listener 18999 127.0.0.1" in conf
    assert "websockets" not in conf and "listener 9001" not in conf
    assert f"persistence_location {tmp_path}/" in conf


class _Mosquitto:
    def __init__(self, tmp_path: Path, passwd: Path, acl: Path) -> None:
        binary = require_binary("mosquitto")
        self.port = free_port()
        (tmp_path / "data").mkdir()
        conf = tmp_path / "m.conf"
        conf.write_text(render_test_conf(self.port, tmp_path / "data", passwd, acl))
        self.log = (tmp_path / "m.log").open("wb")
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stderr=self.log, stdout=self.log)

    def __enter__(self) -> _Mosquitto:
        import time

        wait_for_port(
            "127.0.0.1", self.port, time.monotonic() + 10, lambda: self.proc.poll() is None
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()

    def pub(self, user: str, password: str, topic: str) -> subprocess.CompletedProcess[bytes]:
        tool = require_binary("mosquitto_pub")
        return subprocess.run(
            [tool, "-p", str(self.port), "-u", user, "-P", password, "-t", topic, "-m", "x",
             "-q", "1"],
            capture_output=True, timeout=20,
        )  # fmt: skip


@pytest.mark.mosquitto
def test_mosquitto_accepts_our_hash(tmp_path: Path) -> None:
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    passwd.write_text(f"carol:{hash_password('p4ss')}\n")
    acl.write_text("user carol\ntopic write x/#\n")
    with _Mosquitto(tmp_path, passwd, acl) as m:
        assert m.pub("carol", "p4ss", "x/y").returncode == 0
        refused = m.pub("carol", "wrong", "x/y")
        assert refused.returncode != 0
        assert b"not authorised" in refused.stderr.lower()


@pytest.mark.mosquitto
def test_committed_deployment_files_work_on_mosquitto(tmp_path: Path) -> None:
    """The committed passwd and acl load, and the documented dev passwords log in."""
    with _Mosquitto(tmp_path, REPO / "mosquitto/passwd", REPO / "mosquitto/acl") as m:
        assert m.pub("health-main", "health-main-dev", "mv/sys/health").returncode == 0
        assert m.pub("operator", "operator-dev", "mv/sys/component/health/main/cmd").returncode == 0
        assert m.pub("demo-agent", "nope", "mv/agent/demo-agent/act").returncode != 0
