"""The messages of one brain loop turn, bundled: fewer sends when many are ready at once.

Theory of operation
-------------------
The shell commits the journal once per loop turn and then sends what the
turn's events asked for. When a turn answers many events (a fan-out: results
in, assignments out) most of those messages go to a few destinations, and a
send costs the brain, the broker and the receiver far more than the bytes do.
``bundle`` turns the turn's messages into fewer, with the same content:

* assignments and plain result acks to one worker become one ``TaskAssigns``
  (its ``acks`` handled first; acks alone are one ``Acks``), at the place of
  the first of them; a message of another kind to that worker closes the
  bundle open for it, so it still follows it, and what comes after opens a
  new one. Each destination thus gets its messages in the order the core
  sent them, except that its assignments and acks (which do not bear on each
  other) may pass one another. A chain's hop (the result's ack and the next
  assignment) is one message;
* batch events (all to the broker, to be published) go last, as one
  ``BatchEvents``.

A bundle of one is sent as the message itself: a lone event (an assignment,
one result's ack) goes out as before, with no wait. Bundles are
cut at ``ASSIGNS_PER_MESSAGE`` and ``EVENTS_PER_MESSAGE`` to stay far below
the codec's message size limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    out: list[Message | Group] = []
    open_: dict[str, Group] = {}
    events: list[BatchEvent] = []
    for msg in msgs:
        kind = type(msg)
        if isinstance(msg, BatchEvent):
            events.append(msg)
        elif kind is TaskAssign or (kind is Ack and plain_ack(msg)):
            group = open_.get(msg.dst)
            if group is None:
                group = open_[msg.dst] = Group(msg.dst)
                out.append(group)
            if isinstance(msg, TaskAssign):
                group.assigns.append(msg)
            elif isinstance(msg, Ack):
                group.acks.append(msg.reply_to)
        else:
            open_.pop(msg.dst, None)
            out.append(msg)
    sent: list[Message] = []
    for item in out:
        if isinstance(item, Group):
            sent.extend(item.messages())
        else:
            sent.append(item)
    sent.extend(coalesced(events))
    return sent


def plain_ack(msg: Message) -> bool:
    return isinstance(msg, Ack) and msg.ok and not msg.detail


@dataclass(slots=True)
class Group:
    """One worker's assignments and plain acks between two of its other messages."""

    dst: str
    assigns: list[TaskAssign] = field(default_factory=list)
    acks: list[str] = field(default_factory=list)

    def messages(self) -> list[Message]:
        """As messages of at most ``ASSIGNS_PER_MESSAGE`` assignments and as many acks;
        a lone assignment or ack as itself."""
        n = ASSIGNS_PER_MESSAGE
        assigns = [tuple(self.assigns[at : at + n]) for at in range(0, len(self.assigns), n)]
        acks = [tuple(self.acks[at : at + n]) for at in range(0, len(self.acks), n)]
        out: list[Message] = []
        for i in range(max(len(assigns), len(acks))):
            part = assigns[i] if i < len(assigns) else ()
            replies = acks[i] if i < len(acks) else ()
            if len(part) == 1 and not replies:
                out.append(part[0])
            elif part:
                out.append(TaskAssigns(dst=self.dst, assigns=part, acks=replies))
            elif len(replies) == 1:
                out.append(Ack(dst=self.dst, reply_to=replies[0]))
            else:
                out.append(Acks(dst=self.dst, reply_to=replies))
        return out


def coalesced(events: list[BatchEvent]) -> list[Message]:
    """Batch events in messages of at most ``EVENTS_PER_MESSAGE``; a lone one as itself."""
    if len(events) <= 1:
        return list(events)
    return [
        BatchEvents.of(events[at : at + EVENTS_PER_MESSAGE])
        for at in range(0, len(events), EVENTS_PER_MESSAGE)
    ]
