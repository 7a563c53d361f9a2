"""benchmarks.records: the typed run record, its format version, the migrations of older records, the one reader.

The committed records under results/ are the real cases: every one must read, come back unchanged from the typed
form, and be rewritten byte for byte except for the added ``record_format``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

import petl
from benchmarks import report, status
from benchmarks.config import RunConfig
from benchmarks.records import (ABSENT, RECORD_FORMAT, RunRecord, RunStatus, StoreError, load_record, migrate,
                                read_record)
from benchmarks.store import RunStore, atomic_write_json

RESULTS = Path(__file__).resolve().parents[1] / "results"
COMMITTED = sorted(RESULTS.glob("*/runs/*.json"))


def test_committed_records_exist_in_every_format() -> None:
    """The folders the round-trip tests read: the newest records (with an adapter, memory format and machine load)
    and format-1 ones that predate ``runtime.precision`` (medmnist-v2, one offline-cpu run)."""
    folders = {p.parents[1].name for p in COMMITTED}
    assert {"offline-cpu", "medmnist-v2", "explain-breastmnist", "offline-cpu-grid", "sweep-efficiency"} <= folders
    assert sum(json.loads(p.read_text()).get("record_format") == RECORD_FORMAT for p in COMMITTED) >= 16
    raws = [json.loads(p.read_text()) for p in COMMITTED]
    assert sum("precision" not in r["runtime"] for r in raws) == 5
    assert sum("adapter" in r for r in raws) >= 60


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: f"{p.parents[1].name}/{p.stem[:40]}")
def test_committed_record_round_trips_and_migrates(path: Path) -> None:
    raw = json.loads(path.read_text())
    assert RunRecord.from_dict(raw).to_dict() == raw                  # typed form loses and adds nothing
    migrated = migrate(raw)
    assert RunRecord.from_dict(migrated).to_dict() == migrated
    changed = {k for k in migrated if migrated[k] != raw.get(k, ABSENT)}
    assert migrated["record_format"] == RECORD_FORMAT
    if raw.get("record_format") == RECORD_FORMAT:       # written by this code's store: nothing to migrate
        assert migrated == raw and migrated is not raw
    elif "precision" in raw["runtime"]:
        assert "record_format" not in raw                                             # migrate copies
        assert changed == {"record_format"}
    else:                                    # format 1 CPU run: fp32, exactly what the report assumed for it
        assert changed == {"record_format", "runtime"}
        assert migrated["runtime"] == {**raw["runtime"], "precision": "fp32"}
    record = read_record(path)
    assert record.status is RunStatus.OK and record.ok and record.key == raw["key"]
    assert record.config == raw["config"] and not record.extra
    assert report.run_setting(load_record(path)) == "cpu fp32"     # what the report called them before


def test_rewritten_committed_record_is_byte_identical_but_for_record_format(tmp_path: Path) -> None:
    """The runner's dict written through RunRecord: the old writer's bytes with one line added."""
    grid = [p for p in COMMITTED if p.parents[1].name == "offline-cpu-grid"]
    for path in (COMMITTED[0], *grid[:3]):
        raw = json.loads(path.read_text())
        written = RunStore(tmp_path).write(raw)
        lines = written.read_text().splitlines(keepends=True)
        assert f' "record_format": {RECORD_FORMAT},\n' in lines
        assert "".join(line for line in lines if not line.startswith(' "record_format"')) == path.read_text()


def test_typed_record_written_by_the_store_and_unknown_keys_kept(tmp_path: Path) -> None:
    config = RunConfig(method="lora_c", dataset="breastmnist", seed=1)
    store = RunStore(tmp_path)
    rec = RunRecord(status=RunStatus.FAILED, key=config.key(), run_name=config.run_name, config=config.to_dict(),
                    reason="RuntimeError: out of memory", params=None, extra={"written_by_a_newer_runner": [1, 2]})
    path = store.write(rec)
    text = json.loads(path.read_text())
    assert text == {"status": "failed", "key": config.key(), "run_name": config.run_name, "config": config.to_dict(),
                    "reason": "RuntimeError: out of memory", "params": None, "record_format": RECORD_FORMAT,
                    "written_by_a_newer_runner": [1, 2]}        # params None is written; absent fields are not
    back = read_record(path)
    assert back.extra == {"written_by_a_newer_runner": [1, 2]} and back.params is None and back.metrics is ABSENT
    assert store.status(config) is RunStatus.FAILED and store.status(config) == "failed"
    assert store.should_run(config, retry_failed=False) is False and store.should_run(config, retry_failed=True)
    assert json.dumps(RunStatus.INTERRUPTED) == '"interrupted"' and f"{RunStatus.OK}" == "ok"


# ------------------------------------------------------------------------------------------------ migrations
def test_format_1_cpu_record_gets_fp32_and_nothing_else() -> None:
    old = {"status": "ok", "runtime": {"device": "cpu", "pid": 3}, "metrics": {"test": {"auc": 0.8}}}
    new = migrate(old)
    assert new == {**old, "runtime": {"device": "cpu", "pid": 3, "precision": "fp32"}, "record_format": 2}
    assert old["runtime"] == {"device": "cpu", "pid": 3}                 # the input is not changed
    # the device may be recorded only where the engine measured it (hand-made / early records)
    assert migrate({"status": "ok", "efficiency": {"device": "cpu"}})["runtime"] == {"precision": "fp32"}
    assert migrate({"status": "ok", "runtime": {"device": "cuda:0"}})["runtime"] == {"device": "cuda:0"}
    assert report.run_setting(migrate({"status": "ok", "runtime": {"device": "cuda:0"}})) == \
        "cuda precision unrecorded"
    recorded = {"status": "ok", "runtime": {"device": "cuda", "precision": "bfloat16-autocast"}}
    assert migrate(recorded) == {**recorded, "record_format": 2}


def test_format_2_record_is_left_as_it_is() -> None:
    current = {"status": "ok", "record_format": 2, "runtime": {"device": "cpu"}}   # precision absent: not patched
    assert migrate(current) == current


def test_format_1_record_with_nan_tokens_reads_them_as_floats(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text('{"status": "ok", "metrics": {"test": {"auc": NaN, "loss": Infinity}}}')
    record = read_record(path)
    assert math.isnan(record.metrics["test"]["auc"]) and record.metrics["test"]["loss"] == math.inf
    assert record.record_format == RECORD_FORMAT


@pytest.mark.parametrize("version, fragment", [(3, "newer than this code reads (2); update petl"),
                                               ("2", "not a format number"), (0, "not a format number")])
def test_unknown_record_format_is_one_line(tmp_path: Path, version, fragment) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"status": "ok", "record_format": version}))
    with pytest.raises(StoreError, match=re.escape(fragment)) as err:
        read_record(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------ bad records
def test_unknown_status_is_one_record_error_line(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "r.json"
    atomic_write_json(path, {"run_name": "r", "status": "finished"})
    with pytest.raises(petl.RecordError) as err:
        read_record(path)
    message = str(err.value)
    assert isinstance(err.value, StoreError) and "\n" not in message
    assert message == (f"run record {path} has status 'finished', not one of ok, failed, interrupted, pending; "
                       f"restore it, or delete it to rerun that run")
    with pytest.raises(StoreError, match="has no status"):
        RunRecord.from_dict({"run_name": "r"})
    with pytest.raises(StoreError, match="is not a JSON object"):
        (tmp_path / "list.json").write_text("[1]")
        read_record(tmp_path / "list.json")


def test_unknown_status_is_refused_before_any_file_is_written(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    with pytest.raises(StoreError, match="'done'"):
        store.write({"run_name": "r", "status": "done"})
    assert not (tmp_path / "runs" / "r.json").exists()


def test_cli_readers_turn_an_unknown_status_into_one_line_exit_2(tmp_path: Path, capsys) -> None:
    atomic_write_json(tmp_path / "runs" / "r.json", {"run_name": "r", "status": "finished"})
    for main in (report.main, status.main):
        assert main([str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: run record ") and "has status 'finished'" in err and "\n" not in err


def test_every_reader_goes_through_the_one_reader(tmp_path: Path) -> None:
    """The sweep's pre-flight check, the store, explain and sweep/bare all refuse the bad record the same way."""
    from benchmarks import explain, preflight, sweep_efficiency
    atomic_write_json(tmp_path / "runs" / "r.json", {"run_name": "r", "status": "finished"})
    readers = (lambda: preflight.check_records(RunStore(tmp_path)), lambda: list(RunStore(tmp_path).records()),
               lambda: sweep_efficiency.load_records(tmp_path), lambda: report.load_records(tmp_path),
               lambda: explain.find_record(tmp_path, "r", None, None, None), lambda: status.read_records(
                   RunStore(tmp_path)))
    for read in readers:
        with pytest.raises(StoreError, match="has status 'finished'"):
            read()
