"""files.py: the settings stamp that lets a rerun reuse a trained folder."""
import json

import pytest

from saliencylab.files import stamped, update_json


def test_update_json_adds_fields_and_stamped_matches_only_the_same_stamp(tmp_path):
    path = tmp_path / "classifier.json"
    assert not stamped(path, "reproduce", {"epochs": 3})  # nothing trained yet
    path.write_text(json.dumps({"arch": "small_cnn", "epochs": 3}))
    assert not stamped(path, "reproduce", {"epochs": 3})  # trained, but not by this run
    assert update_json(path, reproduce={"epochs": 3}, seconds=1.5) == {"arch": "small_cnn", "epochs": 3,
                                                                        "reproduce": {"epochs": 3}, "seconds": 1.5}
    assert json.loads(path.read_text())["arch"] == "small_cnn"
    assert stamped(path, "reproduce", {"epochs": 3})
    assert not stamped(path, "reproduce", {"epochs": 4})
    assert not stamped(path, "demo", {"epochs": 3})
    assert [p.name for p in tmp_path.iterdir()] == ["classifier.json"]  # no temporary file left


def test_stamped_names_a_malformed_description(tmp_path):
    (tmp_path / "list.json").write_text("[1, 2]")
    assert not stamped(tmp_path / "list.json", "reproduce", 1)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        stamped(tmp_path / "bad.json", "reproduce", 1)
