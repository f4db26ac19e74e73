"""The result cache: keys, LRU by bytes, corruption, several processes, the model hash."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sqlite3

import pytest

from llmo.worker.batching import Done, Request
from llmo.worker.cache import (
    DB_NAME,
    ResultCache,
    cacheable,
    check_policy,
    key_for,
    request_params,
)
from llmo.worker.sampling import SamplingParams

pytestmark = pytest.mark.timeout(60)

PROMPT = [2, 651, 6037, 576, 6081, 603]
BASE = Request(
    prompt=PROMPT,
    sampling=SamplingParams(temperature=0.0),
    stop=("\n",),
    max_tokens=32,
)


def done(text: str = "Paris", tokens: int = 1) -> Done:
    return Done(
        text=text, finish_reason="stop", prompt_tokens=6, completion_tokens=tokens, cached_tokens=0
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


# Every field that decides the text, changed one at a time.
CHANGES: dict[str, dict] = {
    "temperature": {"sampling": SamplingParams(temperature=0.5)},
    "top_p": {"sampling": SamplingParams(temperature=0.0, top_p=0.5)},
    "top_k": {"sampling": SamplingParams(temperature=0.0, top_k=7)},
    "min_p": {"sampling": SamplingParams(temperature=0.0, min_p=0.2)},
    "typical_p": {"sampling": SamplingParams(temperature=0.0, typical_p=0.9)},
    "repeat_penalty": {"sampling": SamplingParams(temperature=0.0, repeat_penalty=1.1)},
    "presence_penalty": {"sampling": SamplingParams(temperature=0.0, presence_penalty=0.5)},
    "frequency_penalty": {"sampling": SamplingParams(temperature=0.0, frequency_penalty=0.5)},
    "seed": {"sampling": SamplingParams(temperature=0.0, seed=7)},
    "logit_bias": {"sampling": SamplingParams(temperature=0.0, logit_bias=((1, -100.0),))},
    "stop": {"stop": ("\n", "END")},
    "max_tokens": {"max_tokens": 33},
    "prompt": {"prompt": [*PROMPT, 1]},
}


def key(request: Request, model_hash: str = "sha256:aa") -> str:
    return key_for(model_hash, request.prompt, request_params(request))


def test_the_key_covers_the_model_the_prompt_and_every_sampling_field():
    base = key(BASE)
    assert key(dataclasses.replace(BASE)) == base  # the same request: the same key
    keys = {"base": base, "model": key(BASE, "sha256:bb")}
    for name, change in CHANGES.items():
        keys[name] = key(dataclasses.replace(BASE, **change))
    assert len(set(keys.values())) == len(keys), keys
    # every field of SamplingParams is in the key, so a new field cannot be forgotten
    covered = {n for n, c in CHANGES.items() if "sampling" in c}
    assert covered == {f.name for f in dataclasses.fields(SamplingParams)}
    print(f"key: {len(keys)} variants, all distinct")


def test_policy_decides_what_is_cached():
    greedy, seeded = BASE, dataclasses.replace(BASE, sampling=SamplingParams(seed=3))
    free = dataclasses.replace(BASE, sampling=SamplingParams())
    assert cacheable("auto", greedy) and not cacheable("auto", seeded)
    assert cacheable("seeded", greedy) and cacheable("seeded", seeded)
    assert not any(cacheable(p, free) for p in ("auto", "seeded", "off"))
    assert not cacheable("off", greedy)
    assert check_policy(None) == "auto" and check_policy(" Seeded ") == "seeded"
    with pytest.raises(ValueError, match="LLM_CACHE is 'sometimes'; expected one of auto"):
        check_policy("sometimes")


def test_a_stored_result_survives_a_restart(tmp_path):
    cache = ResultCache(str(tmp_path))
    assert cache.get("k1", "m") is None
    assert cache.put("k1", done(), model="m", model_hash="sha256:aa")
    cache.close()
    again = ResultCache(str(tmp_path))
    assert again.get("k1", "m") == done()
    stats = again.stats()
    assert stats["entries"] == 1 and stats["hits"] == 1 and stats["misses"] == 1
    assert stats["models"]["m"]["entries"] == 1


def test_eviction_is_least_recently_used_by_bytes(tmp_path):
    text = "x" * 900
    probe = ResultCache(str(tmp_path / "probe"))
    probe.put("k0", done(text))
    one = probe.stats()["bytes"]
    cache = ResultCache(str(tmp_path / "c"), max_bytes=3 * one + one // 2, clock=Clock())
    for k in ("k0", "k1", "k2"):
        assert cache.put(k, done(text), model="m")
    assert cache.get("k0", "m") is not None  # k0 is now the most recently used
    cache.put("k3", done(text), model="m")  # over the bound: the least recently used goes
    assert cache.get("k1", "m") is None
    assert all(cache.get(k, "m") is not None for k in ("k0", "k2", "k3"))
    stats = cache.stats()
    assert stats["entries"] == 3 and stats["bytes"] <= cache.max_bytes
    # a result larger than the whole cache is not stored, and evicts nothing
    assert not cache.put("huge", done("y" * (4 * one)), model="m")
    assert cache.stats()["entries"] == 3


def test_clear_all_or_one_model(tmp_path):
    cache = ResultCache(str(tmp_path))
    cache.put("a", done(), model="gemma")
    cache.put("b", done(), model="qwen")
    assert cache.clear("gemma") == 1
    assert set(cache.stats()["models"]) == {"qwen"}
    assert cache.clear() == 1
    assert cache.stats()["entries"] == 0


def test_a_corrupt_database_is_moved_aside_and_a_fresh_one_started(tmp_path, caplog):
    (tmp_path / DB_NAME).write_bytes(b"this is not a database" * 300)
    cache = ResultCache(str(tmp_path))
    assert cache.get("k", "m") is None
    assert cache.put("k", done(), model="m")
    assert cache.get("k", "m") == done()
    aside = [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert aside and aside[0].startswith(DB_NAME)
    assert "cannot be read" in caplog.text and "started a fresh one" in caplog.text


def test_a_database_with_a_damaged_header_reads_as_a_miss_then_recovers(tmp_path, caplog):
    cache = ResultCache(str(tmp_path))
    cache.put("k", done(), model="m")
    cache.close()
    path = tmp_path / DB_NAME
    # the WAL holds the pages; checkpoint so the file itself has them, then damage it
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = bytearray(path.read_bytes())
    data[0:100] = os.urandom(100)  # the header
    path.write_bytes(bytes(data))
    cache = ResultCache(str(tmp_path))
    assert cache.get("k", "m") is None  # lost, but the lookup is answered
    assert cache.put("k", done(), model="m") and cache.get("k", "m") == done()


def _writer(directory: str, name: str, n: int) -> None:
    cache = ResultCache(directory)
    for i in range(n):
        assert cache.put(f"{name}-{i}", done(f"{name} {i}"), model=name)
        assert cache.get(f"{name}-{i}", name) is not None


def test_two_processes_write_one_cache_at_once(tmp_path):
    ResultCache(str(tmp_path)).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), f"p{k}", 150)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(50)
    assert [p.exitcode for p in procs] == [0, 0]
    cache = ResultCache(str(tmp_path))
    stats = cache.stats()
    assert stats["entries"] == 300 and stats["hits"] == 300
    assert {m: s["entries"] for m, s in stats["models"].items()} == {"p0": 150, "p1": 150}
    assert cache.get("p0-149", "p0") == done("p0 149")
    print(f"concurrent writers: 2 processes, {stats['entries']} entries, none lost")


def test_the_model_hash_is_remembered_by_path_size_and_mtime(tmp_path, monkeypatch):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"\1" * 1000)
    cache = ResultCache(str(tmp_path / "cache"))
    first = cache.model_hash(str(model))
    assert first.startswith("sha256:")
    reads = []
    import llmo.worker.cache as module

    real = module.file_sha256
    monkeypatch.setattr(module, "file_sha256", lambda p: reads.append(p) or real(p))
    assert ResultCache(str(tmp_path / "cache")).model_hash(str(model)) == first
    assert reads == []  # a restart does not read the file again
    model.write_bytes(b"GGUF" + b"\2" * 1000)
    assert cache.model_hash(str(model)) != first
    assert len(reads) == 1
