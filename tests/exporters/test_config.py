"""The one build configuration: defaults from their owners, a JSON file and --set overrides, flowing down."""

from __future__ import annotations

import json

import pytest

from exporters.config import BuildConfig, load_config, parse_assignment
from serving.contract import ServingLimits


def test_defaults_come_from_their_owners_and_flow_down():
    cfg = BuildConfig()
    limits = cfg.serving.limits(num_items=10, num_categories=2, num_campaigns=3)
    assert limits == ServingLimits(num_items=10, num_categories=2, num_campaigns=3)
    # GRACE and the ranker train on the histories the server accepts, with the served beam width.
    assert cfg.grace.model.max_history == cfg.ranker.max_history == limits.max_history
    assert cfg.grace.model.beam_width == limits.beam_width


def test_file_then_set_overrides(tmp_path):
    path = tmp_path / "build.json"
    path.write_text(json.dumps({"seed": 3, "grace": {"epochs": 5}, "serving": {"max_history": 16}}))
    cfg = load_config(path, ["grace.epochs=7", "serving.beam_width=8", "clip.caption_mix=[1, 0, 0]"])
    assert cfg.seed == 3 and cfg.grace.epochs == 7
    assert cfg.simulator.seed == cfg.ranker.seed == cfg.clip.seed == 3  # one seed flows to every section
    assert cfg.grace.model.max_history == cfg.ranker.max_history == 16
    assert cfg.grace.model.beam_width == 8
    assert cfg.clip.caption_mix == (1, 0, 0)
    json.dumps(cfg.to_dict())  # the manifest records it


def test_unknown_settings_are_errors_naming_the_path():
    with pytest.raises(ValueError, match=r"grace\.epoch: unknown setting"):
        load_config(None, ["grace.epoch=3"])
    with pytest.raises(ValueError, match="is a section"):
        load_config(None, ["grace=3"])
    with pytest.raises(ValueError, match="section.setting=value"):
        parse_assignment("grace.epochs")


def test_assignment_values_parse_as_json_or_string():
    assert parse_assignment("a.b=3") == {"a": {"b": 3}}
    assert parse_assignment("grace.variant=grace_dense") == {"grace": {"variant": "grace_dense"}}


def test_an_evaluation_only_item_head_is_refused_by_the_build():
    with pytest.raises(ValueError, match="item_head is evaluation-only"):
        load_config(None, ["grace.model.item_head=true"])
    assert load_config(None, ["grace.model.tied_head=true", "grace.model.label_smoothing=0.1"]).grace.model.tied_head
