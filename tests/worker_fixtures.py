"""Fixtures for the worker's tests: a worker in a thread, a stand-in brain,
a broker that can restart on the same port, injectable telemetry, the model.

Test modules import the fixtures they use from here; ``broker_factory`` and
``zmq_context`` come from ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import zmq

from llmo.broker.service import Broker
from llmo.proto.client import Client
from llmo.proto.messages import Ack, Heartbeat, Message, TaskDone, TaskFailed, Telemetry
from llmo.worker.config import WorkerConfig
from llmo.worker.service import Worker
from tests.waiting import WAIT_S, wait_for, wait_until


class FakeBrain:
    """A client named ``brain`` that records everything it receives.

    Like the real brain it heartbeats the broker every second (``Client.tick``)
    while it waits for messages: the first heartbeat claims the name, and after
    a broker restart the next one claims it again, so the broker has a route
    to it once more. And like the real brain it acknowledges each ``TaskDone``
    and ``TaskFailed`` it receives, unless ``ack_results`` is set False.
    """

    def __init__(self, endpoint: str, context: zmq.Context) -> None:
        self.client = Client("brain", endpoint, context=context)
        self.seen: list[Message] = []
        self.backlog: list[Message] = []
        self.ack_results = True
        self.client.tick()  # makes the broker know the name

    def send(self, msg: Message) -> Message:
        return self.client.send(msg)

    def expect(self, cls: type, timeout: float = WAIT_S, **fields: Any) -> Any:
        """The first message of type ``cls`` whose fields equal ``fields``.

        Messages that do not match are kept for later ``expect`` calls, except
        heartbeats, which only ever match fresh.
        """

        def matches(msg: Message) -> bool:
            return isinstance(msg, cls) and all(getattr(msg, k) == v for k, v in fields.items())

        for msg in self.backlog:
            if matches(msg):
                self.backlog.remove(msg)
                return msg
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.client.tick()
            msg = self.client.recv(min(left, self.client.heartbeat_due_in(), 0.2))
            if msg is None:
                continue
            self.seen.append(msg)
            if self.ack_results and isinstance(msg, TaskDone | TaskFailed):
                self.client.send(Ack(dst=msg.src, reply_to=msg.id))
            if matches(msg):
                return msg
            if not isinstance(msg, Heartbeat):
                self.backlog.append(msg)
        seen = ", ".join(type(m).__name__ for m in self.seen[-20:] if not isinstance(m, Heartbeat))
        raise AssertionError(f"no {cls.__name__} {fields} within {timeout}s (last seen: {seen})")

    def heartbeat(self, worker: str, timeout: float = WAIT_S, **fields: Any) -> Heartbeat:
        return self.expect(Heartbeat, timeout, src=worker, **fields)

    def close(self) -> None:
        self.client.close()


class RunningWorker:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.thread = threading.Thread(target=self._run, name=f"worker-{worker.config.name}")
        self.thread.daemon = True
        self.exit_code: int | None = None
        self.thread.start()

    def _run(self) -> None:
        self.exit_code = self.worker.run()

    @property
    def name(self) -> str:
        return self.worker.config.name

    def stop(self, timeout: float = WAIT_S) -> None:
        self.worker.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"worker {self.name} did not stop"


class FakeTelemetry:
    """Readings a test sets by hand (``reading`` is returned as is)."""

    def __init__(self, reading: Telemetry | None = None, vram_total_mb: int = 0) -> None:
        self.reading = reading or Telemetry(note="fake telemetry")
        self._vram_total_mb = vram_total_mb

    def read(self) -> Telemetry:
        return self.reading

    def vram_total_mb(self) -> int:
        return self._vram_total_mb


class FixedPortBroker:
    """A broker on one fixed port that can be stopped and started again."""

    def __init__(self) -> None:
        probe = Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
        self.endpoint = probe.router_endpoint
        probe.close()
        self.broker: Broker | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> FixedPortBroker:
        def bound() -> Broker | None:
            try:
                return Broker(self.endpoint, "tcp://127.0.0.1:*", interval=0.2)
            except OSError:
                return None  # the port of the broker stopped before is not free yet

        self.broker = wait_for(bound, 5, f"{self.endpoint} to be free to bind again")
        self.thread = threading.Thread(target=self.broker.run, name="broker", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.broker is not None and self.thread is not None and self.thread.is_alive():
            self.broker.stop()
            self.thread.join(5)
            assert not self.thread.is_alive(), "broker did not stop"


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The Gemma 3 270M GGUF, assembled once into the llmo model cache."""
    from llmo.cli.models import default_model

    return default_model()


@pytest.fixture
def brain_factory(zmq_context) -> Iterator[Callable[[str], FakeBrain]]:
    brains: list[FakeBrain] = []

    def make(endpoint: str) -> FakeBrain:
        brain = FakeBrain(endpoint, zmq_context)
        brains.append(brain)
        return brain

    yield make
    for brain in brains:
        brain.close()


@pytest.fixture
def worker_factory(zmq_context) -> Iterator[Callable[..., RunningWorker]]:
    """Start a worker in a thread: ``start(endpoint, name=..., telemetry=..., **config)``."""
    running: list[RunningWorker] = []

    def start(
        endpoint: str, name: str = "gpu-t", telemetry: Any = None, **config: Any
    ) -> RunningWorker:
        base = WorkerConfig(
            name=name,
            heartbeat_s=0.2,
            stop_deadline_s=2.0,
            stop_grace_s=0.5,
            confirm_s=0.5,
            threads=1,
        )
        worker = Worker(
            replace(base, **config),
            endpoint,
            telemetry=telemetry if telemetry is not None else FakeTelemetry(),
            context=zmq_context,
        )
        started = RunningWorker(worker)
        running.append(started)
        return started

    yield start
    for started in running:
        if started.thread.is_alive():
            started.stop()


@pytest.fixture
def fixed_broker() -> Iterator[FixedPortBroker]:
    broker = FixedPortBroker()
    yield broker
    broker.stop()


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that still runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rfind(b")") + 2 : data.rfind(b")") + 3] != b"Z"


def read_pid(path: Path, timeout: float = WAIT_S) -> int:
    assert wait_until(lambda: path.exists() and path.read_text().strip() != "", timeout), path
    return int(path.read_text().strip())


def environ_without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}
