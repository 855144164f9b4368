"""Categorical labels per volume, read the way datasets ship them, for class-conditional latent diffusion.

A bundle declares its labelled variables and their classes (``class_labels``, e.g. ``{"acl": ["intact", "tear"]}``);
each training volume then gets the class index of every variable, as an integer tensor under ``LABELS_KEY``.
Labels come from MRNet's CSV files as released (``mrnet_labels``) or from a table of ``file,<variable>...`` as CSV
or JSON (``read_labels_file``) for NIfTI, DICOM and other datasets. Every problem (a row naming no volume, a
volume with no row or two, a class not declared, a missing column) is a ``DatasetError`` that names the file and
the row, raised before training. Inference asks for labels by class name (``requested_labels``).
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .checks import DatasetError
from .nifti import nifti_stem

__all__ = [
    "LABELS_KEY",
    "LabelRow",
    "check_class_labels",
    "class_counts",
    "class_names",
    "label_indices",
    "labels_description",
    "labelled_datalist",
    "mrnet_labels",
    "read_labels_file",
    "requested_labels",
    "volumes_of_class",
]

LABELS_KEY = "class_labels"  # the datalist entry (and batch entry) holding a volume's labels
FILE_COLUMN = "file"
MRNET_TASKS = ("abnormal", "acl", "meniscus")  # MRNet's label files: <split>-<task>.csv, rows "<case>,<0 or 1>"


class LabelRow(NamedTuple):
    """One volume's labels as read: where (file and line, for errors), which volume (a path or name) and the class
    index of every variable, in the order of ``class_labels``."""

    where: str
    volume: str
    indices: tuple[int, ...]


def check_class_labels(class_labels: Mapping[str, Sequence[str]] | None) -> dict[str, tuple[str, ...]] | None:
    """``class_labels`` checked: None (unconditional), or variable names mapped to at least 2 distinct class names."""
    if class_labels is None:
        return None
    if not isinstance(class_labels, Mapping) or not class_labels:
        raise ValueError(f"class_labels must map each labelled variable to its class names, e.g. "
                         f"{{'acl': ['intact', 'tear']}}, or be None; got {class_labels!r}.")
    checked = {}
    for name, classes in class_labels.items():
        if not isinstance(name, str) or not name or name == FILE_COLUMN:
            raise ValueError(f"class_labels: {name!r} cannot name a variable (a non-empty string other than '{FILE_COLUMN}').")
        if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
            raise ValueError(f"class_labels['{name}'] must be a list of class names, got {classes!r}.")
        names = tuple(str(c) for c in classes)
        if len(names) < 2 or len(set(names)) != len(names) or not all(names):
            raise ValueError(f"class_labels['{name}'] must list at least 2 distinct, non-empty class names, got {list(classes)!r}.")
        checked[name] = names
    return checked


def class_counts(class_labels: Mapping[str, Sequence[str]] | None) -> list[int] | None:
    """The number of classes of each variable (what the denoiser's ``class_counts`` takes), or None."""
    checked = check_class_labels(class_labels)
    return None if checked is None else [len(classes) for classes in checked.values()]


def label_indices(row: Mapping[str, Any], class_labels: Mapping[str, Sequence[str]], where: str) -> tuple[int, ...]:
    """The class index of every variable of ``class_labels`` in ``row`` (class names, by variable); ``ValueError``
    naming ``where``, the variable and the declared classes for a missing variable or an undeclared class."""
    indices = []
    for name, classes in check_class_labels(class_labels).items():
        if name not in row or row[name] is None or str(row[name]).strip() == "":
            raise ValueError(f"{where}: no class given for '{name}' (one of {list(classes)}).")
        value = str(row[name]).strip()
        if value not in classes:
            raise ValueError(f"{where}: '{name}' is {value!r}, not one of its classes {list(classes)} (class_labels).")
        indices.append(classes.index(value))
    return tuple(indices)


def read_labels_file(path: str | os.PathLike, class_labels: Mapping[str, Sequence[str]]) -> list[LabelRow]:
    """The rows of a labels table: a CSV with a header ``file,<variable>,...`` (other columns are ignored), or a JSON
    object ``{"<file>": {"<variable>": "<class>", ...}, ...}`` or list of ``{"file": ..., "<variable>": ...}``.

    ``file`` is a volume's path relative to the dataset folder, an absolute path, its name (the file name without
    ``.nii``/``.nii.gz``/``.npy``, or the series folder's name) when that names one volume, or a folder under the
    dataset folder, whose volumes all take the row's labels (a patient's folder, for labels per patient as
    clinical tables give them). Cells are class names as declared in ``class_labels``.
    """
    classes = check_class_labels(class_labels)
    if classes is None:
        raise ValueError("class_labels must be set to read a labels file.")
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"labels file {path} does not exist (or is not a file).")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise DatasetError(f"labels file {path}: expected a .csv or .json table of {FILE_COLUMN},{','.join(classes)}.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"labels file {path} cannot be read ({type(error).__name__}: {error}).") from error
    records = _csv_records(path, text, classes) if suffix == ".csv" else _json_records(path, text)
    rows, problems = [], []
    for where, record in records:
        volume = record.get(FILE_COLUMN)
        if volume is None or str(volume).strip() == "":
            problems.append(f"{where}: no '{FILE_COLUMN}' given.")
            continue
        try:
            rows.append(LabelRow(where, str(volume).strip(), label_indices(record, classes, where)))
        except ValueError as error:
            problems.append(str(error))
    if not rows and not problems:
        problems.append(f"labels file {path} has no rows.")
    _raise_if_problems(problems, f"the labels file {path}")
    return rows


def _csv_records(path: Path, text: str, classes: Mapping[str, Any]) -> list[tuple[str, dict[str, str]]]:
    try:
        reader = csv.DictReader(text.splitlines())
        header = [name.strip() for name in reader.fieldnames or []]
        reader.fieldnames = header
        records = [(f"{path} line {reader.line_num}", record) for record in reader]
    except csv.Error as error:
        raise DatasetError(f"labels file {path} is not a readable CSV table ({error}).") from error
    missing = [name for name in (FILE_COLUMN, *classes) if name not in header]
    if missing:
        raise DatasetError(f"labels file {path}: the header {header} lacks {missing}; expected "
                           f"{FILE_COLUMN},{','.join(classes)} (the variables of class_labels).")
    return records


def _json_records(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    try:
        content = json.loads(text)
    except json.JSONDecodeError as error:
        raise DatasetError(f"labels file {path} is not valid JSON ({error}).") from error
    if isinstance(content, Mapping):
        items = [(f"{path} entry '{key}'", {FILE_COLUMN: key, **value} if isinstance(value, Mapping) else None)
                 for key, value in content.items()]
    elif isinstance(content, list):
        items = [(f"{path} item {i}", value if isinstance(value, Mapping) else None) for i, value in enumerate(content)]
    else:
        items = [(str(path), None)]
    bad = [where for where, record in items if record is None]
    if bad:
        raise DatasetError(f"labels file {path}: expected an object of {{file: {{variable: class}}}} or a list of "
                           f"{{'file': ..., variable: class}} objects; not so at {', '.join(bad[:5])}.")
    return items


def mrnet_labels(
    dataset_dir: str | os.PathLike,
    class_labels: Mapping[str, Sequence[str]],
    plane: str = "sagittal",
    splits: Sequence[str] = ("train", "valid"),
) -> list[LabelRow]:
    """The labels of the MRNet release: ``<split>-<task>.csv`` beside ``train/`` and ``valid/``, one row
    ``<case>,<0 or 1>`` per exam (no header), for the tasks abnormal, acl and meniscus. Each variable of
    ``class_labels`` must be one of those tasks with 2 classes (the first for 0, the second for 1). Read for every
    split whose ``<split>/<plane>`` folder exists; the rows name the exams ``<split>/<plane>/<case>.npy``."""
    classes = check_class_labels(class_labels)
    if classes is None:
        raise ValueError("class_labels must be set to read MRNet's labels.")
    unknown = [name for name, names in classes.items() if name not in MRNET_TASKS or len(names) != 2]
    if unknown:
        raise ValueError(f"MRNet labels 2 classes of each of {list(MRNET_TASKS)}; class_labels declares {unknown} "
                         f"otherwise: {{{', '.join(f'{n!r}: {list(classes[n])}' for n in unknown)}}}.")
    root = Path(dataset_dir).expanduser()
    present = [split for split in splits if (root / split / plane).is_dir()]
    if not present:
        raise DatasetError(f"dataset_dir {root} has no {' or '.join(f'{s}/{plane}' for s in splits)} folder (as in MRNet-v1.0).")
    rows, problems = [], []
    for split in present:
        by_case: dict[int, dict[str, tuple[str, int]]] = {}
        for task in classes:
            table = root / f"{split}-{task}.csv"
            if not table.is_file():
                problems.append(f"{table}: missing (MRNet-v1.0 ships it beside {split}/; class_labels asks for '{task}').")
                continue
            for line, cells in enumerate(csv.reader(table.read_text(encoding="utf-8-sig").splitlines()), 1):
                if not cells or not "".join(cells).strip():
                    continue
                where = f"{table} line {line}"
                try:
                    case, value = (int(cell.strip()) for cell in cells)
                except ValueError:
                    problems.append(f"{where}: expected '<case number>,<0 or 1>', got {','.join(cells)!r}.")
                    continue
                if value not in (0, 1):
                    problems.append(f"{where}: the label of case {case:04d} is {value}, not 0 or 1.")
                elif task in by_case.setdefault(case, {}):
                    problems.append(f"{where}: case {case:04d} again (first at {by_case[case][task][0]}).")
                else:
                    by_case[case][task] = (where, value)
        for case, found in sorted(by_case.items()):
            lacking = [task for task in classes if task not in found]
            if lacking:
                problems.append(f"case {case:04d} of {split} has no row in {', '.join(f'{split}-{t}.csv' for t in lacking)}.")
                continue
            where = found[next(iter(classes))][0]
            rows.append(LabelRow(where, str(root / split / plane / f"{case:04d}.npy"), tuple(found[t][1] for t in classes)))
    _raise_if_problems(problems, f"MRNet's labels in {root}")
    return rows


def _raise_if_problems(problems: Sequence[str], what: str) -> None:
    """One ``DatasetError`` listing every problem (the first 20) with ``what``."""
    if problems:
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DatasetError(f"{len(problems)} problems with {what}:\n  " + "\n  ".join(problems[:20]) + more)


def _names(volume: str, dataset_dir: Path | None) -> tuple[list[str], list[str]]:
    """The ways a labels table may name a volume: its absolute path, its path relative to the dataset folder and
    its name; and the folders it lies in under the dataset folder (a patient's folder labels all its volumes)."""
    path = Path(volume).expanduser().resolve()
    names, folders = [str(path)], []
    if dataset_dir is not None:
        try:
            relative = path.relative_to(dataset_dir.resolve())
        except ValueError:
            relative = None
        if relative is not None:
            names.append(relative.as_posix())
            folders = [parent.as_posix() for parent in relative.parents if parent.parts]
    names.append(nifti_stem(path) if path.suffix else path.name)
    return names, folders


def labelled_datalist(
    datalist: Sequence[Mapping[str, Any]],
    class_labels: Mapping[str, Sequence[str]] | None,
    labels: str | os.PathLike | Sequence[LabelRow] | None,
    dataset_dir: str | os.PathLike | None = None,
    image_key: str = "image",
    kind: str = "training",
) -> list[dict[str, Any]]:
    """``datalist`` with every volume's labels under ``LABELS_KEY`` (an integer tensor, one class index per
    variable); unchanged when ``class_labels`` is None.

    Args:
        datalist: the bundle's training datalist.
        class_labels: the labelled variables and their classes; None: unconditional.
        labels: a labels file (``read_labels_file``) or rows already read (``mrnet_labels``).
        dataset_dir: the folder that relative paths in the labels file start from.
        image_key: the entry naming each volume.
        kind: what the volumes are, for the errors ("training", "held-out").

    ``DatasetError`` (every problem, each naming the labels file and row) for a row that names no volume of the
    datalist or several, a volume with two rows or none.
    """
    classes = check_class_labels(class_labels)
    if classes is None:
        if labels is not None:
            raise ValueError("a labels file is given but class_labels is not set: declare the labelled variables and "
                             "their classes (--class_labels), or leave out the labels file to train unconditionally.")
        return [dict(item) for item in datalist]
    if labels is None:
        raise ValueError(f"class_labels {dict(classes)} is set, so every {kind} volume needs its labels: give a "
                         f"labels file (--labels_file, a CSV or JSON of {FILE_COLUMN},{','.join(classes)}).")
    source = labels if isinstance(labels, (str, os.PathLike)) else None
    rows = read_labels_file(labels, classes) if source is not None else list(labels)
    root = Path(dataset_dir).expanduser() if dataset_dir is not None else None
    volumes: dict[str, set[str]] = {}  # a name -> the volumes it names
    folders: dict[str, set[str]] = {}  # a folder under dataset_dir -> the volumes in it
    for item in datalist:
        image = str(item[image_key])
        names, parents = _names(image, root)
        for name in names:
            volumes.setdefault(name, set()).add(image)
        for folder in parents:
            folders.setdefault(folder, set()).add(image)
    found: dict[str, LabelRow] = {}
    problems = []
    for row in rows:
        name = row.volume
        if Path(name).expanduser().is_absolute():
            name = str(Path(name).expanduser().resolve())
        name = name if name in volumes or name in folders else Path(name).as_posix().strip("/")
        named = volumes.get(name) or folders.get(name)
        if not named:
            problems.append(f"{row.where}: '{row.volume}' is no {kind} volume (a path relative to {root or 'the dataset folder'}, "
                            "an absolute path, a volume's name, or a folder of volumes under the dataset folder).")
            continue
        if name not in folders and len(named) > 1:
            problems.append(f"{row.where}: '{row.volume}' names {len(named)} volumes ({', '.join(sorted(named)[:3])}...); give the path.")
            continue
        for image in sorted(named):
            if image in found:
                problems.append(f"{row.where}: {image} has labels already ({found[image].where}).")
            else:
                found[image] = row
    unlabelled = sorted({str(item[image_key]) for item in datalist} - set(found))
    problems += [f"{image}: no row in {source or 'the labels'}." for image in unlabelled]
    _raise_if_problems(problems, f"the labels of {len(datalist)} {kind} volumes")
    return [{**item, LABELS_KEY: torch.tensor(found[str(item[image_key])].indices, dtype=torch.long)} for item in datalist]


def volumes_of_class(
    datalist: Sequence[Mapping[str, Any]],
    class_labels: Mapping[str, Sequence[str]] | None,
    labels: str | os.PathLike | Sequence[LabelRow] | None,
    dataset_dir: str | os.PathLike | None,
    wanted: Mapping[str, str] | None,
    setting: str = "labels_file",
    kind: str = "training",
) -> list[dict[str, Any]]:
    """The volumes of ``datalist`` whose labels are the class ``wanted`` (class names by variable, every variable):
    the real volumes that samples asked for that class are compared with. All of them when ``wanted`` is None.

    ``labels`` is read and checked as for training (``labelled_datalist``) whenever given. ``setting`` names the
    labels file's config id in the errors: a class wanted without labels to select by, a request that is not one
    class for all samples, or no volume of the class.
    """
    if labels is not None or class_labels is None:
        datalist = labelled_datalist(datalist, class_labels, labels, dataset_dir, kind=kind)
    if wanted is None:
        return [dict(item) for item in datalist]
    classes = check_class_labels(class_labels)
    if classes is None:
        raise ValueError(f"the {kind} volumes are to be of the class {dict(wanted)!r}, but the model is unconditional "
                         "(class_labels is not set).")
    if not isinstance(wanted, Mapping):
        raise ValueError(f"comparing samples with the real volumes of their class needs one {{variable: class}} for "
                         f"all samples (labels), got {wanted!r}: evaluate one class at a time, or leave out {setting} "
                         "to compare the samples with the volumes of every class.")
    if labels is None:
        raise ValueError(f"the samples are of the class {dict(wanted)!r} and are compared with the {kind} volumes of "
                         f"that class, so those volumes need their labels too: set {setting} (a CSV or JSON of "
                         f"{FILE_COLUMN},{','.join(classes)}).")
    unknown = sorted(set(wanted) - set(classes))
    if unknown:
        raise ValueError(f"{unknown} are no labelled variables (class_labels: {list(classes)}).")
    indices = torch.tensor(label_indices(wanted, classes, "the class evaluated"), dtype=torch.long)
    chosen = [item for item in datalist if torch.equal(item[LABELS_KEY], indices)]
    if not chosen:
        counts = Counter(tuple(int(i) for i in item[LABELS_KEY]) for item in datalist)
        found = ", ".join(f"{labels_description(class_names(key, classes))}: {n}" for key, n in sorted(counts.items()))
        raise DatasetError(f"no {kind} volume is of the class {labels_description(dict(wanted))} in {setting} "
                           f"({labels if isinstance(labels, (str, os.PathLike)) else 'the labels read'}); it has {found}.")
    return chosen


def class_names(indices: Sequence[int], classes: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Class indices (one per variable, in the order of ``class_labels``) as class names by variable: the inverse of
    ``label_indices``."""
    return {name: names[int(i)] for (name, names), i in zip(classes.items(), indices)}


def labels_description(asked: Mapping[str, str] | None) -> str:
    """The labels a class-conditional sample was asked for, as its NIfTI header says them: "acl=tear
    meniscus=intact", or "no label" (the unconditional model)."""
    return "no label" if asked is None else " ".join(f"{name}={value}" for name, value in asked.items())


def requested_labels(
    labels: Mapping[str, str] | Sequence[Mapping[str, str]] | str | os.PathLike | None,
    class_labels: Mapping[str, Sequence[str]] | None,
    num_samples: int,
) -> list[tuple[dict[str, str] | None, tuple[int, ...] | None]]:
    """The labels asked for each of ``num_samples`` samples: (class names by variable, class indices), or
    (None, None) for a sample asked for no label (the unconditional model).

    ``labels``: None (no label for any sample); one ``{variable: class}`` for every sample; a list of them, one per
    sample (None items ask for no label); or a CSV (header: the variables) or JSON list file of them, one row per
    sample. Each asks for every variable or none.
    """
    classes = check_class_labels(class_labels)
    if labels is None:
        return [(None, None)] * num_samples
    if classes is None:
        raise ValueError("labels are asked for, but the model is unconditional (class_labels is not set).")
    if isinstance(labels, (str, os.PathLike)):
        wanted, where = _requested_from_file(Path(labels).expanduser()), str(labels)
    elif isinstance(labels, Mapping):
        wanted, where = [dict(labels)] * num_samples, "labels"
    elif isinstance(labels, Sequence):
        wanted, where = list(labels), "labels"
    else:
        raise ValueError(f"labels must be a {{variable: class}} mapping, a list of them or a file, got {labels!r}.")
    if len(wanted) != num_samples:
        raise ValueError(f"{where} asks for {len(wanted)} samples' labels but num_samples is {num_samples}: give one "
                         "per sample, or a single {variable: class} for all.")
    result: list[tuple[dict[str, str] | None, tuple[int, ...] | None]] = []
    for index, row in enumerate(wanted):
        if row is None:
            result.append((None, None))
            continue
        if not isinstance(row, Mapping):
            raise ValueError(f"{where}, sample {index}: expected a {{variable: class}} mapping, got {row!r}.")
        unknown = sorted(set(row) - set(classes))
        if unknown:
            raise ValueError(f"{where}, sample {index}: {unknown} are no labelled variables (class_labels: {list(classes)}).")
        indices = label_indices(row, classes, f"{where}, sample {index}")
        result.append(({name: str(row[name]).strip() for name in classes}, indices))
    return result


def _requested_from_file(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise ValueError(f"labels file {path} does not exist (or is not a file).")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
        return [dict(row) for row in reader]
    if path.suffix.lower() == ".json":
        content = json.loads(text)
        if isinstance(content, list):
            return content
    raise ValueError(f"labels file {path}: expected a CSV with the variables as header, or a JSON list of "
                     "{variable: class} objects, one per sample.")
