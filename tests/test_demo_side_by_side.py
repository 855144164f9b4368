"""benchmarks/demo_side_by_side.py's run specifications and summaries: which denoisers it trains (the guide's
iteration included) and how it averages the rows of earlier runs, which carry no guidance scale."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def side_by_side():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import demo_side_by_side

        yield demo_side_by_side
    finally:  # the script puts the folder on the path too
        while str(REPO / "benchmarks") in sys.path:
            sys.path.remove(str(REPO / "benchmarks"))


def test_runs_name_their_denoiser_by_recipe_length_and_a_guide_other_than_a_quarter(side_by_side):
    runs = side_by_side.parse_runs("v_prediction:1800:100/25,v_prediction_position:900:25:450,v_prediction:900:25:225", 5)
    assert runs == {
        "v_prediction_1800": {"recipe": "v_prediction", "iterations": 1800, "steps": [100, 25], "guide": 450},
        "v_prediction_position_900_guide_450": {"recipe": "v_prediction_position", "iterations": 900, "steps": [25], "guide": 450},
        "v_prediction_900": {"recipe": "v_prediction", "iterations": 900, "steps": [25], "guide": 225},  # a quarter
    }
    for wrong, message in [("v_prediction:900:25:900", "between 0 and the iterations"),
                           ("v_prediction:900:25:0", "between 0 and the iterations"),
                           ("v_prediction:900:25:half", "whole numbers"),
                           ("v_prediction:900:25:450:2", "is not recipe:iterations:steps/steps"),
                           ("v_prediction:902:25", "whole epochs of 5"),
                           ("v_prediction:900:25,v_prediction:900:100:225", "v_prediction_900 is given twice")]:
        with pytest.raises(ValueError, match=message):
            side_by_side.parse_runs(wrong, 5)


def test_a_summary_averages_the_seed_sets_of_one_run_step_count_and_scale(side_by_side):
    row = dict.fromkeys(side_by_side.METRICS, 1.0)
    rows = [{**row, "demo": "a", "steps": 25, "scale": 2.0, "seed": 0, "seconds_per_sample": 1.0, "histogram_jensen_shannon": 1.0},
            {**row, "demo": "a", "steps": 25, "scale": 2.0, "seed": 1000, "seconds_per_sample": 3.0, "histogram_jensen_shannon": 3.0},
            {**row, "demo": "a", "steps": 25, "scale": 3.0, "seed": 0, "seconds_per_sample": 9.0, "histogram_jensen_shannon": 9.0}]
    summary = side_by_side.summarise(rows, "a", 25, 2)  # 2 and 2.0 are one scale
    assert summary["sets"] == 2 and summary["histogram_jensen_shannon"] == (2.0, 1.0, 3.0, 2)
    assert summary["seconds_per_sample"] == (2.0, 1.0, 3.0, 2)
    assert side_by_side.summarise(rows, "a", 25, 3.0)["sets"] == 1
    assert side_by_side.summarise(rows, "a", 100, 2.0) is None
