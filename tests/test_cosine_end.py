"""The cosine schedule's end moved (issue 13: it now reaches min_lr after the last epoch). Records made before keep
their keys and read back with the old behaviour; new cosine runs get new keys, so a sweep never reuses an old-schedule
record as a new one; other schedules are unaffected (their keys stay)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.config import RunConfig
from benchmarks.training.schedule import Schedule

RECORDS = Path(__file__).resolve().parents[1] / "results"


def _committed(schedule: str) -> dict:
    for path in sorted(RECORDS.glob("*/runs/*.json")):
        record = json.loads(path.read_text())
        if record.get("config", {}).get("schedule") == schedule and "cosine_end" not in record["config"]:
            return record
    pytest.skip(f"no committed {schedule} record")


def test_old_cosine_records_keep_their_key_and_the_old_schedule() -> None:
    record = _committed("cosine")
    config = RunConfig.from_dict(record["config"])
    assert config.cosine_end == "last_epoch" and config.key() == record["key"]
    new = RunConfig.from_dict({**record["config"], "cosine_end": "after_last"})
    assert new.key() != record["key"]
    assert RunConfig(dataset="breastmnist", method="lora_c").cosine_end == "after_last"


def test_other_schedules_keep_their_keys() -> None:
    record = _committed("step")
    assert RunConfig.from_dict({**record["config"], "cosine_end": "after_last"}).key() == record["key"]


def test_both_cosine_ends() -> None:
    new = Schedule("cosine", 1.0, 1.0, 4, 0.0)
    old = Schedule("cosine", 1.0, 1.0, 4, 0.0, cosine_end="last_epoch")
    assert [old.lrs(e)["body"] for e in range(4)] == pytest.approx([1.0, 0.75, 0.25, 0.0])
    assert new.lrs(3)["body"] > 0 and new.lrs(0)["body"] == 1.0
    assert [new.lrs(e)["body"] for e in range(4)] == pytest.approx([1.0, 0.8535534, 0.5, 0.1464466])
