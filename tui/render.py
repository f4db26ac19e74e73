"""Cells and lines as Rich ``Text``: colours, bars, sparklines, durations.

Pure functions of the model's rows and ``now``, so the look is tested
without a terminal. Colours carry meaning once: green is good or done,
yellow is busy or a warning, red is down or failed, dim is idle or unknown.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence

from rich.text import Text

from llmo.tui.rows import (
    HEARTBEAT_AMBER_S,
    HEARTBEAT_RED_S,
    BatchRow,
    EventLine,
    RigCounts,
    TaskRow,
    WorkerRow,
)

WORKER_STYLES = {
    "cold": "cyan",
    "loading": "yellow",
    "hot": "bold green",
    "constrained": "bold magenta",
    "draining": "yellow italic",
    "down": "bold red",
    "given up": "bold white on red",
    "up": "",
}
BATCH_STYLES = {
    "running": "yellow",
    "complete": "green",
    "failed": "bold red",
    "cancelled": "magenta",
}
TASK_STYLES = {
    "pending": "dim",
    "ready": "",
    "assigned": "yellow",
    "running": "bold yellow",
    "delayed": "magenta",
    "expanding": "cyan",
    "expanded": "cyan",
    "done": "green",
    "failed": "bold red",
    "skipped": "red",
    "cancelled": "magenta",
}
LEVEL_STYLES = {"info": "", "good": "green", "warning": "yellow", "error": "bold red"}
SPARKS = "▁▂▃▄▅▆▇█"
DASH = "\u2013"  # an en dash: a figure that is not known


def styled(text: str, style: str = "") -> Text:
    return Text(text, style=style, no_wrap=True, overflow="ellipsis")


def duration(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``2h14m``; a dash when unknown."""
    if seconds is None or seconds < 0 or math.isnan(seconds):
        return DASH
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else DASH


def sparkline(values: Iterable[float], width: int, top: float | None = None) -> str:
    """The last ``width`` samples as block characters, scaled to ``top`` (else their maximum)."""
    data = list(values)[-width:]
    if not data:
        return " " * width
    top = max(data) if top is None else max(top, max(data))
    if top <= 0:
        cells = SPARKS[0] * len(data)
    else:
        cells = "".join(SPARKS[min(7, max(0, int(v / top * 7.999)))] for v in data)
    return cells.rjust(width)


