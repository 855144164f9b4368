"""The real-anatomy demo population: one real brain, licensed for redistribution, made into subjects that differ
as real brains and scans do; held-out subjects never reach training."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser
from scipy.ndimage import binary_dilation

from common.data import brain_demo_datalist, brain_demo_heldout_datalist, brain_ventricles_demo_datalist
from common.data.brain_population import (
    TEMPLATE,
    TEMPLATE_LICENSE,
    deform_brain,
    enlarge_ventricles,
    load_template,
    template_ventricles,
    ventricle_volume,
)
from tests.bundles.bundle_runs import config_files


def test_the_real_brain_ships_with_its_licence():
    notice = TEMPLATE_LICENSE.read_text()
    assert "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre" in notice and TEMPLATE.name in notice
    image = nib.load(str(TEMPLATE))
    assert image.shape == (74, 92, 78) and np.allclose(image.header.get_zooms(), 2.0) and TEMPLATE.stat().st_size < 300_000
    template, affine = load_template()
    assert 0.9 < template.max() <= 1.0 and (template > 0).mean() > 0.3 and np.allclose(np.diag(affine)[:3], 2.0)


def test_a_seed_gives_the_same_subject_and_subjects_differ_from_each_other_and_the_template():
    template, _ = load_template()
    first = deform_brain(template, np.random.default_rng(7))
    assert np.array_equal(first, deform_brain(template, np.random.default_rng(7)))
    second = deform_brain(template, np.random.default_rng(8))
    assert first.shape == template.shape and first.dtype == np.float32
    assert first.min() == 0.0 and 0.5 < first.max() < 2.0 and (first[:3] == 0).all()  # background stays exactly 0
    inside = (first > 0) & (second > 0)
    assert np.abs(first - second)[inside].mean() > 0.05 and np.abs(first - template)[inside].mean() > 0.05
    assert 0.8 < (first > 0).sum() / (template > 0.02).sum() < 1.25  # a brain of a plausible size
    unchanged = deform_brain(template, np.random.default_rng(7), strength=0.0)
    assert np.corrcoef(unchanged[template > 0.02], template[template > 0.02])[0, 1] > 0.95


def test_held_out_subjects_never_reach_a_training_datalist(tmp_path, demo_brains):
    training = [item["image"] for item in brain_demo_datalist(tmp_path, count=3)]
    heldout = [item["image"] for item in brain_demo_heldout_datalist(tmp_path, count=2)]
    assert not set(training) & set(heldout) and all("/heldout/" in path for path in heldout)
    again = [item["image"] for item in brain_demo_heldout_datalist(tmp_path / "other", count=2)]
    assert [np.array_equal(nib.load(a).get_fdata(), nib.load(b).get_fdata()) for a, b in zip(heldout, again)] == [True, True]
    more = brain_demo_heldout_datalist(tmp_path / "bigger", count=2)  # the held-out subjects do not depend on count
    assert np.array_equal(nib.load(more[0]["image"]).get_fdata(), nib.load(heldout[0]).get_fdata())
    parser = ConfigParser()  # the brain bundle's own configs, without a dataset_dir: the demo split (made once a session)
    parser.read_config(config_files("brain_mri", "train_autoencoder"))
    parser.update({"demo_dir": str(demo_brains(tmp_path / "demo"))})
    trains, helds = parser.get_parsed_content("datalist"), parser.get_parsed_content("heldout_datalist")
    assert len(trains) == 20 and len(helds) == 8
    assert not {item["image"] for item in trains} & {item["image"] for item in helds}
    parser.update({"dataset_dir": str(tmp_path / "demo" / "train")})  # the user's data: no demo held-out set is made up
    assert parser.get_parsed_content("heldout_datalist") is None


def test_enlarged_ventricles_are_a_class_the_ventricle_measure_tells_apart_after_the_bundles_preprocessing(tmp_path):
    template, _ = load_template()
    ventricles = template_ventricles(template)
    enlarged = enlarge_ventricles(template)
    assert 500 < ventricles.sum() < 2000  # the lateral and third ventricles at 2 mm, not the sulci
    assert np.array_equal(enlarge_ventricles(template, 0.0), template)
    # the CSF-dark region around the ventricles grows, the rest of the brain barely moves
    dark = lambda volume: int(((volume < 0.3) & (volume > 0.02) & binary_dilation(ventricles, iterations=6)).sum())  # noqa: E731
    assert dark(enlarged) > 1.8 * dark(template)
    change = np.abs(enlarged - template)
    assert change[binary_dilation(ventricles, iterations=6)].mean() > 0.05
    assert change[~binary_dilation(ventricles, iterations=12)].max() < 0.05  # 24 mm away: untouched
    datalist = brain_ventricles_demo_datalist(tmp_path, "train", 3)
    assert sorted(Path(i["image"]).parent.name for i in datalist) == ["enlarged"] * 3 + ["normal"] * 3
    assert (tmp_path / "train" / "labels.csv").read_text() == "file,ventricles\nnormal,normal\nenlarged,enlarged\n"
    parser = ConfigParser()
    parser.read_config(config_files("brain_mri", "train_autoencoder"))
    parser.update({"image_size": [32, 32, 32]})
    preprocessing = parser.get_parsed_content("train#preprocessing")
    measured = {"normal": [], "enlarged": []}
    for item in datalist:
        measured[item["ventricles"]].append(ventricle_volume(np.asarray(preprocessing(dict(item))["image"])[0]))
    assert max(measured["normal"]) < min(measured["enlarged"]), measured
    with pytest.raises(ValueError, match="expected one volume"):
        ventricle_volume(np.zeros((1, 8, 8, 8)))
