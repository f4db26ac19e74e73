"""``llmo cancel | drain | load | unload``: one request to the brain, its answer shown.

Each is confirmed by the brain with an ``Ack``; a refusal (unknown batch or
worker, a batch already finished) is printed with exit code 1.
"""

from __future__ import annotations

import argparse

from llmo.cli.common import add_endpoint_flags
from llmo.cli.tools import add_tool_flags, fail, open_session
from llmo.proto.messages import BRAIN, BatchCancel, ModelLoad, ModelUnload, WorkerDrain
from llmo.proto.session import ToolError


def _configure(parser: argparse.ArgumentParser) -> None:
    add_endpoint_flags(parser)
    add_tool_flags(parser)


def _send(args: argparse.Namespace, command: str, msg) -> int:
    session = open_session(args, command)
    try:
        detail = session.control(msg)
    except ToolError as exc:
        return fail(command, exc)
    finally:
        session.close()
    print(detail or "ok")
    return 0


class Cancel:
    @staticmethod
    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("batch", help="the batch id, as printed by llmo submit")
        parser.add_argument("--reason", default="cancelled by the operator")
        _configure(parser)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        return _send(
            args, "cancel", BatchCancel(dst=BRAIN, batch_id=args.batch, reason=args.reason)
        )


class Drain:
    @staticmethod
    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("worker", help="the worker's name, e.g. gpu-1")
        parser.add_argument(
            "--undo", action="store_true", help="return a drained worker to service"
        )
        _configure(parser)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        return _send(args, "drain", WorkerDrain(dst=BRAIN, worker=args.worker, drain=not args.undo))


class Load:
    @staticmethod
    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("worker", help="the worker's name, e.g. gpu-1")
        parser.add_argument("model", help="path of the GGUF model on the worker's machine")
        _configure(parser)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        return _send(args, "load", ModelLoad(dst=BRAIN, worker=args.worker, model=args.model))


class Unload:
    @staticmethod
    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("worker", help="the worker's name, e.g. gpu-1")
        _configure(parser)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        msg = ModelUnload(dst=BRAIN, worker=args.worker, reason="asked by the operator")
        return _send(args, "unload", msg)
