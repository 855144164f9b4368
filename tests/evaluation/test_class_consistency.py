"""The class-consistency classifier: nearest class median of a measured proxy, accuracy overall and per class."""

from __future__ import annotations

import pytest

from common.evaluation import NearestClassMedian


def test_nearest_class_median_judges_each_value_by_the_nearest_real_median():
    classifier = NearestClassMedian({"normal": [2, 10, 40], "enlarged": [60, 100, 170]})
    assert classifier.medians == {"normal": 10.0, "enlarged": 100.0}
    assert [classifier.predict(v) for v in (0, 54, 56, 300)] == ["normal", "normal", "enlarged", "enlarged"]
    result = classifier.accuracy({"normal": [5, 80], "enlarged": [90, 120, 20, 50]})
    assert result == {"accuracy": pytest.approx(3 / 6), "per_class": {"normal": 0.5, "enlarged": 0.5}, "volumes": 6}
    with pytest.raises(ValueError, match="at least 2 classes"):
        NearestClassMedian({"normal": [1, 2]})
    with pytest.raises(ValueError, match="each with at least one volume"):
        NearestClassMedian({"normal": [1], "enlarged": []})
