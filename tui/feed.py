"""The monitor's link to the rig: one thread owns the sockets, the UI never waits.

Theory of operation
-------------------
``Feed.run`` runs in a thread (a Textual thread worker in the app) and owns a
SUB socket on the broker's PUB endpoint and a DEALER ``Client`` for snapshot
requests and operator actions. It subscribes first and then asks the brain
for a snapshot, so no event falls between the two (the Clone pattern). The
SUB socket connects in the background, though: until the first publication
arrives the subscription may not be in effect, and what the broker published
meanwhile is lost with no gap in the sequence to show it. So the first
publication heard brings another snapshot. A snapshot's reply travels
through the ROUTER while events come through the PUB socket, so it can be
older than events already posted: the last ``POSTED_KEPT`` posted events are
kept, and those newer than a full snapshot follow it again in the update
(the model applies each once, and logs it once).

What it hears is gathered into one pending ``Update``: lifecycle events in
order, the latest heartbeat per worker and the latest progress per attempt
(a newer one replaces the queued one), and the latest report of ``llmo up``'s
supervisor (its children, published on every change). The pending update is posted at most
every ``flush_s`` seconds and only after the app has said it took the
previous one (``taken``), so a slow screen never makes a queue grow; if
events pile past ``MAX_PENDING_EVENTS`` they are dropped and a fresh
snapshot replaces them.

Link states (see ``tui.updates.LinkStatus``): a fresh snapshot is taken at
start, on a sequence gap (missed publications, a restarted broker), when a
new batch appears, a foreach expands or a worker registers, when the brain
comes back, and when nothing has been published for ``silence_s``. If that
snapshot fails too, the link is
``down`` since the last publication heard (or ``no_brain`` when the broker
answers for an absent brain); requests are retried with growing back-off,
and the first publication heard again brings the retry forward.

Time comes from two clocks given to ``Feed``: ``clock`` (wall time, for what
the screen shows) and ``monotonic`` (for its timers and request deadlines).
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable

import zmq

from llmo.proto.client import Client, tool_name
from llmo.proto.endpoints import Endpoints
from llmo.proto.errors import ErrorCode, ProtocolError
from llmo.proto.messages import (
    BRAIN,
    BatchEvent,
    Error,
    Heartbeat,
    Message,
    PeerDown,
    PeerUp,
    PlanAccepted,
    PlanRejected,
    PlanSubmit,
    SnapshotReply,
    SnapshotRequest,
    SupervisorReport,
    TaskProgress,
)
from llmo.proto.pubsub import Subscriber
from llmo.proto.security import ClientKeys
from llmo.proto.session import Session, ToolError
from llmo.tui.updates import ActionResult, LinkStatus, Update

log = logging.getLogger("llmo.tui.feed")

FLUSH_S = 0.15  # at most about seven updates a second reach the screen
POSTED_KEPT = 5000  # posted events kept to follow an older snapshot again
SILENCE_S = 3.0  # nothing published for this long: check the link with a snapshot
SNAPSHOT_TIMEOUT_S = 3.0
ACTION_TIMEOUT_S = 5.0
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
# Full snapshots of a live link at most this often: on a slow link a snapshot
# of 10,000 tasks that itself causes the next gap must not become a loop.
RESYNC_MIN_S = 2.0
MAX_PENDING_EVENTS = 20_000
DRAIN_BURST = 5_000  # publications read per pass before the loop looks at its timers
# Events after which the brain's state holds more than the events tell: a new
# batch (its history path, its first tasks), a foreach expansion (its items
# are released quietly, in one step), a batch re-opened by a retry (a
# finished batch's tasks are not kept unless it is selected) and a worker's
# registration (its host, pid and endpoint).
RESYNC_EVENTS = frozenset(
    {"batch_accepted", "task_expanded", "batch_reopened", "worker_registered"}
)


def submitted(label: str, reply: Message) -> ActionResult:
    """The brain's answer to a ``PlanSubmit``: the new batch, or every error."""
    if isinstance(reply, PlanAccepted):
        text = f"accepted: batch {reply.batch_id} ({reply.tasks} tasks)"
        if reply.warnings:
            text += "; warnings: " + "; ".join(reply.warnings)
        return ActionResult(label, True, text)
    if isinstance(reply, PlanRejected):
        errors = "; ".join(reply.errors) or "no reason given"
        return ActionResult(label, False, f"rejected: {errors}")
    return ActionResult(label, False, f"unexpected reply {reply.TYPE.value!r} from the brain")


