"""Broker hop cost: round trips and throughput through the broker vs a direct pair.

Run: ``.venv/bin/python bench/broker.py [--round-trips N] [--messages N]``

The floor is a DEALER talking straight to a ROUTER echo (no broker), measured
in the same run with the same message bytes. Through the broker the path is
DEALER -> broker ROUTER -> echo DEALER and back, so the broker's own cost is
what the ratio shows beyond the extra hop. Each side runs in its own process.

The peers speak in their roles, as on a rig: the bench is the configured
worker ``bench`` reporting ``TaskProgress`` to the brain, and the echo (or the
sink) is the brain, which claims its name with a heartbeat and answers each
report with an ``Ack``. The broker assigns the routing identities.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import threading
import time

import zmq

from llmo.broker.roles import Roles
from llmo.broker.service import Broker
from llmo.proto import BRAIN, BROKER, Ack, Heartbeat, TaskProgress, decode, encode

WORKER = "bench"


def message(n: int = 0) -> bytes:
    """What the worker sends: a progress report to the brain."""
    return encode(
        TaskProgress(
            src=WORKER,
            dst=BRAIN,
            id=f"m{n}",
            ts=time.time(),
            batch_id="20261129_000000",
            task_id="summarize_0001",
            attempt_id="summarize_0001.1",
            tokens=17,
            tok_s=24.5,
        )
    )


def answer() -> bytes:
    """What the brain answers: an acknowledgement to the worker."""
    return encode(Ack(src=BRAIN, dst=WORKER, id="a0", ts=time.time(), reply_to="m0"))


def run_broker(ready, stop) -> None:
    broker = Broker(
        "tcp://127.0.0.1:*",
        "tcp://127.0.0.1:*",
        interval=5.0,
        roles=Roles(workers=frozenset({WORKER})),
    )
    ready.put(broker.router_endpoint)
    threading.Thread(target=lambda: (stop.wait(), broker.stop()), daemon=True).start()
    broker.run()


def brain_socket(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    """A DEALER that has claimed the name ``brain`` at the broker."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(endpoint)
    sock.send(encode(Heartbeat(src=BRAIN, dst=BROKER, id="h", ts=time.time())))
    return sock


def run_echo_direct(ready, stop) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    reply = answer()
    ready.put(f"tcp://127.0.0.1:{port}")
    while not stop.is_set():
        if sock.poll(100):
            identity, _ = sock.recv_multipart()
            sock.send_multipart([identity, reply])
    sock.close()
    ctx.term()


def run_echo_brokered(endpoint, ready, stop) -> None:
    ctx = zmq.Context()
    sock = brain_socket(ctx, endpoint)
    reply = answer()
    ready.put("ok")
    while not stop.is_set():
        if sock.poll(100):
            sock.recv()
            sock.send(reply)
    sock.close()
    ctx.term()


def run_sink(endpoint, expected, ready, result) -> None:
    ctx = zmq.Context()
    if endpoint:
        sock = brain_socket(ctx, endpoint)
    else:
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        endpoint = f"tcp://127.0.0.1:{port}"
    ready.put(endpoint)
    sock.recv_multipart()
    first = time.perf_counter()
    for _ in range(expected - 1):
        sock.recv_multipart()
    result.put((expected - 1) / (time.perf_counter() - first))
    sock.close()
    ctx.term()


def worker_socket(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.connect(endpoint)
    return sock


def round_trips(sock: zmq.Socket, body: bytes, count: int) -> list[float]:
    for _ in range(200):  # warm up
        sock.send(body)
        reply = decode(sock.recv())
    if not isinstance(reply, Ack):  # the broker refused: it answered with an Error
        raise SystemExit(f"the echo did not answer: {reply}")
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        sock.send(body)
        sock.recv()
        samples.append(time.perf_counter() - start)
    return samples


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6


def throughput(endpoint: str | None, count: int) -> float:
    ready, result = mp.Queue(), mp.Queue()
    sink = mp.Process(target=run_sink, args=(endpoint, count, ready, result))
    sink.start()
    target = ready.get(timeout=10)
    ctx = zmq.Context()
    sock = worker_socket(ctx, target)
    time.sleep(0.3)
    body = message()
    for _ in range(count):
        sock.send(body)
    rate = result.get(timeout=120)
    sink.join()
    sock.close()
    ctx.term()
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args()

    stop = mp.Event()
    ready = mp.Queue()
    broker = mp.Process(target=run_broker, args=(ready, stop))
    broker.start()
    broker_endpoint = ready.get(timeout=10)
    direct = mp.Process(target=run_echo_direct, args=(ready, stop))
    direct.start()
    direct_endpoint = ready.get(timeout=10)
    echo = mp.Process(target=run_echo_brokered, args=(broker_endpoint, ready, stop))
    echo.start()
    ready.get(timeout=10)
    time.sleep(0.3)

    ctx = zmq.Context()
    results = {}
    for label, endpoint in (
        ("direct (floor)", direct_endpoint),
        ("through broker", broker_endpoint),
    ):
        sock = worker_socket(ctx, endpoint)
        samples = round_trips(sock, message(), args.round_trips)
        results[label] = samples
        sock.close()
    stop.set()
    for proc in (broker, direct, echo):
        proc.join(timeout=10)
    ctx.term()

    floor = results["direct (floor)"]
    print(
        f"round trips: {args.round_trips} each, "
        f"messages {len(message())} bytes out, {len(answer())} bytes back"
    )
    for label, samples in results.items():
        print(
            f"  {label:15s} p50 {pct(samples, 0.5):7.1f} us  p99 {pct(samples, 0.99):7.1f} us"
            f"  {len(samples) / sum(samples):8.0f} round trips/s"
        )
    brokered = results["through broker"]
    print(
        f"  ratio to floor: p50 {statistics.median(brokered) / statistics.median(floor):.2f}x"
        f"  p99 {pct(brokered, 0.99) / pct(floor, 0.99):.2f}x  (aim: at most 2x)"
    )

    stop = mp.Event()
    ready = mp.Queue()
    broker = mp.Process(target=run_broker, args=(ready, stop))
    broker.start()
    broker_endpoint = ready.get(timeout=10)
    floor_rate = throughput(None, args.messages)
    brokered_rate = throughput(broker_endpoint, args.messages)
    stop.set()
    broker.join(timeout=10)
    print(f"pipelined one way: {args.messages} messages")
    print(f"  direct (floor)  {floor_rate:9.0f} msg/s")
    print(
        f"  through broker  {brokered_rate:9.0f} msg/s  ratio {brokered_rate / floor_rate:.2f}"
        "  (aim: at least 30,000 msg/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
