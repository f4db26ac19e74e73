"""The messages of one brain loop turn, bundled: fewer sends when many are ready at once.

Theory of operation
-------------------
The shell commits the journal once per loop turn and then sends what the
turn's events asked for. When a turn answers many events (a fan-out: results
in, assignments out) most of those messages go to a few destinations, and a
send costs the brain, the broker and the receiver far more than the bytes do.
``bundle`` turns the turn's messages into fewer, with the same content:

* assignments to one worker become one ``TaskAssigns``, plain result acks to
  one worker one ``Acks``, each at the place of its first member; a message of
  another kind to that worker closes the bundles open for it, so it still
  follows them, and what comes after opens new ones. Each destination thus
  gets its messages in the order the core sent them, except that its
  assignments and acks (which do not bear on each other) may pass one another;
* batch events (all to the broker, to be published) go last, as one
  ``BatchEvents``.

A bundle of one is sent as the message itself: a lone event (a chain's next
assignment, one result's ack) goes out as before, with no wait. Bundles are
cut at ``ASSIGNS_PER_MESSAGE`` and ``EVENTS_PER_MESSAGE`` to stay far below
the codec's message size limit.
"""

from __future__ import annotations

from llmo.proto.messages import (
    Ack,
    Acks,
    BatchEvent,
    BatchEvents,
    Message,
    TaskAssign,
    TaskAssigns,
)

ASSIGNS_PER_MESSAGE = 64  # assignments (or acks) in one message at most
EVENTS_PER_MESSAGE = 500  # batch events in one message at most


def bundle(msgs: list[Message]) -> list[Message]:
    """``msgs`` (in the order the core sent them) as the messages to send."""
    out: list[Message | list[Message]] = []
    open_: dict[tuple[type, str], list[Message]] = {}
    events: list[BatchEvent] = []
    for msg in msgs:
        kind = type(msg)
        if isinstance(msg, BatchEvent):
            events.append(msg)
        elif kind is TaskAssign or (kind is Ack and plain_ack(msg)):
            group = open_.get((kind, msg.dst))
            if group is None:
                group = open_[kind, msg.dst] = []
                out.append(group)
            group.append(msg)
        else:
            open_.pop((TaskAssign, msg.dst), None)
            open_.pop((Ack, msg.dst), None)
            out.append(msg)
    sent: list[Message] = []
    for item in out:
        if isinstance(item, list):
            sent.extend(bundled(item))
        else:
            sent.append(item)
    sent.extend(coalesced(events))
    return sent


def plain_ack(msg: Message) -> bool:
    return isinstance(msg, Ack) and msg.ok and not msg.detail


def bundled(group: list[Message]) -> list[Message]:
    """One destination's assignments (or plain acks), in messages of at most
    ``ASSIGNS_PER_MESSAGE``; a lone one as itself."""
    out: list[Message] = []
    for at in range(0, len(group), ASSIGNS_PER_MESSAGE):
        part = group[at : at + ASSIGNS_PER_MESSAGE]
        dst = part[0].dst
        if len(part) == 1:
            out.append(part[0])
        elif isinstance(part[0], TaskAssign):
            assigns = tuple(m for m in part if isinstance(m, TaskAssign))
            out.append(TaskAssigns(dst=dst, assigns=assigns))
        else:
            out.append(
                Acks(dst=dst, reply_to=tuple(m.reply_to for m in part if isinstance(m, Ack)))
            )
    return out


def coalesced(events: list[BatchEvent]) -> list[Message]:
    """Batch events in messages of at most ``EVENTS_PER_MESSAGE``; a lone one as itself."""
    if len(events) <= 1:
        return list(events)
    return [
        BatchEvents.of(events[at : at + EVENTS_PER_MESSAGE])
        for at in range(0, len(events), EVENTS_PER_MESSAGE)
    ]
