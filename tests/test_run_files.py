"""A run's files: read errors name the file (and line); study.py's cached JSON reads."""

import pytest

from jaxrl_reason import study
from jaxrl_reason.demo import SCALES
from jaxrl_reason.run_files import RunFileError, read_json, read_jsonl, write_json


def test_read_json_names_the_file_line_and_column(tmp_path):
    path = tmp_path / "run.json"
    write_json(path, {"a": 1})
    assert read_json(path, "run file") == {"a": 1}
    path.write_text('{\n  "a": ')
    with pytest.raises(RunFileError, match=rf"{path}:2:8: run file is not valid JSON"):
        read_json(path, "run file")
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(RunFileError, match=rf"{path}: run file is not UTF-8 text"):
        read_json(path, "run file")


def test_read_jsonl_skips_a_cut_off_last_line_only(tmp_path, caplog):
    path = tmp_path / "m.jsonl"
    assert read_jsonl(path) == []  # not written yet
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": ')
    with caplog.at_level("WARNING"):
        assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert "cut off mid-write" in caplog.text
    path.write_text('{"a": 1}\n{"a": \n{"a": 2}\n')
    with pytest.raises(RunFileError, match=rf"{path}:2: metrics line 2 is not valid JSON"):
        read_jsonl(path, "metrics")


def test_study_cached_files_name_themselves_when_damaged(tmp_path):
    (tmp_path / "probe.json").write_text('{"sft": ')  # a probe cached by a crashed study
    with pytest.raises(RunFileError, match=r"probe.json:1:\d+: exploration probe is not valid"):
        study.exploration_probe(tmp_path, SCALES["smoke"], 0, 1, 1)
    (tmp_path / "probe.json").unlink()
    (tmp_path / "main").mkdir()
    (tmp_path / "main" / "run.json").write_text("{")
    with pytest.raises(RunFileError, match=r"main/run.json:1:2: run file is not valid JSON"):
        study.exploration_probe(tmp_path, SCALES["smoke"], 0, 1, 1)
