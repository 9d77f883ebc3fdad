"""loadtests.queue_delay's variants: copies of a repository whose recommend steps batch with the given delay, or
whose every step has a queue policy."""

from __future__ import annotations

import re

import pytest

from loadtests.queue_delay import STEPS, policy_repository, unragged_repository, variant_repository
from serving.configs import validate


def _repository(tmp_path, delay_line: str):
    base = tmp_path / "repo"
    for step in (*STEPS, "score_ads"):
        (base / step / "1").mkdir(parents=True)
        (base / step / "1" / "model.py").write_text("# step\n")
        (base / step / "config.pbtxt").write_text(f'name: "{step}"\ndynamic_batching {{\n{delay_line}}}\n')
    (base / "recommend" / "1").mkdir(parents=True)
    (base / "recommend" / "config.pbtxt").write_text('name: "recommend"\nplatform: "ensemble"\n')
    return base


@pytest.mark.parametrize("built", ["  max_queue_delay_microseconds: 200\n", ""])  # a 0 delay is not written
@pytest.mark.parametrize("delay", [0, 350])
def test_variant_sets_the_delay_of_the_recommend_steps_only(tmp_path, built, delay):
    base = _repository(tmp_path, built)
    out = variant_repository(base, delay, tmp_path)
    for step in STEPS:
        text = (out / step / "config.pbtxt").read_text()
        assert re.findall(r"max_queue_delay_microseconds: (\d+)", text) == [str(delay)]
        assert (out / step / "1" / "model.py").is_file()
    assert (out / "score_ads" / "config.pbtxt").read_text() == (base / "score_ads" / "config.pbtxt").read_text()
    for step in STEPS:  # the build itself is left alone
        assert (base / step / "config.pbtxt").read_text().count("max_queue_delay") == (1 if built else 0)


def test_a_config_without_dynamic_batching_is_refused(tmp_path):
    base = _repository(tmp_path, "")
    (base / STEPS[0] / "config.pbtxt").write_text('name: "x"\n')
    with pytest.raises(SystemExit, match="no dynamic_batching"):
        variant_repository(base, 0, tmp_path)


def test_policy_variant_adds_the_queue_policy_to_every_batching_step(tmp_path):
    base = _repository(tmp_path, "  max_queue_delay_microseconds: 200\n")
    out = policy_repository(base, tmp_path)
    for step in (*STEPS, "score_ads"):
        policy = validate((out / step / "config.pbtxt").read_text()).dynamic_batching.default_queue_policy
        assert (policy.default_timeout_microseconds, policy.max_queue_size) == (5_000_000, 256), step
        assert validate((out / step / "config.pbtxt").read_text()).dynamic_batching.max_queue_delay_microseconds == 200
        assert "default_queue_policy" not in (base / step / "config.pbtxt").read_text()  # the build is left alone
    assert (out / "recommend" / "config.pbtxt").read_text() == (base / "recommend" / "config.pbtxt").read_text()
    with pytest.raises(SystemExit, match="already has a queue policy"):
        policy_repository(out, tmp_path / "again")


def test_unragged_variant_drops_ragged_batching_only(tmp_path):
    base = _repository(tmp_path, "  max_queue_delay_microseconds: 200\n")
    for step in STEPS:
        config = base / step / "config.pbtxt"
        ragged_input = 'input {\n  name: "item_ids"\n  dims: -1\n  allow_ragged_batch: true\n}\n'
        config.write_text(ragged_input + config.read_text())
    out = unragged_repository(base, tmp_path)
    for step in STEPS:
        parsed = validate((out / step / "config.pbtxt").read_text())
        assert [(i.name, list(i.dims), i.allow_ragged_batch) for i in parsed.input] == [("item_ids", [-1], False)]
        assert parsed.dynamic_batching.max_queue_delay_microseconds == 200
        assert validate((base / step / "config.pbtxt").read_text()).input[0].allow_ragged_batch  # left alone
