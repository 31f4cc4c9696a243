"""The pipeline's side of `attach`, on a real Redis: its events in a bounded stream, its presence, and requests
from attached consoles answered by the owner, refused when nobody owns the pipeline, withdrawn when nobody takes
them. The whole path with a running pipeline and the Textual app is in tests/console/test_attach.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.ops.control import Control, ControlError
from core.ops.events import EventLog
from core.ops.eventstream import KEEP, EventPublisher, EventReader, stream_key
from core.ops.owner import OwnerChannel, Presence, owner_key, read_presence, requests_key
from core.ops.remote import RemoteControl
from core.ops.snapshot import GrpcInfo, WatcherInfo

from conftest import wait_for


def test_events_reach_the_stream_in_order_bounded_and_read_incrementally(connection, namespace):
    log = EventLog()
    log.emit("info", "before the publisher")  # a start's first lines are published too
    publisher = EventPublisher(connection, namespace, log).start()
    reader = EventReader(connection, namespace)
    log.emit("warning", "first", file="1.json")
    wait_for(lambda: connection.xlen(stream_key(namespace)) == 2, message="two lines in the stream")
    reader.pull()
    first = reader.recent()
    assert [(e.level, e.text) for e in first] == [("info", "before the publisher"), ("warning", "first")]
    assert first[1].data == {"file": "1.json"}
    log.emit("info", "second")
    wait_for(lambda: reader.pull(), message="the next line")
    assert reader.recent()[:2] == first and reader.recent()[2].text == "second"
    assert all(a is b for a, b in zip(reader.recent(), first))  # the event panel finds its last line by identity
    for n in range(KEEP + 1000):
        log.emit("info", f"line {n}")
    publisher.stop()
    assert connection.xlen(stream_key(namespace)) <= KEEP + 200  # trimmed (MAXLEN ~ trims by whole nodes)
    while reader.pull():
        pass
    texts = [e.text for e in reader.recent(KEEP)]
    assert texts == [f"line {n}" for n in range(KEEP + 1000)][-KEEP:]  # in order, bounded, none skipped


def test_a_console_attaching_late_starts_from_the_newest_lines(connection, namespace):
    log = EventLog()
    publisher = EventPublisher(connection, namespace, log).start()
    for n in range(700):
        log.emit("info", f"line {n}")
    publisher.stop()
    reader = EventReader(connection, namespace)
    reader.pull()
    texts = [e.text for e in reader.recent(1000)]
    assert texts[-1] == "line 699" and len(texts) == 500
    local = reader.emit("error", "status poll failed")  # this console's own notes stay local
    assert reader.recent(1)[0] is local and connection.xlen(stream_key(namespace)) == 700


def test_presence_round_trips_through_redis(connection, namespace):
    presence = Presence(grpc=GrpcInfo("127.0.0.1:5", True, 1, 2),
                        watcher=WatcherInfo("/drop", True, False, 1, waiting_names=("a.json",)), desired=3,
                        processes=({"name": "w1", "pid": 9, "alive": True, "frozen": False},), embedded=True)
    channel = OwnerChannel(connection, namespace, describe=lambda: presence, control=lambda: None,
                           emit=lambda *_: None)
    channel.publish()
    read = read_presence(connection, namespace)
    assert read.grpc == presence.grpc and read.watcher == presence.watcher and read.processes == presence.processes
    assert read.desired == 3 and read.embedded and read.instance == channel.instance and read.pid > 0
    assert 0 < connection.ttl(owner_key(namespace)) <= 5
    channel.stop()  # never started: it still takes its presence away
    assert read_presence(connection, namespace) is None


def _remote(connection, namespace, tmp_path: Path, timeout: float = 5.0) -> RemoteControl:
    direct = Control(emit=lambda *_: None, data_dir=tmp_path, watch=tmp_path)
    return RemoteControl(connection, namespace, direct, "test console", timeout=timeout)


def test_a_request_with_no_pipeline_says_nobody_can_carry_it_out(connection, namespace, tmp_path):
    started = time.monotonic()
    with pytest.raises(ControlError, match=f"cannot add a worker: no pipeline runs namespace '{namespace}'"):
        _remote(connection, namespace, tmp_path).add_worker()
    assert time.monotonic() - started < 1 and connection.llen(requests_key(namespace)) == 0


def test_a_request_nobody_takes_is_withdrawn_and_said(connection, namespace, tmp_path):
    # An owner that spoke and then hung: its presence is there, nothing serves its requests.
    hung = OwnerChannel(connection, namespace, describe=Presence, control=lambda: None, emit=lambda *_: None)
    hung.publish()
    with pytest.raises(ControlError, match="did not take the request in 0.5 s; nothing was done"):
        _remote(connection, namespace, tmp_path, timeout=0.5).toggle_watcher()
    assert connection.llen(requests_key(namespace)) == 0  # withdrawn: it cannot run later by surprise


def test_the_owner_answers_each_request_with_its_own_words(connection, namespace, tmp_path):
    lines = []
    # The owner's Control over no parts: its commands fail with their one line, which reaches the console.
    control = Control(emit=lambda *a: lines.append(a), data_dir=tmp_path, watch=tmp_path)
    owner = OwnerChannel(connection, namespace, describe=Presence, control=lambda: control,
                         emit=lambda *a: lines.append(a)).start()
    try:
        wait_for(lambda: read_presence(connection, namespace), message="the owner's presence")
        remote = _remote(connection, namespace, tmp_path)
        with pytest.raises(ControlError, match="^no watcher is running$"):
            remote.toggle_watcher()
        with pytest.raises(ControlError, match="^the runtime is not started$"):
            remote.scale(4)
        with pytest.raises(ControlError, match="does not know the command 'shutdown'"):
            remote.ask("shutdown")
        assert ("info", "test console asks to scale the workers 4") in lines
    finally:
        owner.stop()
    assert read_presence(connection, namespace) is None
    assert not list(connection.scan_iter(match=f"{namespace}:control*"))  # replies expire; the wake key is gone
