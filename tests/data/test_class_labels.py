"""Labels per volume as datasets ship them (MRNet's CSV files as released, a generic CSV or JSON table), every bad
input named with its file and row, and the labels asked for at inference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.data import (
    LABELS_KEY,
    DatasetError,
    class_counts,
    labelled_datalist,
    mrnet_labels,
    read_labels_file,
    requested_labels,
    volumes_of_class,
)

KNEE = {"abnormal": ["normal", "abnormal"], "acl": ["intact", "tear"]}
BRAIN = {"diagnosis": ["CN", "MCI", "AD"], "sex": ["F", "M"]}


@pytest.fixture
def mrnet(tmp_path: Path) -> Path:
    """MRNet-v1.0's layout with its label files as released: no header, rows '<case>,<0 or 1>' (case numbers
    without leading zeros)."""
    root = tmp_path / "MRNet-v1.0"
    for split, cases in (("train", [0, 1, 2]), ("valid", [1130])):
        (root / split / "sagittal").mkdir(parents=True)
        for case in cases:
            (root / split / "sagittal" / f"{case:04d}.npy").write_bytes(b"")
        for task, offset in (("abnormal", 0), ("acl", 1), ("meniscus", 0)):
            (root / f"{split}-{task}.csv").write_text("".join(f"{case},{(case + offset) % 2}\n" for case in cases))
    return root


def datalist_of(root: Path) -> list[dict[str, str]]:
    return [{"image": str(p)} for p in sorted(root.rglob("*.npy"))]


def test_mrnet_labels_as_released_go_to_their_exams(mrnet):
    rows = mrnet_labels(mrnet, KNEE)
    items = labelled_datalist(datalist_of(mrnet), KNEE, rows, mrnet)
    labels = {Path(item["image"]).name: item[LABELS_KEY].tolist() for item in items}
    # abnormal = case % 2, acl = (case + 1) % 2, in the order of class_labels
    assert labels == {"0000.npy": [0, 1], "0001.npy": [1, 0], "0002.npy": [0, 1], "1130.npy": [0, 1]}
    assert all(item[LABELS_KEY].dtype == torch.long for item in items)
    assert class_counts(KNEE) == [2, 2]


@pytest.mark.parametrize("break_it, message", [
    (lambda root: (root / "train-acl.csv").write_text("0,1\n1,2\n2,0\n"), r"train-acl.csv line 2: the label of case 0001 is 2, not 0 or 1"),
    (lambda root: (root / "train-acl.csv").write_text("0,1\n1,0\n"), r"case 0002 of train has no row in train-acl.csv"),
    (lambda root: (root / "train-acl.csv").unlink(), r"train-acl.csv: missing \(MRNet-v1.0 ships it"),
    (lambda root: (root / "train-acl.csv").write_text("0,1\nzero,0\n1,0\n2,0\n"), r"train-acl.csv line 2: expected '<case number>,<0 or 1>'"),
    (lambda root: (root / "train-acl.csv").write_text("0,1\n1,0\n2,0\n2,1\n"), r"train-acl.csv line 4: case 0002 again"),
])
def test_mrnet_label_file_problems_are_named_with_the_file_and_line(mrnet, break_it, message):
    break_it(mrnet)
    with pytest.raises(DatasetError, match=message):
        mrnet_labels(mrnet, KNEE)


def test_mrnet_labels_only_its_tasks_with_two_classes(mrnet):
    with pytest.raises(ValueError, match=r"MRNet labels 2 classes of each of \['abnormal', 'acl', 'meniscus'\]; class_labels declares \['tear'\]"):
        mrnet_labels(mrnet, {"tear": ["no", "yes"]})
    with pytest.raises(ValueError, match=r"declares \['acl'\]"):
        mrnet_labels(mrnet, {"acl": ["intact", "partial", "full"]})


def test_a_label_row_for_an_exam_that_is_not_there_is_named(mrnet):
    (mrnet / "train" / "sagittal" / "0002.npy").unlink()
    with pytest.raises(DatasetError, match=r"train-abnormal.csv line 3: '.*0002.npy' is no training volume"):
        labelled_datalist(datalist_of(mrnet), KNEE, mrnet_labels(mrnet, KNEE), mrnet)


def nifti_dataset(tmp_path: Path) -> tuple[Path, list[dict[str, str]]]:
    root = tmp_path / "brains"
    for name in ("sub-01/anat/t1.nii.gz", "sub-02/anat/t1.nii.gz", "sub-03.nii.gz"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    return root, [{"image": str(p)} for p in sorted(root.rglob("*.nii.gz"))]


def test_a_generic_csv_names_volumes_by_relative_path_absolute_path_or_name(tmp_path):
    root, datalist = nifti_dataset(tmp_path)
    table = tmp_path / "labels.csv"
    table.write_text(f"file,age,diagnosis,sex\nsub-01/anat/t1.nii.gz,71,AD,F\n{root / 'sub-02/anat/t1.nii.gz'},65,CN,M\nsub-03,80, MCI ,M\n")
    items = labelled_datalist(datalist, BRAIN, table, root)
    assert {Path(i["image"]).relative_to(root).as_posix(): i[LABELS_KEY].tolist() for i in items} == {
        "sub-01/anat/t1.nii.gz": [2, 0], "sub-02/anat/t1.nii.gz": [0, 1], "sub-03.nii.gz": [1, 1]}


def test_a_json_table_in_either_form_gives_the_same_labels(tmp_path):
    root, datalist = nifti_dataset(tmp_path)
    mapping = {"sub-01/anat/t1.nii.gz": {"diagnosis": "AD", "sex": "F"}, "sub-02/anat/t1.nii.gz": {"diagnosis": "CN", "sex": "M"},
               "sub-03": {"diagnosis": "MCI", "sex": "M"}}
    (tmp_path / "a.json").write_text(json.dumps(mapping))
    (tmp_path / "b.json").write_text(json.dumps([{"file": k, **v} for k, v in mapping.items()]))
    first, second = (labelled_datalist(datalist, BRAIN, tmp_path / name, root) for name in ("a.json", "b.json"))
    assert [i[LABELS_KEY].tolist() for i in first] == [i[LABELS_KEY].tolist() for i in second] == [[2, 0], [0, 1], [1, 1]]


@pytest.mark.parametrize("rows, message", [
    ("file,diagnosis,sex\nsub-01/anat/t1.nii.gz,AD,F\nsub-02/anat/t1.nii.gz,CN,M\n", r"sub-03.nii.gz: no row in .*labels.csv"),
    ("file,diagnosis,sex\nsub-01/anat/t1.nii.gz,AD,F\nsub-02/anat/t1.nii.gz,CN,M\nsub-03,MCI,M\nsub-04,CN,F\n",
     r"labels.csv line 5: 'sub-04' is no training volume"),
    ("file,diagnosis,sex\nsub-01/anat/t1.nii.gz,AD,F\nsub-02/anat/t1.nii.gz,Alzheimer,M\nsub-03,MCI,M\n",
     r"labels.csv line 3: 'diagnosis' is 'Alzheimer', not one of its classes \['CN', 'MCI', 'AD'\]"),
    ("file,diagnosis,sex\nsub-01/anat/t1.nii.gz,AD,\nsub-02/anat/t1.nii.gz,CN,M\nsub-03,MCI,M\n",
     r"labels.csv line 2: no class given for 'sex'"),
    ("file,diagnosis\nsub-01/anat/t1.nii.gz,AD\n", r"the header \['file', 'diagnosis'\] lacks \['sex'\]"),
    ("file,diagnosis,sex\nsub-01/anat/t1.nii.gz,AD,F\nsub-01/anat/t1.nii.gz,CN,M\nsub-02/anat/t1.nii.gz,CN,M\nsub-03,MCI,M\n",
     r"labels.csv line 3: .*sub-01/anat/t1.nii.gz has labels already \(.*labels.csv line 2\)"),
    ("file,diagnosis,sex\nt1,AD,F\nsub-03,MCI,M\n", r"labels.csv line 2: 't1' names 2 volumes .*; give the path"),
    ("file,diagnosis,sex\n", r"labels file .*labels.csv has no rows"),
])
def test_every_bad_labels_table_is_named_with_the_file_and_row_before_training(tmp_path, rows, message):
    root, datalist = nifti_dataset(tmp_path)
    (tmp_path / "labels.csv").write_text(rows)
    with pytest.raises(DatasetError, match=message):
        labelled_datalist(datalist, BRAIN, tmp_path / "labels.csv", root)


def test_labels_and_class_labels_come_together(tmp_path):
    root, datalist = nifti_dataset(tmp_path)
    assert labelled_datalist(datalist, None, None, root) == datalist  # unconditional: unchanged
    with pytest.raises(ValueError, match="a labels file is given but class_labels is not set"):
        labelled_datalist(datalist, None, tmp_path / "labels.csv", root)
    with pytest.raises(ValueError, match=r"class_labels .* is set, so every training volume needs its labels: give a labels file"):
        labelled_datalist(datalist, BRAIN, None, root)
    with pytest.raises(DatasetError, match=r"labels file .*missing.csv does not exist"):
        labelled_datalist(datalist, BRAIN, tmp_path / "missing.csv", root)
    (tmp_path / "labels.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"expected a .csv or .json table of file,diagnosis,sex"):
        labelled_datalist(datalist, BRAIN, tmp_path / "labels.txt", root)
    for bad in ({}, {"diagnosis": ["AD"]}, {"diagnosis": "AD,CN"}, {"file": ["a", "b"]}, {"diagnosis": ["AD", "AD"]}):
        with pytest.raises(ValueError, match="class_labels"):
            class_counts(bad)


def test_requested_labels_per_sample_all_or_none_from_a_mapping_a_list_or_a_file(tmp_path):
    assert requested_labels(None, BRAIN, 2) == [(None, None), (None, None)]
    assert requested_labels({"diagnosis": "AD", "sex": "M"}, BRAIN, 2) == [({"diagnosis": "AD", "sex": "M"}, (2, 1))] * 2
    assert requested_labels([{"diagnosis": "CN", "sex": "F"}, None], BRAIN, 2) == [({"diagnosis": "CN", "sex": "F"}, (0, 0)), (None, None)]
    (tmp_path / "asked.csv").write_text("sex,diagnosis\nF,MCI\nM,AD\n")
    assert [indices for _, indices in requested_labels(tmp_path / "asked.csv", BRAIN, 2)] == [(1, 0), (2, 1)]
    with pytest.raises(ValueError, match=r"asks for 2 samples' labels but num_samples is 3"):
        requested_labels(tmp_path / "asked.csv", BRAIN, 3)
    with pytest.raises(ValueError, match=r"sample 0: no class given for 'sex'"):
        requested_labels({"diagnosis": "AD"}, BRAIN, 1)
    with pytest.raises(ValueError, match=r"sample 0: \['age'\] are no labelled variables"):
        requested_labels({"diagnosis": "AD", "sex": "M", "age": "70"}, BRAIN, 1)
    with pytest.raises(ValueError, match=r"'diagnosis' is 'ad', not one of its classes"):
        requested_labels({"diagnosis": "ad", "sex": "M"}, BRAIN, 1)
    with pytest.raises(ValueError, match="the model is unconditional"):
        requested_labels({"diagnosis": "AD", "sex": "M"}, None, 1)


def test_read_labels_file_keeps_the_order_of_class_labels(tmp_path):
    (tmp_path / "t.csv").write_text("sex,file,diagnosis\nM,a,AD\n")
    assert read_labels_file(tmp_path / "t.csv", BRAIN)[0].indices == (2, 1)


def test_a_folder_row_labels_every_volume_under_it_as_clinical_tables_label_patients(tmp_path):
    root = tmp_path / "duke"
    for series in ("Breast_MRI_001/study/pre", "Breast_MRI_001/study/post", "Breast_MRI_002/study/pre"):
        (root / series).mkdir(parents=True)
    # the breast reader gives one item per side of a series: both take their patient's labels
    datalist = [{"image": str(root / s), "side": side} for s in ("Breast_MRI_001/study/pre", "Breast_MRI_001/study/post",
                                                               "Breast_MRI_002/study/pre") for side in ("left", "right")]
    (tmp_path / "clinical.csv").write_text("file,er\nBreast_MRI_001,positive\nBreast_MRI_002,negative\n")
    items = labelled_datalist(datalist, {"er": ["negative", "positive"]}, tmp_path / "clinical.csv", root)
    assert [i[LABELS_KEY].item() for i in items] == [1, 1, 1, 1, 0, 0]
    # a series labelled again under its labelled patient is a conflict, named
    (tmp_path / "clinical.csv").write_text("file,er\nBreast_MRI_001,positive\nBreast_MRI_002,negative\nBreast_MRI_002/study/pre,positive\n")
    with pytest.raises(DatasetError, match=r"clinical.csv line 4: .*Breast_MRI_002/study/pre has labels already \(.*clinical.csv line 3\)"):
        labelled_datalist(datalist, {"er": ["negative", "positive"]}, tmp_path / "clinical.csv", root)


def test_volumes_of_class_selects_the_real_volumes_a_class_is_compared_with(tmp_path):
    root, datalist = nifti_dataset(tmp_path)
    table = tmp_path / "labels.csv"
    table.write_text("file,diagnosis,sex\nsub-01/anat/t1.nii.gz,AD,F\nsub-02/anat/t1.nii.gz,CN,M\nsub-03,AD,F\n")
    chosen = volumes_of_class(datalist, BRAIN, table, root, {"sex": "F", "diagnosis": "AD"})
    assert [Path(i["image"]).relative_to(root).as_posix() for i in chosen] == ["sub-01/anat/t1.nii.gz", "sub-03.nii.gz"]
    assert len(volumes_of_class(datalist, BRAIN, table, root, None)) == 3  # no class asked for: all, labels checked
    assert volumes_of_class(datalist, BRAIN, None, root, None) == datalist
    # every way it cannot select is named, with the setting to give
    with pytest.raises(DatasetError, match=r"no held-out volume is of the class diagnosis=MCI sex=M in heldout_labels_file \(.*labels.csv\); "
                       r"it has diagnosis=CN sex=M: 1, diagnosis=AD sex=F: 2"):
        volumes_of_class(datalist, BRAIN, table, root, {"diagnosis": "MCI", "sex": "M"}, "heldout_labels_file", "held-out")
    with pytest.raises(ValueError, match=r"so those volumes need their labels too: set heldout_labels_file"):
        volumes_of_class(datalist, BRAIN, None, root, {"diagnosis": "AD", "sex": "F"}, "heldout_labels_file", "held-out")
    with pytest.raises(ValueError, match=r"needs one \{variable: class\} for all samples"):
        volumes_of_class(datalist, BRAIN, table, root, [{"diagnosis": "AD", "sex": "F"}])
    with pytest.raises(ValueError, match=r"'diagnosis' is 'ad', not one of its classes"):
        volumes_of_class(datalist, BRAIN, table, root, {"diagnosis": "ad", "sex": "F"})
    with pytest.raises(ValueError, match=r"\['age'\] are no labelled variables"):
        volumes_of_class(datalist, BRAIN, table, root, {"diagnosis": "AD", "sex": "F", "age": "71"})
    with pytest.raises(ValueError, match="a labels file is given but class_labels is not set"):
        volumes_of_class(datalist, None, table, root, None)
    with pytest.raises(DatasetError, match=r"'sub-09' is no held-out volume"):
        table.write_text("file,diagnosis,sex\nsub-01/anat/t1.nii.gz,AD,F\nsub-02/anat/t1.nii.gz,CN,M\nsub-03,AD,F\nsub-09,CN,F\n")
        volumes_of_class(datalist, BRAIN, table, root, None, "heldout_labels_file", "held-out")
