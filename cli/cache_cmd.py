"""``llmo cache``: the rig's result cache of deterministic completions (``worker.cache``).

``llmo cache stats [--json]`` prints the entries, bytes and lookups (hits and
misses) in all and per model; ``llmo cache clear [--model NAME]`` removes the
stored results (of one model, by the name requests used). The cache is found
as the workers find it: ``--cache-dir``, else ``[cache] dir`` of ``--config``,
else ``<rig folder>/cache`` (``--rig-dir``, ``[paths] rig_dir``, ``./rig``).
Safe while workers run: they share the database with this command.

Exit status: 0 done; 1 ``--model`` names a model with no results; 2 a bad
config file or a cache that cannot be opened.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["stats", "clear"], help="what to do")
    parser.add_argument("--model", help="clear: only the results of this model")
    parser.add_argument("--json", action="store_true", help="stats: print them as JSON")
    parser.add_argument("--rig-dir", help="the rig folder (default: [paths] rig_dir, ./rig)")
    parser.add_argument("--config", help="llmo.toml with [paths] rig_dir and [cache]")
    parser.add_argument("--cache-dir", help="the cache folder itself (overrides the rest)")


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KB", "MB", "GB"):
        size /= 1024
        if size < 1024 or unit == "GB":
            break
    return f"{size:.1f} {unit}"


def run(args: argparse.Namespace) -> int:
    from llmo.cli.config import ConfigError, RigConfig, cache_dir, load

    try:
        rig = load(args.config) if args.config else RigConfig()
    except ConfigError as exc:
        print(f"llmo cache: {exc}", file=sys.stderr)
        return 2
    if args.model and args.action != "clear":
        print("llmo cache: --model goes with clear", file=sys.stderr)
        return 2
    folder = os.path.abspath(args.cache_dir) if args.cache_dir else cache_dir(rig, args.rig_dir)
    from llmo.worker.cache import DB_NAME, DEFAULT_MAX_MB, ResultCache

    if not os.path.exists(os.path.join(folder, DB_NAME)):
        if args.json and args.action == "stats":
            print(json.dumps({"path": os.path.join(folder, DB_NAME), "entries": 0, "bytes": 0}))
        else:
            print(f"llmo cache: no result cache in {folder} yet (nothing stored)")
        return 0
    try:
        mb = rig.cache_mb if rig.cache_mb is not None else DEFAULT_MAX_MB
        cache = ResultCache(folder, max_bytes=mb * 1024 * 1024)
    except Exception as exc:
        print(f"llmo cache: cannot open the cache in {folder}: {exc}", file=sys.stderr)
        return 2
    try:
        stats = cache.stats()
        if args.action == "clear":
            if args.model and args.model not in stats["models"]:
                known = ", ".join(sorted(stats["models"])) or "none"
                print(
                    f"llmo cache: no results of model {args.model!r} in {folder} (models: {known})",
                    file=sys.stderr,
                )
                return 1
            gone = cache.clear(args.model)
            what = f"of {args.model} " if args.model else ""
            print(f"llmo cache: removed {gone} results {what}from {cache.path}")
            return 0
        if args.json:
            print(json.dumps(stats, indent=2))
            return 0
        print(f"{cache.path}")
        print(
            f"  {stats['entries']} results, {_size(stats['bytes'])} of {_size(cache.max_bytes)}; "
            f"{stats['hits']} hits, {stats['misses']} misses"
        )
        for model, row in sorted(stats["models"].items()):
            print(
                f"  {model or '(no model name)'}: {row['entries']} results, "
                f"{_size(row['bytes'])}; {row['hits']} hits, {row['misses']} misses"
            )
        return 0
    finally:
        cache.close()
