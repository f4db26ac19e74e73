"""Broker hop cost: round trips and throughput through the broker vs a direct pair.

Run: ``.venv/bin/python bench/broker.py [--round-trips N] [--messages N]``

The floor is a DEALER talking straight to a ROUTER echo (no broker), measured
in the same run with the same message bytes. Through the broker the path is
DEALER -> broker ROUTER -> echo DEALER and back, so the broker's own cost is
what the ratio shows beyond the extra hop. Each side runs in its own process.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time

import zmq

from llmo.broker.service import Broker
from llmo.proto import BROKER, Heartbeat, TaskProgress, encode


def message(src: str, dst: str, n: int = 0) -> bytes:
    return encode(
        TaskProgress(
            src=src,
            dst=dst,
            id=f"m{n}",
            ts=time.time(),
            batch_id="20261129_000000",
            task_id="summarize_0001",
            attempt_id="summarize_0001.1",
            tokens=17,
            tok_s=24.5,
        )
    )


def run_broker(ready, stop) -> None:
    broker = Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", interval=5.0)
    ready.put(broker.router_endpoint)
    import threading

    threading.Thread(target=lambda: (stop.wait(), broker.stop()), daemon=True).start()
    broker.run()


def run_echo_direct(ready, stop) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    ready.put(f"tcp://127.0.0.1:{port}")
    while not stop.is_set():
        if sock.poll(100):
            sock.send_multipart(sock.recv_multipart())
    sock.close()
    ctx.term()


def run_echo_brokered(endpoint, ready, stop) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, b"echo")
    sock.connect(endpoint)
    sock.send(encode(Heartbeat(src="echo", dst=BROKER, id="h", ts=time.time())))
    reply = message("echo", "bench")
    ready.put("ok")
    while not stop.is_set():
        if sock.poll(100):
            sock.recv()
            sock.send(reply)
    sock.close()
    ctx.term()


def run_sink(endpoint, identity, expected, ready, result) -> None:
    ctx = zmq.Context()
    if identity:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, identity.encode())
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.connect(endpoint)
        sock.send(encode(Heartbeat(src=identity, dst=BROKER, id="h", ts=time.time())))
    else:
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.RCVHWM, 0)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        endpoint = f"tcp://127.0.0.1:{port}"
    sock.setsockopt(zmq.LINGER, 0)
    ready.put(endpoint)
    sock.recv_multipart()
    first = time.perf_counter()
    for _ in range(expected - 1):
        sock.recv_multipart()
    result.put((expected - 1) / (time.perf_counter() - first))
    sock.close()
    ctx.term()


def round_trips(sock: zmq.Socket, body: bytes, count: int) -> list[float]:
    for _ in range(200):  # warm up
        sock.send(body)
        sock.recv()
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
    sink = mp.Process(
        target=run_sink, args=(endpoint, "sink" if endpoint else "", count, ready, result)
    )
    sink.start()
    target = ready.get(timeout=10)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.IDENTITY, b"bench")
    sock.connect(target)
    time.sleep(0.3)
    body = message("bench", "sink")
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
    for label, endpoint, dst in (
        ("direct (floor)", direct_endpoint, "echo"),
        ("through broker", broker_endpoint, "echo"),
    ):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, b"bench")
        sock.connect(endpoint)
        samples = round_trips(sock, message("bench", dst), args.round_trips)
        results[label] = samples
        sock.close()
    stop.set()
    for proc in (broker, direct, echo):
        proc.join(timeout=10)
    ctx.term()

    floor = results["direct (floor)"]
    print(f"round trips: {args.round_trips} each, message {len(message('bench', 'echo'))} bytes")
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
