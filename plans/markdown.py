"""The plan.md grammar: markdown text in, a raw document of located fields out.

Theory of operation
-------------------
A plan is read line by line, once, by a small state machine. It knows only
the markdown shapes the format uses:

* ``# Plan: <name>`` gives the plan's name (the first level-1 heading);
* ``## <section>`` opens a section; its text is kept verbatim for display;
* inside ``## Tasks``, ``### <id>`` opens a task block;
* inside a task block or ``## Goal``, ``- **field**: value`` (also written
  ``- **field:** value``) is a field; indented bullets under a field add
  values to it, so a long ``requires`` list may be written one per line.

Fenced code blocks (```` ``` ```` and ``~~~``) and HTML comments are opaque:
a ``# comment`` in a bash example under ``## Available Scripts`` is not a
heading, and a commented-out task does not run. Every field keeps its line
number so that the validator can point at it. Values are not interpreted
here; ``plans.parser`` gives them meaning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from llmo.plans.model import Problem

_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
# - **name**: value   or   - **name:** value
_FIELD = re.compile(r"^ {0,3}[-*+][ \t]+\*\*([^*]+?)\*\*[ \t]*(.*)$")
_SUB_BULLET = re.compile(r"^(?: {2,}|\t)[ \t]*[-*+][ \t]+(.*)$")
_BULLET = re.compile(r"^ {0,3}[-*+][ \t]+\S")
_TITLE = re.compile(r"^plan[ \t]*:[ \t]*(.*)$", re.IGNORECASE)


@dataclass(slots=True)
class RawField:
    """``- **name**: value`` as written: name lower-cased, value stripped."""

    name: str
    value: str
    line: int
    extra: list[str] = field(default_factory=list)  # values of indented sub-bullets


@dataclass(slots=True)
class RawBlock:
    """A task (``### id``) or the goal (``## Goal``) with its fields in order."""

    title: str
    line: int
    fields: list[RawField] = field(default_factory=list)
    is_goal: bool = False

    @property
    def task(self) -> str:
        """The task id to name in problems ('' for the goal)."""
        return "" if self.is_goal else self.title


@dataclass(slots=True)
class RawDoc:
    title: str | None = None
    title_line: int = 0
    sections: dict[str, str] = field(default_factory=dict)
    section_lines: dict[str, int] = field(default_factory=dict)
    tasks: list[RawBlock] = field(default_factory=list)
    goal: RawBlock | None = None
    has_tasks: bool = False


def parse_markdown(text: str, file: str = "plan.md") -> tuple[RawDoc, list[Problem]]:
    """Split plan.md text into sections, task blocks and goal fields."""
    doc = RawDoc()
    problems: list[Problem] = []

    def warn(line: int, task: str, message: str) -> None:
        problems.append(Problem(file, line, task, message, "warning"))

    section: str | None = None  # current level-2 section name
    section_body: list[str] = []
    block: RawBlock | None = None  # the task or goal that receives fields
    last_field: RawField | None = None
    fence: str | None = None
    in_comment = False

    def close_section() -> None:
        if section is not None:
            doc.sections[section] = "\n".join(section_body).strip("\n")

    text = text.removeprefix("\ufeff")  # a byte-order mark left by some editors
    for number, line in enumerate(text.splitlines(), start=1):
        # Opaque regions first: fenced code, then HTML comments.
        if fence is not None:
            section_body.append(line)
            stripped = line.strip()
            if stripped.startswith(fence) and stripped.strip(fence[0]) == "":
                fence = None
            continue
        if in_comment:
            section_body.append(line)
            if "-->" in line:
                in_comment = False
            continue
        fence_match = _FENCE.match(line)
        if fence_match:
            fence = fence_match.group(1)
            section_body.append(line)
            last_field = None
            continue
        if "<!--" in line and "-->" not in line.split("<!--", 1)[1]:
            in_comment = True
            section_body.append(line)
            continue

        heading = _HEADING.match(line)
        if heading:
            level, title = len(heading.group(1)), heading.group(2).strip()
            last_field = None
            if level == 1:
                title_match = _TITLE.match(title)
                if doc.title is None and title_match:
                    doc.title = title_match.group(1).strip()
                    doc.title_line = number
                    continue
                if section is not None:
                    section_body.append(line)
                continue
            if level == 2:
                close_section()
                section, section_body, block = title, [], None
                if title in doc.sections:
                    warn(number, "", f"section '## {title}' appears twice; its parts are joined")
                    section_body = [doc.sections[title]]
                doc.section_lines.setdefault(title, number)
                kind = title.lower()
                if kind == "tasks":
                    doc.has_tasks = True
                elif kind == "goal":
                    if doc.goal is None:
                        doc.goal = RawBlock("Goal", number, is_goal=True)
                    block = doc.goal
                continue
            section_body.append(line)
            if level == 3 and section is not None and section.lower() == "tasks":
                block = RawBlock(title.strip("`").strip(), number)
                doc.tasks.append(block)
            continue

        if section is not None:
            section_body.append(line)
        if block is None:
            continue
        field_match = _FIELD.match(line)
        if field_match:
            name, rest = field_match.group(1).strip(), field_match.group(2)
            if name.endswith(":"):
                name, value = name[:-1].strip(), rest.strip()
            elif rest.startswith(":"):
                value = rest[1:].strip()
            else:
                warn(number, block.task, f"'{line.strip()}' has no ':' after the field name")
                last_field = None
                continue
            last_field = RawField(name.lower(), value, number)
            block.fields.append(last_field)
            continue
        sub = _SUB_BULLET.match(line)
        if sub and last_field is not None:
            last_field.extra.append(sub.group(1).strip())
            continue
        if _BULLET.match(line):
            warn(
                number,
                block.task,
                f"'{line.strip()}' is not a field; write fields as '- **name**: value'",
            )
            last_field = None
        elif line.strip():
            last_field = None
    close_section()
    return doc, problems