class _Pending:
    """What has been heard since the last posted update."""

    def __init__(self) -> None:
        self.snapshots: list[tuple[str, SnapshotReply]] = []
        self.events: list[BatchEvent] = []
        self.heartbeats: dict[str, Heartbeat] = {}
        self.progress: dict[str, TaskProgress] = {}
        self.peers: list[PeerUp | PeerDown] = []
        self.results: list[ActionResult] = []
        self.notes: list[str] = []
        self.link: LinkStatus | None = None
        self.supervisor: SupervisorReport | None = None
        self.received = 0
        self.oldest_ts = 0.0
        self.newest_ts = 0.0
        self.dropped = 0

    def __bool__(self) -> bool:
        return bool(
            self.snapshots
            or self.events
            or self.heartbeats
            or self.progress
            or self.peers
            or self.results
            or self.notes
            or self.link is not None
            or self.supervisor is not None
        )

    def heard(self, msg: Message) -> None:
        self.received += 1
        if msg.ts:
            if not self.oldest_ts:
                self.oldest_ts = msg.ts
            self.newest_ts = max(self.newest_ts, msg.ts)

    def update(self) -> Update:
        full = [("", s) for b, s in self.snapshots if not b][-1:]
        narrowed = [(b, s) for b, s in self.snapshots if b]
        return Update(
            snapshots=tuple(full + narrowed),
            events=tuple(self.events),
            heartbeats=tuple(self.heartbeats.values()),
            progress=tuple(self.progress.values()),
            peers=tuple(self.peers),
            link=self.link,
            results=tuple(self.results),
            received=self.received,
            oldest_ts=self.oldest_ts,
            newest_ts=self.newest_ts,
            dropped_events=self.dropped,
            notes=tuple(self.notes),
            supervisor=self.supervisor,
        )


