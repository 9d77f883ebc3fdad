"""loadtests.queue_delay's variants: copies of a repository whose recommend steps batch with the given delay."""

from __future__ import annotations

import re

import pytest

from loadtests.queue_delay import STEPS, variant_repository


def _repository(tmp_path, delay_line: str):
    base = tmp_path / "repo"
    for step in (*STEPS, "score_ads"):
        (base / step / "1").mkdir(parents=True)
        (base / step / "1" / "model.py").write_text("# step\n")
        (base / step / "config.pbtxt").write_text(f'name: "{step}"\ndynamic_batching {{\n{delay_line}'
                                                  '  default_queue_policy {\n  }\n}\n')
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
