"""The embedded Redis: private socket, password, persistence, and its edge cases."""

from __future__ import annotations

import redis

from core.storage.broker import Broker, redact


def test_a_long_data_folder_gets_a_short_private_socket_that_is_removed(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    broker = Broker(None, deep)
    client = broker.start()
    try:
        assert client.ping()
        socket_dir = broker._socket_dir
        assert socket_dir is not None and (socket_dir.stat().st_mode & 0o777) == 0o700
    finally:
        broker.stop()
    assert not socket_dir.exists()


def test_the_embedded_redis_needs_its_password_and_keeps_data_across_restarts(tmp_path):
    broker = Broker(None, tmp_path)
    client = broker.start()
    try:
        client.set("kept", "yes")
        socket = broker.url.split("?")[0].removeprefix("unix://")
        try:
            redis.Redis(unix_socket_path=socket).get("kept")
            raise AssertionError("a client without the password must be refused")
        except redis.AuthenticationError:
            pass
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        assert client.config_get("appendonly")["appendonly"] == "yes"
    finally:
        broker.stop()
    again = Broker(None, tmp_path)
    try:
        assert again.start().get("kept") == b"yes"
    finally:
        again.stop()


def test_passwords_never_show_in_a_redacted_url():
    assert redact("redis://:hunter2@host:6379/0") == "redis://:***@host:6379/0"
    assert redact("redis://user:hunter2@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact("unix:///tmp/r.sock?password=hunter2&db=0") == "unix:///tmp/r.sock?password=***&db=0"
    assert redact("redis://secret@host:6379/0") == "redis://***@host:6379/0"
    assert redact("redis://host:6379/0") == "redis://host:6379/0"