class Feed:
    """Subscribe, snapshot, coalesce, post. Thread-safe methods: ``taken``,
    ``act``, ``resync``, ``stop``; everything else runs in ``run``'s thread."""

    def __init__(
        self,
        endpoints: Endpoints,
        post: Callable[[Update], object],
        *,
        name: str | None = None,
        context: zmq.Context | None = None,
        flush_s: float = FLUSH_S,
        silence_s: float = SILENCE_S,
        snapshot_timeout_s: float = SNAPSHOT_TIMEOUT_S,
        action_timeout_s: float = ACTION_TIMEOUT_S,
        backoff_s: tuple[float, ...] = BACKOFF_S,
        resync_min_s: float = RESYNC_MIN_S,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoints = endpoints
        self.post = post
        self.name = name or tool_name("tui")
        self.context = context
        self.flush_s = flush_s
        self.silence_s = silence_s
        self.snapshot_timeout_s = snapshot_timeout_s
        self.action_timeout_s = action_timeout_s
        self.backoff_s = backoff_s
        self.resync_min_s = resync_min_s
        self.clock = clock
        self.monotonic = monotonic
        self.posted = 0
        # Subscribed (a publication heard) and the snapshot that follows taken: what
        # the screen shows from now on misses nothing. Read by tests, from any thread.
        self.settled = False
        self.malformed = 0
        self._taken = threading.Event()
        self._taken.set()
        self._stop = threading.Event()
        self._actions: queue.SimpleQueue[tuple[str, Message]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._wanted: list[str] = []  # "" = a full snapshot, else one batch's

    # --- called from the UI thread -------------------------------------------------------

    def taken(self) -> None:
        """The app has applied the last update; the next may be posted."""
        self._taken.set()

    def act(self, label: str, msg: Message) -> None:
        """Send an operator request to the brain; its ``ActionResult`` comes in an update."""
        self._actions.put((label, msg))

    def resync(self, batch_id: str = "") -> None:
        """Take a fresh snapshot (of one batch's tasks when ``batch_id`` is given)."""
        with self._lock:
            if batch_id not in self._wanted:
                self._wanted.append(batch_id)

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    # --- the thread -------------------------------------------------------------------------

    def run(self) -> None:
        context = self.context or zmq.Context.instance()
        sub = Subscriber(self.endpoints.pub, context=context)
        client = Client(
            self.name,
            self.endpoints.broker,
            context=context,
            clock=self.clock,
            monotonic=self.monotonic,
        )
        try:
            _Loop(self, sub, client).run()
        finally:
            sub.close()
            client.close()

    def _take_wanted(self) -> list[str]:
        with self._lock:
            wanted, self._wanted = self._wanted, []
        return wanted


class _Requests:
    """``Client.request`` in slices, so that quitting never waits on a dead link.

    A reply that comes too late is dropped, not kept for later. A ``Requester``
    for the feed's ``Session``.
    """

    def __init__(
        self,
        client: Client,
        stop: threading.Event,
        clock: Callable[[], float] = time.monotonic,
        slice_s: float = 0.1,
    ) -> None:
        self.client = client
        self.stop = stop
        self.clock = clock
        self.slice_s = slice_s

    @property
    def keys(self) -> ClientKeys | None:
        return self.client.keys

    def request(self, msg: Message, timeout: float) -> Message | None:
        sent = self.client.send(msg)
        deadline = self.clock() + timeout
        while not self.stop.is_set() and (left := deadline - self.clock()) > 0:
            reply = self.client.recv(timeout=min(left, self.slice_s))
            if reply is not None and getattr(reply, "reply_to", None) == sent.id:
                return reply
        return None

    def close(self) -> None:
        self.client.close()


class _Loop:
    """One run of the feed; its attributes are touched by the feed thread only."""

    def __init__(self, feed: Feed, sub: Subscriber, client: Client) -> None:
        self.feed = feed
        self.sub = sub
        self.client = client
        self.requests = _Requests(client, feed._stop, feed.monotonic)
        self.session = Session(feed.endpoints, self.requests, timeout=feed.action_timeout_s)
        self.pending = _Pending()
        self.started = feed.monotonic()
        self.heard_at = 0.0  # monotonic time of the last publication (0: never)
        self.subscribed = False  # a publication has arrived: the subscription is in effect
        self.heard_wall = 0.0
        self.link = LinkStatus(state="connecting", since=feed.clock())
        self.pending.link = self.link
        self.need_full = True
        self.wanted: list[str] = []
        self.next_try = 0.0
        self.failures = 0
        self.last_flush = 0.0
        self.last_full = -1e9  # monotonic time of the last full snapshot
        # Events posted lately: a full snapshot older than some of them is followed by
        # those again, or the view would go back to the snapshot's older state.
        self.posted_events: collections.deque[BatchEvent] = collections.deque(maxlen=POSTED_KEPT)

    def run(self) -> None:
        while not self.feed.stopped:
            try:
                self.step()
            except Exception as exc:  # a bug here must not leave the screen frozen as "live"
                if self.feed.stopped:
                    return
                log.exception("monitor feed: unexpected error; going on")
                self.pending.notes.append(f"monitor feed error: {exc!r} (see --log-file)")
                self.need_full = True
                time.sleep(0.2)

    def step(self) -> None:
        feed = self.feed
        now = self.feed.monotonic()
        wait = max(0.0, min(self.next_try - now, feed.flush_s - (now - self.last_flush)))
        self.receive(min(max(wait, 0.01), 0.1))
        now = self.feed.monotonic()
        for batch_id in feed._take_wanted():
            if batch_id == "":
                self.need_full = True
                self.next_try = min(self.next_try, now)
            elif batch_id not in self.wanted:
                self.wanted.append(batch_id)
        if self.link.state == "live" and self.silent(now):
            self.need_full = True  # quiet for too long: is the link still there?
        self.do_actions()
        if now >= self.next_try:
            spaced = now - self.last_full >= feed.resync_min_s or self.link.state != "live"
            if self.need_full and spaced:
                self.snapshot("")
            elif self.wanted:
                self.snapshot(self.wanted[0])
        self.flush(feed.monotonic())
        feed.settled = self.subscribed and not self.need_full and self.link.state == "live"

    # --- publications ------------------------------------------------------------------

    def silent(self, now: float) -> bool:
        last = self.heard_at or self.started
        return now - last > self.feed.silence_s

    def receive(self, timeout: float) -> None:
        pending = self.pending
        for n in range(DRAIN_BURST):
            try:
                published = self.sub.recv(timeout=timeout if n == 0 else 0)
            except ProtocolError as exc:
                self.feed.malformed += 1
                log.warning("dropped a malformed publication: %s", exc)
                continue
            if published is None:
                return
            now = self.feed.monotonic()
            # The first publication proves the subscription in effect (see the module
            # docstring): a snapshot taken before it may lack what it missed.
            first = not self.subscribed and self.last_full > -1e9
            self.subscribed = True
            if self.link.state == "down" or first:
                self.need_full = True  # back after a drop, or subscribed since: fresh, now
                self.next_try = now
            self.heard_at = now
            self.heard_wall = self.feed.clock()
            if published.gap:
                self.need_full = True
                self.next_try = min(self.next_try, now)
            msg = published.message
            pending.heard(msg)
            if isinstance(msg, BatchEvent):
                self.event(msg, now)
            elif isinstance(msg, Heartbeat):
                pending.heartbeats[msg.src] = msg
            elif isinstance(msg, TaskProgress):
                pending.progress[msg.attempt_id] = msg
            elif isinstance(msg, SupervisorReport):
                pending.supervisor = msg
            elif isinstance(msg, PeerDown | PeerUp):
                pending.peers.append(msg)
                if isinstance(msg, PeerUp) and msg.peer == BRAIN:
                    self.need_full = True  # a restarted brain: its state, not ours
                    self.next_try = now
                    self.posted_events.clear()

    def event(self, msg: BatchEvent, now: float) -> None:
        pending = self.pending
        if len(pending.events) >= MAX_PENDING_EVENTS:
            pending.dropped += len(pending.events)
            pending.notes.append(
                f"{len(pending.events)} events skipped while the screen was busy; "
                "a fresh snapshot replaces them"
            )
            pending.events.clear()
            self.need_full = True
            self.next_try = min(self.next_try, now)
        pending.events.append(msg)
        if msg.event in RESYNC_EVENTS:
            self.need_full = True  # see RESYNC_EVENTS
            self.next_try = min(self.next_try, now)

    # --- requests ------------------------------------------------------------------------

    def do_actions(self) -> None:
        actions = self.feed._actions
        while True:
            try:
                label, msg = actions.get_nowait()
            except queue.Empty:
                return
            try:
                if isinstance(msg, PlanSubmit):
                    result = submitted(label, self.session.ask(msg))
                else:
                    result = ActionResult(label, True, self.session.control(msg) or "done")
            except ToolError as exc:
                result = ActionResult(label, False, str(exc))
            self.pending.results.append(result)

    def snapshot(self, batch_id: str) -> None:
        request = SnapshotRequest(dst=BRAIN, batch_id=batch_id)
        reply = self.requests.request(request, timeout=self.feed.snapshot_timeout_s)
        if self.feed.stopped:
            return
        now = self.feed.monotonic()
        if isinstance(reply, SnapshotReply):
            self.pending.snapshots.append((batch_id, reply))
            newer = [e for e in self.posted_events if e.rev > reply.rev] if not batch_id else []
            if newer:
                self.pending.events[:0] = newer
            if batch_id:
                self.wanted.remove(batch_id)
            else:
                self.need_full = False
                self.last_full = now
                self.heard_at = now  # the link answered
                self.heard_wall = self.feed.clock()
            self.failures = 0
            self.next_try = now
            self.set_link(LinkStatus(state="live", since=self.feed.clock()))
            return
        self.failures += 1
        delay = self.feed.backoff_s[min(self.failures, len(self.feed.backoff_s)) - 1]
        self.next_try = now + delay
        retry_at = self.feed.clock() + delay
        if (
            isinstance(reply, Error)
            and reply.code == ErrorCode.UNKNOWN_DESTINATION
            and reply.peer == BRAIN
        ):
            broker = self.feed.endpoints.broker
            detail = f"the broker at {broker} answers, but no brain is connected"
            self.set_link(self._status("no_brain", detail, retry_at))
        elif isinstance(reply, Error):
            self.set_link(self._status("no_brain", f"{reply.code}: {reply.detail}", retry_at))
        elif self.heard_at == 0.0 or self.silent(now):
            detail = f"nothing from {self.feed.endpoints.broker} / {self.feed.endpoints.pub}"
            self.set_link(self._status("down", detail, retry_at))
        else:
            detail = f"the brain did not answer within {self.feed.snapshot_timeout_s:g} s"
            self.set_link(self._status("no_brain", detail, retry_at))

    def _status(self, state, detail: str, retry_at: float) -> LinkStatus:
        if self.link.state == state:
            since = self.link.since
        elif state == "down":
            since = self.heard_wall or self.link.since
        else:
            since = self.feed.clock()
        return LinkStatus(state=state, since=since, detail=detail, retry_at=retry_at)

    def set_link(self, status: LinkStatus) -> None:
        if status != self.link:
            if status.state != self.link.state:
                log.info("link %s: %s", status.state, status.detail)
            self.link = status
            self.pending.link = status

    # --- posting ---------------------------------------------------------------------------

    def flush(self, now: float) -> None:
        feed = self.feed
        if not self.pending or now - self.last_flush < feed.flush_s:
            return
        if not feed._taken.is_set():
            return  # the app is still on the last one: keep merging into this one
        feed._taken.clear()
        update = self.pending.update()
        last = self.posted_events[-1].rev if self.posted_events else -1
        self.posted_events.extend(e for e in update.events if e.rev > last)
        self.pending = _Pending()
        self.last_flush = now
        feed.posted += 1
        feed.post(update)
