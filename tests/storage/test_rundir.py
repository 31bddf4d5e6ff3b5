"""A run directory holds one run: what a second command pointed at it may do."""

import json

import pytest

from gblend_ray.storage.location import is_uri, resolve
from gblend_ray.storage.rundir import RUN, RUN_FILES, RunDir, RunDirError, config_hash, differing_keys

CONFIG = {"method": "gblend:online", "seed": 0, "train": {"epochs": 12, "batch_size": 32}}


def _started(tmp_path, config=CONFIG):
    run = RunDir(tmp_path / "run")
    assert run.claim(config) == "start"
    run.start(config)
    return run


def test_an_empty_or_missing_directory_starts(tmp_path):
    assert RunDir(tmp_path / "nothing").claim(CONFIG) == "start"
    (tmp_path / "empty").mkdir()
    assert RunDir(tmp_path / "empty").claim(CONFIG) == "start"


def test_run_json_records_the_config_and_its_hash(tmp_path):
    run = _started(tmp_path)
    ident = json.loads((tmp_path / "run" / RUN).read_text())
    assert ident["config"] == CONFIG and ident["status"] == "running"
    assert ident["config_hash"] == config_hash(CONFIG) != config_hash({**CONFIG, "seed": 1})
    run.mark("finished")
    assert run.identity()["status"] == "finished"


def test_another_config_is_refused_naming_the_keys_that_differ(tmp_path):
    _started(tmp_path)
    other = {**CONFIG, "method": "naive", "train": {"epochs": 20, "batch_size": 32}}
    for resume in (False, True):  # a different config cannot be resumed either
        with pytest.raises(RunDirError) as err:
            RunDir(tmp_path / "run").claim(other, resume=resume)
        msg = str(err.value)
        assert "another config" in msg and "method: 'gblend:online' -> 'naive'" in msg
        assert "train.epochs: 12 -> 20" in msg and "--overwrite" in msg and "batch_size" not in msg


def test_overwrite_removes_the_run_files_and_nothing_else(tmp_path):
    run = _started(tmp_path)
    for name in ("results.json", "metrics.jsonl", "ray/train/epoch_0004/state.pt", "wandb/x", "notes.txt"):
        (tmp_path / "run" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "run" / name).write_text("x")
    assert run.claim({**CONFIG, "seed": 1}, overwrite=True) == "start"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["notes.txt"]
    assert "notes.txt" not in RUN_FILES


def test_the_same_config_unfinished_says_how_to_go_on(tmp_path):
    run = _started(tmp_path)
    (tmp_path / "run" / "checkpoints" / "epoch_0004").mkdir(parents=True)
    with pytest.raises(RunDirError, match=r"unfinished \(running, last checkpoint at epoch 4\): "
                                          r"--resume continues it, --overwrite starts it over"):
        run.claim(CONFIG)
    assert run.claim(CONFIG, resume=True) == "resume"
    run.mark("failed")
    assert run.claim(CONFIG, resume=True) == "resume"
    with pytest.raises(RunDirError, match="exclude each other"):
        run.claim(CONFIG, resume=True, overwrite=True)


def test_a_finished_run_is_not_run_again(tmp_path):
    run = _started(tmp_path)
    run.write_json("results.json", {"method": "gblend:online", "test": {"top1": 0.5}})
    run.mark("finished")
    assert run.claim(CONFIG) == run.claim(CONFIG, resume=True) == "finished"
    assert run.claim(CONFIG, overwrite=True) == "start" and not (tmp_path / "run" / "results.json").exists()


def test_a_directory_of_something_else_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "data.npy").write_text("x")
    with pytest.raises(RunDirError, match=r"not empty \(data.npy\) but holds no run"):
        RunDir(tmp_path / "d").claim(CONFIG)
    (tmp_path / "d" / "results.json").write_text("{}")  # an older version's run, say
    with pytest.raises(RunDirError, match=r"--overwrite removes the run files it holds \(results.json\)"):
        RunDir(tmp_path / "d").claim(CONFIG)
    assert RunDir(tmp_path / "d").claim(CONFIG, overwrite=True) == "start"
    assert (tmp_path / "d" / "data.npy").exists() and not (tmp_path / "d" / "results.json").exists()


def test_differing_keys_are_dotted():
    assert differing_keys({"a": {"b": 1, "c": [1, 2]}}, {"a": {"b": 2, "c": (1, 2)}, "d": None}) == {"a.b": (1, 2)}


def test_a_relative_path_is_made_absolute_where_it_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    where = resolve("runs/one")
    assert where.is_local and where.uri == str(tmp_path / "runs" / "one")
    assert not is_uri("runs/one") and is_uri("s3://bucket/a?endpoint_override=127.0.0.1:9&scheme=http")


def test_a_location_writes_atomically_and_lists_and_removes(tmp_path):
    where = resolve(tmp_path / "a")
    (where / "x.json").write_text('{"k": 1}')
    assert where.listdir() == ["x.json"] and (where / "x.json").read_text() == '{"k": 1}'
    assert not list((tmp_path / "a").glob("*.tmp"))
    run = RunDir(where)
    run.write_jsonl("m.jsonl", [{"epoch": 1}, {"epoch": 2}])
    (tmp_path / "a" / "m.jsonl").write_text((tmp_path / "a" / "m.jsonl").read_text() + '{"epoch": 3, "lo')  # cut short
    assert run.read_jsonl("m.jsonl") == [{"epoch": 1}, {"epoch": 2}]
    where.remove()
    assert not (tmp_path / "a").exists() and where.listdir() == []
