import math

import pytest

from atlas_plugins import ConfigError, create_curriculum_schedule, get_schedule


def test_linear_exponential_cosine_formulas():
    lin = create_curriculum_schedule(4.0, 0.5, 5, "linear")
    exp = create_curriculum_schedule(4.0, 0.5, 5, "exponential")
    cos = create_curriculum_schedule(4.0, 0.5, 5, "cosine")
    for stage in range(5):
        p = stage / 4
        assert lin(stage) == pytest.approx(4.0 - 3.5 * p)
        assert exp(stage) == pytest.approx(4.0 * (0.5 / 4.0) ** p)
        assert cos(stage) == pytest.approx(4.0 - 3.5 * (1 - math.cos(math.pi * p)) / 2)
    assert [round(lin(s), 3) for s in range(5)] == [4.0, 3.125, 2.25, 1.375, 0.5]
    assert exp(2) == pytest.approx(math.sqrt(4.0 * 0.5))


def test_single_stage_uses_start():
    assert create_curriculum_schedule(2.0, 0.5, 1, "cosine")(0) == 2.0


@pytest.mark.parametrize("stage", [-1, 5, 1.5, "2", True])
def test_stage_outside_range_is_an_error(stage):
    with pytest.raises(ConfigError, match=r"stage must be an integer in \[0, 4\]"):
        create_curriculum_schedule(4.0, 0.5, 5)(stage)


@pytest.mark.parametrize("args, message", [
    ((0.0, 0.5, 5), "schedule start and end must be a positive number"),
    ((4.0, -1, 5), "schedule start and end must be a positive number"),
    ((4.0, 0.5, 0), "num_stages must be an integer >= 1"),
])
def test_bad_schedule_arguments(args, message):
    with pytest.raises(ConfigError, match=message):
        get_schedule("exponential")(*args)


def test_unknown_schedule_suggests_closest():
    with pytest.raises(KeyError, match="did you mean 'cosine'"):
        create_curriculum_schedule(4.0, 0.5, 5, "cosin")
