"""Studies, ladders and tables share one ``data`` field (nas/config/data.py): a path stays the
plain string stored configs always had; a [data] table reaches each run's trial config."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nas.bench.config import TableConfig
from nas.config.base import validate
from nas.config.data import data_text
from nas.corpus import DataSource
from nas.ladder.grid import grid
from nas.ladder.run import point_study_config
from tests.test_ladder import tiny_config
from tests.test_table import tiny_raw

TABLE = {"path": "corpus/", "tokenizer": "bpe:512"}


def test_a_ladder_takes_a_data_table_and_hands_it_to_every_point(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, data=TABLE)
    assert config.data == DataSource(path="corpus/", tokenizer="bpe:512")
    assert json.loads(config.model_dump_json())["data"] == TABLE  # stored as the table it was given
    trial = point_study_config(config, grid(config)[0])
    assert trial.data == config.data


def test_a_ladder_path_is_stored_as_the_plain_string_it_was(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, data="corpus/")
    assert config.data == DataSource(path="corpus/")
    assert json.loads(config.model_dump_json())["data"] == "corpus/"  # older ladder.json files resume
    assert json.loads(tiny_config(tmp_path).model_dump_json())["data"] is None


def test_a_table_takes_a_data_table_and_hands_it_to_every_run() -> None:
    config = validate(TableConfig, tiny_raw(data=TABLE), "t.toml")
    assert config.trial_config(seed=0).data == DataSource(path="corpus/", tokenizer="bpe:512")
    assert config.model_dump(mode="json")["data"] == TABLE


@pytest.mark.parametrize("data, message", [
    (3, "is no data"),
    ({"path": "c/", "tokenizer": "bpe:7"}, "byte-level BPE needs a vocabulary"),
    ({"path": "c/", "vocab": 5}, "vocab"),
])
def test_bad_data_in_a_ladder_or_table_names_the_fix(tmp_path: Path, data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_config(tmp_path, data=data)
    with pytest.raises(ValueError, match=message):
        validate(TableConfig, tiny_raw(data=data), "t.toml")


def test_reports_name_the_data() -> None:
    assert data_text(None) == "shipped Shakespeare corpus (byte-level)"
    assert data_text(DataSource(path="corpus/")) == "corpus/"
    assert data_text(DataSource(path="c/", tokenizer="bpe:512")) == "c/ (tokenizer bpe:512)"
