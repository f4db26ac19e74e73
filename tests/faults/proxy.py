"""A fault-injecting TCP proxy between llmo's peers and the broker.

Run as ``python -m tests.faults.proxy --control FILE LISTEN=TARGET ...``: it
listens on each ``LISTEN`` (``host:port``) and forwards every connection to
its ``TARGET``, byte for byte, in both directions. What it does to the
streams is read from ``FILE`` (one word and its numbers; re-read every
0.1 s, so a test changes the fault while connections stay open):

- ``pass``: forward at once (the default, and what a missing file means).
- ``delay S``: hold each chunk ``S`` seconds before forwarding it, in order,
  in each direction: a link with ``S`` of latency each way (``delay 0.05``
  is 50 ms), throughput unchanged.
- ``stall P LO HI``: packet loss as TCP shows it to the application. On a
  stream no byte may be dropped, but a lost segment holds everything behind
  it until the retransmission arrives; so before each chunk, with
  probability ``P``, the direction is held for a random ``LO``..``HI``
  seconds (``stall 0.3 0.2 1.0``).
- ``reset P``: harsh loss, where the connection dies. Each second, each
  connection is closed on both sides with probability ``P`` (``reset 0.2``);
  ZeroMQ reconnects, and whatever was in flight on it is lost.

Each line of the proxy's output is an event (``listening``, ``stall``,
``reset``), and a change of fault says what the last one did
(``fault pass after delay 0.05: delayed=120 stalls=0 resets=0``). The
random draws come from ``--seed``, so a run is repeatable up to the timing
of the traffic itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import time
from pathlib import Path

CHUNK = 65536
READ_CONTROL_S = 0.1


class Faults:
    """The current fault, as the control file says."""

    def __init__(self, control: Path, seed: int) -> None:
        self.control = control
        self.rng = random.Random(seed)
        self.mode = "pass"
        self.args: list[float] = []
        self.resets = 0
        self.stalls = 0
        self.delayed = 0

    def read(self) -> None:
        try:
            words = self.control.read_text().split()
        except OSError:
            words = []
        mode, args = (words[0], [float(w) for w in words[1:]]) if words else ("pass", [])
        if (mode, args) != (self.mode, self.args):
            said = " ".join([mode, *map(str, args)])
            was = " ".join([self.mode, *map(str, self.args)])
            say(
                f"fault {said} after {was}: delayed={self.delayed} "
                f"stalls={self.stalls} resets={self.resets}"
            )
            self.delayed = self.stalls = self.resets = 0
        self.mode, self.args = mode, args

    async def watch(self) -> None:
        while True:
            self.read()
            await asyncio.sleep(READ_CONTROL_S)

    def hold_for(self) -> float:
        """How long to hold the next chunk of a direction (stall), 0 for at once."""
        if self.mode == "stall" and len(self.args) == 3:
            chance, low, high = self.args
            if self.rng.random() < chance:
                self.stalls += 1
                held = self.rng.uniform(low, high)
                say(f"stall #{self.stalls} for {held:.2f} s")
                return held
        return 0.0

    def delay(self) -> float:
        if self.mode == "delay" and self.args:
            self.delayed += 1
            return self.args[0]
        return 0.0

    def reset_now(self) -> bool:
        """Drawn once a second per connection."""
        return self.mode == "reset" and bool(self.args) and self.rng.random() < self.args[0]


def say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} proxy: {text}", flush=True)


async def pump(faults: Faults, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One direction: read chunks, stamp them, forward each no earlier than it is due."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        while data := await reader.read(CHUNK):
            await queue.put((time.monotonic(), data))
        await queue.put((time.monotonic(), b""))

    async def write() -> None:
        while True:
            arrived, data = await queue.get()
            wait = arrived + faults.delay() - time.monotonic() + faults.hold_for()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                return
            writer.write(data)
            await writer.drain()

    tasks = [asyncio.ensure_future(read()), asyncio.ensure_future(write())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        await tasks[1]
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            writer.close()


async def connection(
    faults: Faults, target: tuple[str, int], client_r: asyncio.StreamReader, client_w
) -> None:
    try:
        server_r, server_w = await asyncio.open_connection(*target)
    except OSError as exc:
        say(f"cannot reach {target[0]}:{target[1]}: {exc}")
        client_w.close()
        return
    ways = [
        asyncio.ensure_future(pump(faults, client_r, server_w)),
        asyncio.ensure_future(pump(faults, server_r, client_w)),
    ]

    async def resetter() -> None:
        while True:
            await asyncio.sleep(1.0)
            if faults.reset_now():
                faults.resets += 1
                say(f"reset a connection to {target[0]}:{target[1]} (#{faults.resets})")
                for w in (client_w, server_w):
                    w.transport.abort()
                return

    chaos = asyncio.ensure_future(resetter())
    try:
        await asyncio.wait(ways, return_when=asyncio.FIRST_COMPLETED)
    except Exception:
        pass
    finally:
        chaos.cancel()
        for way in ways:
            way.cancel()
        for w in (client_w, server_w):
            w.transport.abort()


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="proxy", description=__doc__.split("\n")[0])
    parser.add_argument("--control", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("routes", nargs="+", metavar="LISTEN=TARGET")
    args = parser.parse_args(argv)
    faults = Faults(args.control, args.seed)
    watching = asyncio.ensure_future(faults.watch())
    servers = []
    for route in args.routes:
        listen, _, target = route.partition("=")
        host, port = address(listen)
        to = address(target)
        servers.append(
            await asyncio.start_server(
                lambda r, w, to=to: connection(faults, to, r, w), host, port, reuse_address=True
            )
        )
        say(f"listening on {listen}, forwarding to {target}")
    await asyncio.gather(watching, *(s.serve_forever() for s in servers))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1:]))
