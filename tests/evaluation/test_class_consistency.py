"""The class-consistency classifiers: nearest class median of a measured proxy, and the intensity-profile classifier
for any labelled dataset; accuracy overall and per class."""

from __future__ import annotations

import pytest
import torch

from common.evaluation import IntensityProfileClassifier, NearestClassMedian


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


def _heads(count: int, enlarged: bool, seed: int) -> torch.Tensor:
    """(count, 1, 16, 16, 16) bright balls of random size and position, with a dark centre grown when ``enlarged``."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(16.0)] * 3, indexing="ij"))
    volumes = []
    for _ in range(count):
        centre = 7.5 + torch.randn(3, 1, 1, 1, generator=generator)
        radius = 6 + torch.rand(1, generator=generator)
        distance = (grid - centre).pow(2).sum(0).sqrt()
        volume = torch.where(distance < radius, 0.5, -1.0) + 0.05 * torch.randn(16, 16, 16, generator=generator)
        inner = (2.5 if enlarged else 1.2) + 0.3 * torch.rand(1, generator=generator)
        volumes.append(torch.where(distance < inner, -0.6, volume))
    return torch.stack(volumes)[:, None]


def test_the_intensity_profile_classifier_tells_classes_apart_on_volumes_it_did_not_see():
    classifier = IntensityProfileClassifier(["normal", "enlarged"])
    train = classifier.features(torch.cat([_heads(8, False, 0), _heads(3, True, 1)]))  # the rare class weighted up
    assert train.shape == (11, 16 + 8)
    classifier.fit(train, [0] * 8 + [1] * 3)
    heldout = classifier.features(torch.cat([_heads(4, False, 2), _heads(4, True, 3)]))
    result = classifier.accuracy(heldout, ["normal"] * 4 + ["enlarged"] * 4)
    assert result == {"accuracy": 1.0, "per_class": {"normal": 1.0, "enlarged": 1.0}, "volumes": 8}
    # a sample that shows the other class is judged so
    assert classifier.predict(classifier.features(_heads(2, True, 4))) == ["enlarged", "enlarged"]
    swapped = classifier.accuracy(heldout, ["enlarged"] * 4 + ["normal"] * 4)
    assert swapped["accuracy"] == 0.0
    # fitted again from the same data, the same classifier
    again = IntensityProfileClassifier(["normal", "enlarged"]).fit(train, [0] * 8 + [1] * 3)
    assert torch.equal(again.linear.weight, classifier.linear.weight)


def test_the_intensity_profile_classifier_refuses_what_it_cannot_learn_from():
    classifier = IntensityProfileClassifier(["normal", "enlarged"])
    features = classifier.features(_heads(3, False, 0))
    with pytest.raises(ValueError, match=r"need training volumes of at least 2 classes, got \{'normal': 3, 'enlarged': 0\}"):
        classifier.fit(features, [0, 0, 0])
    with pytest.raises(ValueError, match="3 volumes but 2 classes"):
        classifier.fit(features, [0, 1])
    with pytest.raises(ValueError, match=r"class indices must be in \[0, 1\]"):
        classifier.fit(features, [0, 1, 2])
    with pytest.raises(RuntimeError, match="fit the classifier on the real training volumes first"):
        classifier.predict(features)
    with pytest.raises(ValueError, match=r"expected volumes of shape \(N, 1, H, W, D\)"):
        classifier.features(torch.zeros(2, 16, 16, 16))
    with pytest.raises(ValueError, match="at least 2 distinct names"):
        IntensityProfileClassifier(["normal", "normal"])