def history_spark(values: Sequence[float | None], width: int, lo: float, hi: float) -> str:
    """A history in ``width`` cells between ``lo`` and ``hi``: a longer one is
    squeezed (each cell the mean of its stretch), a shorter one right-aligned;
    a stretch with no figure (a silent worker) is blank."""
    n = len(values)
    if n == 0 or width <= 0:
        return " " * max(0, width)
    span = hi - lo
    cells = []
    buckets = min(n, width)
    for i in range(buckets):
        stretch = [v for v in values[i * n // buckets : (i + 1) * n // buckets] if v is not None]
        if not stretch:
            cells.append(" ")
            continue
        share = (sum(stretch) / len(stretch) - lo) / span if span > 0 else 0.0
        cells.append(SPARKS[min(7, max(0, int(share * 7.999)))])
    return "".join(cells).rjust(width)


def meter(used: float, total: float, width: int) -> Text:
    """A filled bar for a share: green, yellow past 75 %, red past 90 %."""
    share = 0.0 if total <= 0 else min(1.0, max(0.0, used / total))
    filled = round(share * width)
    style = "green" if share < 0.75 else "yellow" if share < 0.9 else "red"
    bar = Text(no_wrap=True)
    bar.append("█" * filled, style)
    bar.append("░" * (width - filled), "dim")
    return bar


def progress(batch: BatchRow, width: int) -> Text:
    """done (green) / running (yellow) / failed (red) / pending (dim) as one bar."""
    done, running, bad, rest = batch.split()
    total = done + running + bad + rest
    out = Text(no_wrap=True)
    if total == 0:
        out.append("░" * width, "dim")
        return out
    cells = [done * width / total, running * width / total, bad * width / total]
    shown = [int(c) for c in cells]
    # Hand leftover cells to the largest remainders, but never give one to an empty part.
    spare = min(width, round(sum(cells))) - sum(shown)
    order = sorted(range(3), key=lambda i: cells[i] - shown[i], reverse=True)
    for i in order:
        if spare <= 0:
            break
        if cells[i] > shown[i]:
            shown[i] += 1
            spare -= 1
    for n, style in zip(shown, ("green", "yellow", "red"), strict=True):
        out.append("█" * n, style)
    out.append("░" * max(0, width - sum(shown)), "dim")
    return out


# --- workers -------------------------------------------------------------------------


def gpu_figures(worker: WorkerRow) -> tuple[str, Text, str, str] | None:
    """(temperature, VRAM figures and bar, power, utilisation); None without NVML.
    The VRAM figures come first, so a narrow column keeps them and drops the bar."""
    tele = worker.telemetry
    if tele is None or not tele.gpu_available or not tele.gpus:
        return None
    gpus = tele.gpus
    temps = [g.temperature_c for g in gpus if g.temperature_c is not None]
    used = sum(g.vram_used_mb or 0 for g in gpus)
    total = sum(g.vram_total_mb or 0 for g in gpus)
    powers = [g.power_w for g in gpus if g.power_w is not None]
    utils = [g.util_percent for g in gpus if g.util_percent is not None]
    temp = f"{max(temps):.0f}°C" if temps else DASH
    vram = Text(f"{used / 1024:.1f}/{total / 1024:.0f}G " if total else "? ", no_wrap=True)
    vram.append_text(meter(used, total, 7))
    power = f"{sum(powers):.0f}W" if powers else DASH
    util = f"{sum(utils) / len(utils):.0f}%" if utils else DASH
    return temp, vram, power, util


def heartbeat_age(worker: WorkerRow, now: float, live: bool = True) -> Text:
    """Seconds since the worker's last heartbeat: amber from a minute, red from two.

    While the monitor itself hears nothing (``live`` false) the silence is the
    link's, not the worker's, so the age is shown dim and uncoloured.
    """
    age = worker.heartbeat_age(now)
    if age is None:
        return styled(DASH, "dim")
    if not live:
        style = "dim"
    elif age >= HEARTBEAT_RED_S:
        style = "bold red"
    elif age >= HEARTBEAT_AMBER_S:
        style = "yellow"
    else:
        style = ""
    return styled(f"{int(age)}s", style)


def rig_counts(counts: RigCounts, compact: bool = False) -> Text:
    """The header's task cards: running, queued, done, failed (and cancelled, if
    any); ``compact`` for a narrow terminal: ``2 run 5 queued 40 done 1 failed``."""
    out = Text(no_wrap=True)
    cards = [
        (counts.running, "run" if compact else "running", "bold yellow"),
        (counts.queued, "queued", ""),
        (counts.done, "done", "green"),
        (counts.failed, "failed", "bold red"),
    ]
    if counts.cancelled:
        cards.append((counts.cancelled, "cancelled", "magenta"))
    if not compact:
        out.append("tasks ")
    for i, (n, label, style) in enumerate(cards):
        if i:
            out.append(" " if compact else " · ", "dim")
        out.append(f"{n} {label}", style if n else "dim")
    return out


_SEPARATORS = "_-.:/@"


def _stem(ids: Sequence[str]) -> str:
    """What several ids have in common, up to and with its last separator (``summarise_``)."""
    if len(ids) < 2:
        return ""
    first, last = min(ids), max(ids)  # the sorted extremes share what all of them share
    size = next(
        (i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b),
        min(len(first), len(last)),
    )
    common = first[:size]
    cut = max(common.rfind(c) for c in _SEPARATORS)
    return common[: cut + 1] if cut >= 0 else ""


def holding_text(task_ids: Sequence[str], width: int) -> str:
    """Task ids in ``width`` cells, keeping their distinguishing ends:
    ``summarise_040 041 042``, then ``…040 041 042``, then ``…040 +2``."""
    if not task_ids:
        return DASH
    full = " ".join(task_ids)
    if len(full) <= width:
        return full
    stem = _stem(task_ids)
    tails = [t[len(stem) :] or t for t in task_ids]
    mark = "…" if stem else ""
    if stem:
        for text in (stem + " ".join(tails), mark + " ".join(tails)):
            if len(text) <= width:
                return text
    for n in range(len(tails) - 1, 0, -1):
        text = mark + " ".join(tails[:n]) + f" +{len(tails) - n}"
        if len(text) <= width:
            return text
    more = f" +{len(tails) - 1}" if len(tails) > 1 else ""
    room = max(1, width - len(more) - 1)
    return "…" + tails[0][-room:] + more


def constraint_kind(text: str) -> str:
    """A worker's constraint in a word or two: ``thermal``, ``power``, ``VRAM``,
    ``cpu heat`` (joined with ``+``), ``CRIT`` first when it is critical."""
    if not text:
        return ""
    head, sep, rest = text.partition(": ")
    critical = head == "critical"
    body = rest if sep and head in ("critical", "constrained") else text
    kinds: list[str] = []
    for part in body.split(";"):
        part = part.strip()
        if part.startswith("CPU"):
            kind = "cpu heat"
        elif "VRAM" in part:
            kind = "VRAM"
        elif "drawing" in part or part.endswith(" W") or " W " in part:
            kind = "power"
        elif "°" in part:
            kind = "thermal"
        else:
            kind = part  # a reading this monitor does not know: as the worker said it
        if kind and kind not in kinds:
            kinds.append(kind)
    short = "+".join(kinds) or body
    return f"CRIT {short}" if critical else short


def limit_text(constraint: str, width: int = 0) -> str:
    """Why a worker is constrained, in ``width`` cells (0: any): the readings
    where they fit (``GPU 1 at 86 °C (limit 83 °C)``), else the kind first
    (``thermal · GPU 1 at 86 °C ...``), so a narrow cell still says which."""
    text = " ".join(constraint.split())
    if not text:
        return ""
    head, sep, rest = text.partition(": ")
    readings = rest if sep and head in ("critical", "constrained") else text
    shown = f"critical: {readings}" if head == "critical" else readings
    if width and len(shown) <= width:
        return shown
    return f"{constraint_kind(text)} · {readings}"


def cpu_text(worker: WorkerRow) -> str:
    """``' 42% 61°C'``: its CPU utilisation and temperature, a dash where not reported."""
    tele = worker.telemetry
    if tele is None:
        return DASH
    temp = tele.cpu_temperature_c
    return f"{tele.cpu_percent:3.0f}% " + (f"{temp:.0f}°C" if temp is not None else DASH)


# The workers table's cells, in order (``tui.widgets.WORKER_COLUMNS`` labels them).
WORKER_KEYS = (
    "name",
    "gpus",
    "role",
    "state",
    "limit",
    "seen",
    "holding",
    "model",
    "temp",
    "vram",
    "power",
    "util",
    "cpu",
    "tok_s",
    "history",
    "host",
    "endpoint",
)


def worker_cells(
    worker: WorkerRow,
    now: float,
    spark_width: int = 20,
    top: float | None = None,
    live: bool = True,
    *,
    merge_limit: bool = False,
    widths: Mapping[str, int] | None = None,
) -> list[Text]:
    """The row's cells in ``WORKER_KEYS`` order. ``merge_limit``: the table shows no
    LIMIT column, so a constrained worker's state says the kind of limit instead;
    ``widths``: the columns' widths by key, which the task ids it holds and the
    VRAM figures are fitted to."""
    widths = widths or {}
    state = worker.shown_state
    silent = worker.silent(now) and worker.last_heartbeat > 0
    state_text = styled(state, WORKER_STYLES.get(state, ""))
    if silent:
        state_text = styled(f"{state}?", "dim " + WORKER_STYLES.get(state, ""))
    if state == "constrained" and worker.constraint and merge_limit:
        state_text = styled(constraint_kind(worker.constraint), WORKER_STYLES[state])
        state_text.append(" !", "bold magenta")  # no LIMIT column: the state says which
    gpus = ",".join(str(g) for g in worker.gpus) or DASH
    model = f"→{worker.loading}" if worker.loading else worker.model or DASH
    model = model.rsplit("/", 1)[-1]
    figures = gpu_figures(worker)
    vram_width = widths.get("vram", 16)
    if figures is None:
        temp = styled(DASH, "dim")
        missing = "no GPU telemetry" if vram_width >= 16 else "no GPU"
        vram = styled(missing if worker.telemetry is not None else DASH, "dim")
        power = util = styled(DASH, "dim")
    else:
        temp_s, vram, power_s, util_s = figures
        if vram.cell_len > vram_width:
            vram = styled(vram.plain.split(" ", 1)[0])  # the figures without the bar
        temp, power, util = styled(temp_s), styled(power_s), styled(util_s)
        reading = max((g.temperature_c or 0 for g in worker.telemetry.gpus), default=0)
        if reading >= 83:
            temp.stylize("bold red")
        elif reading >= 75:
            temp.stylize("yellow")
    down = state in ("down", "given up")
    unseen = down or not live  # no rate it cannot see: the worker's, or the monitor's link
    rate = styled(DASH if unseen else f"{worker.tok_s:5.1f}", "dim" if unseen else "bold")
    spark = styled(sparkline(worker.history, spark_width, top), "dim" if down else "cyan")
    holding = holding_text(worker.holding(), widths.get("holding", 16))
    limit = limit_text(worker.constraint, widths.get("limit", 16))
    cells = {
        "name": styled(worker.name, "bold"),
        "gpus": styled(gpus),
        "role": styled(worker.role or DASH),
        "state": state_text,
        "limit": styled(limit or DASH, "magenta" if limit else "dim"),
        "seen": heartbeat_age(worker, now, live),
        "holding": styled(holding, "yellow" if worker.active else "dim"),
        "model": styled(model),
        "temp": temp,
        "vram": vram,
        "power": power,
        "util": util,
        "cpu": styled(cpu_text(worker), "" if worker.telemetry is not None else "dim"),
        "tok_s": rate,
        "history": spark,
        "host": styled(worker.host or DASH, "" if worker.host else "dim"),
        "endpoint": styled(worker.endpoint or DASH, "" if worker.endpoint else "dim"),
    }
    return [cells[key] for key in WORKER_KEYS]


# --- batches and tasks -------------------------------------------------------------------


def worker_detail(worker: WorkerRow) -> str:
    """A line about the selected worker: why llmo up gave up on it (and the key that
    restarts it), else where its OpenAI-compatible endpoint listens."""
    if worker.given_up:
        return f"{worker.name} · given up (x restarts it): {worker.given_up}"
    if not worker.endpoint:
        return ""
    return f"{worker.name} · endpoint {worker.endpoint} (on its host)"


def batch_cells(batch: BatchRow, now: float, bar_width: int = 20) -> list[Text]:
    done, running, bad, rest = batch.split()
    total = done + running + bad + rest
    state = batch.state
    bar = progress(batch, bar_width)
    bar.append(f" {done}/{total}")
    eta = batch.eta(now)
    return [
        styled(batch.id, "bold"),
        styled(batch.plan or DASH),
        styled(batch.priority_name or DASH),
        styled(state, BATCH_STYLES.get(state, "")),
        bar,
        styled(str(running) if running else DASH, "yellow" if running else "dim"),
        failed_cell(batch),
        styled(duration(batch.elapsed(now))),
        styled(f"~{duration(eta)}" if eta is not None else DASH, "" if eta else "dim"),
    ]


def failed_cell(batch: BatchRow) -> Text:
    """``3✗ 1⊘``: tasks failed (or skipped after a failure), then cancelled, apart."""
    c = batch.counts
    failed = sum(max(0, c.get(s, 0)) for s in ("failed", "skipped"))
    cancelled = max(0, c.get("cancelled", 0))
    if not failed and not cancelled:
        return styled(DASH, "dim")
    out = Text(no_wrap=True, overflow="ellipsis")
    if failed:
        out.append(f"{failed}✗", "bold red")
    if cancelled:
        out.append(" " if failed else "")
        out.append(f"{cancelled}⊘", "magenta")
    return out


TASK_COLUMNS: Sequence[tuple[str, int]] = (
    ("TASK", 24),
    ("CLASS", 6),
    ("STATE", 9),
    ("WORKER", 9),
    ("ATT", 3),
    ("TIME", 6),
    ("TOK/S", 5),
)


TASK_WIDTH_MAX = 32  # past this the TASK column stops growing: the reason gets the room
REASON_MAX = 80  # characters of a reason when the line's width is not given


def middle_ellipsis(text: str, width: int) -> str:
    """``text`` in ``width`` cells, cut in the middle so both ends stay:
    ``summarise_item-00042`` in 15 is ``summ…item-00042`` (a foreach item's
    distinguishing part is its end). The tail keeps the larger share."""
    if len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    head = (width - 1) // 3
    tail = width - 1 - head
    return text[:head] + "…" + text[len(text) - tail :]


def task_line(
    row: TaskRow,
    now: float,
    task_width: int = TASK_COLUMNS[0][1],
    line_width: int | None = None,
) -> Text:
    """One row of the task table, fixed columns, then the reason (the last error),
    if any, in what is left of ``line_width`` (else its first ``REASON_MAX``)."""
    rate = row.rate(now)
    cells = (
        (middle_ellipsis(row.id, task_width), ""),
        (row.task_class or DASH, "dim"),
        (row.state, TASK_STYLES.get(row.state, "")),
        (row.worker or DASH, ""),
        (str(row.attempts) if row.attempts else DASH, "bold red" if row.attempts > 1 else ""),
        (duration(row.duration(now)), ""),
        (f"{rate:.1f}" if rate is not None else DASH, ""),
    )
    out = Text(no_wrap=True)
    widths = [task_width, *(w for _, w in TASK_COLUMNS[1:])]
    for (text, style), width in zip(cells, widths, strict=True):
        clipped = text if len(text) <= width else text[: width - 1] + "…"
        out.append(clipped.ljust(width), style)
        out.append(" ")
    reason = row.error.strip().splitlines()[-1] if row.error.strip() else ""
    if reason and row.state in ("failed", "delayed"):
        room = REASON_MAX if line_width is None else max(0, line_width - out.cell_len)
        if len(reason) > room:
            reason = reason[: max(0, room - 1)] + "…" if room else ""
        out.append(reason, "red")
    return out


def task_header(task_width: int = TASK_COLUMNS[0][1], mark: tuple[int, bool] | None = None) -> Text:
    """The task table's header; ``mark`` (column index, reversed) flags the sort column."""
    out = Text(no_wrap=True, style="bold")
    for i, (name, width) in enumerate(TASK_COLUMNS):
        label = name
        if mark is not None and mark[0] == i:
            label += "▼" if mark[1] else "▲"
        out.append(label.ljust(task_width if i == 0 else width) + " ")
    out.append("REASON")
    return out


def task_width(total: int) -> int:
    """The TASK column's width when the table is ``total`` cells wide: what is left,
    up to ``TASK_WIDTH_MAX`` (the reason after the fixed columns takes the rest)."""
    rest = sum(w + 1 for _, w in TASK_COLUMNS[1:]) + 1
    return max(TASK_COLUMNS[0][1] - 8, min(TASK_WIDTH_MAX, total - rest))


def event_line(line: EventLine) -> Text:
    out = Text(no_wrap=True)
    out.append(clock(line.ts) + " ", "dim")
    out.append(line.text, LEVEL_STYLES.get(line.level, ""))
    return out
