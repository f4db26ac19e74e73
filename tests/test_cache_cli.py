"""``llmo cache stats|clear`` on a rig folder's result cache."""

from __future__ import annotations

import json

import pytest

from llmo.cli.main import main
from llmo.worker.batching import Done
from llmo.worker.cache import ResultCache

pytestmark = pytest.mark.timeout(30)


def fill(folder) -> None:
    cache = ResultCache(str(folder))
    done = Done(
        text="Paris", finish_reason="stop", prompt_tokens=5, completion_tokens=1, cached_tokens=0
    )
    cache.put("a", done, model="gemma")
    cache.put("b", done, model="gemma")
    cache.put("c", done, model="qwen")
    cache.get("a", "gemma")
    cache.get("zz", "gemma")
    cache.close()


def test_stats_and_clear_by_model_in_the_rig_folder(tmp_path, capsys):
    fill(tmp_path / "rig" / "cache")
    rig = str(tmp_path / "rig")
    assert main(["cache", "stats", "--rig-dir", rig, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["entries"] == 3 and stats["hits"] == 1 and stats["misses"] == 1
    assert stats["models"]["gemma"]["entries"] == 2

    assert main(["cache", "stats", "--rig-dir", rig]) == 0
    text = capsys.readouterr().out
    assert "3 results" in text and "gemma: 2 results" in text and "1 hits, 1 misses" in text

    assert main(["cache", "clear", "--rig-dir", rig, "--model", "nope"]) == 1
    assert "no results of model 'nope'" in capsys.readouterr().err
    assert main(["cache", "clear", "--rig-dir", rig, "--model", "gemma"]) == 0
    assert "removed 2 results of gemma" in capsys.readouterr().out
    assert main(["cache", "clear", "--rig-dir", rig]) == 0
    assert "removed 1 results" in capsys.readouterr().out


def test_the_config_names_the_cache_folder(tmp_path, capsys):
    fill(tmp_path / "elsewhere")
    config = tmp_path / "llmo.toml"
    config.write_text(f'[cache]\ndir = "{tmp_path / "elsewhere"}"\nmax_mb = 1\n')
    assert main(["cache", "stats", "--config", str(config), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["entries"] == 3 and stats["max_bytes"] == 1024 * 1024


def test_a_rig_without_a_cache_yet_and_bad_input(tmp_path, capsys):
    assert main(["cache", "stats", "--rig-dir", str(tmp_path)]) == 0
    assert "no result cache in" in capsys.readouterr().out
    assert not (tmp_path / "cache").exists()  # looking creates nothing
    config = tmp_path / "bad.toml"
    config.write_text("[cache]\nmax_mb = -1\n")
    assert main(["cache", "stats", "--config", str(config)]) == 2
    assert "[cache] max_mb: must be 0 (no cache) or more" in capsys.readouterr().err
    assert main(["cache", "stats", "--model", "x", "--rig-dir", str(tmp_path)]) == 2
