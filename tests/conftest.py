"""Shared fixtures: a real broker on loopback and clients connected to it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
import zmq

from llmo.broker.service import Broker
from llmo.proto.client import Client
from tests.waiting import WAIT_S, wait_for


class RunningBroker:
    """A ``Broker`` serving from a thread; stopped and joined at teardown."""

    def __init__(self, **kwargs) -> None:
        self.broker = Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", **kwargs)
        self.endpoint = self.broker.router_endpoint
        self.pub_endpoint = self.broker.pub_endpoint
        self.thread = threading.Thread(target=self.broker.run, name="broker", daemon=True)
        self.thread.start()

    @property
    def stats(self):
        return self.broker.stats

    def wait_heard(self, name: str, timeout: float = WAIT_S) -> None:
        """Wait until the broker has taken a heartbeat from ``name``: from then on
        it can route to ``name``."""
        heard = self.broker.liveness.last_seen
        wait_for(lambda: name in heard, timeout, f"the broker to hear from {name}")

    def stop(self) -> None:
        self.broker.stop()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive(), "broker thread did not stop"


@pytest.fixture
def zmq_context() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def broker_factory() -> Iterator[Callable[..., RunningBroker]]:
    started: list[RunningBroker] = []

    def start(**kwargs) -> RunningBroker:
        running = RunningBroker(**kwargs)
        started.append(running)
        return running

    yield start
    for running in started:
        if running.thread.is_alive():
            running.stop()


@pytest.fixture
def running_broker(broker_factory) -> RunningBroker:
    return broker_factory()


@pytest.fixture
def client_factory(zmq_context) -> Iterator[Callable[..., Client]]:
    clients: list[Client] = []

    def make(name: str, endpoint: str, **kwargs) -> Client:
        client = Client(name, endpoint, context=zmq_context, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
