"""Embedded demo data: small synthetic volumes in each dataset's real on-disk format, made on the fly.

They let every bundle command run on a fresh machine with no download. Brains: real anatomy, a population made
from one real skull-stripped T1 brain (``common.data.brain_population``), with held-out subjects that are never
trained on. (``make_brain_phantom``, the geometric brain of release 0.1, stays until 0.3.) Knees: sagittal fat-suppressed-T2-like exams in the MRNet layout
(``train/sagittal/NNNN.npy``, uint8, slices x 256 x 256) with femur, tibia, patella, cartilage, joint fluid and
soft tissue. Chest CTs: DICOM series (int16 with rescale slope and intercept) of a body with lungs, heart, spine
and ribs in Hounsfield units. Breast MRIs: axial non-fat-saturated T1 MR series (bright fat, darker glandular
tissue, dark pectoral muscle) with NIfTI breast masks, as the Duke layout. Heads with tumours: T1c-like whole-head
volumes with a ring-enhancing tumour and their label masks (0 background, 1 head, 2 tumour) as image/label pairs;
and brains of the real-anatomy population with a simulated lesion each (``common.data.lesions``: BraTS labels for
the necrotic core, the oedema and the enhancing rim) as image/label pairs, with held-out pairs.
Each subject has its own shape, size and contrast. Apart from the brains they are not anatomy; they exercise the
real readers and preprocessing end to end.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter

from common.io import atomic_path

from .brain_population import VENTRICLE_CLASSES, deform_brain, enlarge_ventricles, load_template, write_subject
from .lesions import add_lesion
from .breast import breast_datalist
from .pairs import paired_datalist

__all__ = [
    "brain_demo_datalist",
    "brain_demo_heldout_datalist",
    "brain_lesion_demo_datalist",
    "breast_demo_datalist",
    "chest_demo_datalist",
    "knee_demo_datalist",
    "tumor_demo_datalist",
    "make_brain_phantom",
    "make_breast_phantom",
    "make_chest_phantom",
    "make_tumor_phantom",
    "make_knee_phantom",
    "write_breast_mask",
    "write_dicom_series",
]


def _write_once(path: Path, write: Callable[[str], None], directory: bool = False) -> None:
    """Write ``path`` (a file, or with ``directory`` a folder) through ``atomic_path`` unless it exists.

    Several processes (e.g. torchrun ranks) may make the same demo file at once; each writes its own temporary
    file or folder, and whichever renames last wins with identical content (a folder that another process
    renamed into place first is kept).
    """
    if path.exists():
        return
    try:
        with atomic_path(path, directory=directory) as tmp:
            write(str(tmp))
    except OSError:
        if not path.exists():  # a failure of our own, not another process that got there first
            raise


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    field = gaussian_filter(rng.standard_normal(shape), sigma)
    return field / (field.std() + 1e-8)


def make_brain_phantom(rng: np.random.Generator, shape: tuple[int, int, int] = (48, 56, 48)) -> np.ndarray:
    """One synthetic T1-like brain, float32 of ``shape`` (L-R, P-A, I-S), background 0."""
    axes = [np.linspace(-1, 1, n) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    radii = rng.uniform(0.72, 0.9, size=3)
    centre = rng.uniform(-0.05, 0.05, size=3)
    r = np.sqrt(((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2)
    folds = 0.06 * _smooth_noise(rng, shape, 1.5)  # gyri-like folding of the surface and the grey-white border
    brain = r + folds < 1.0
    white = r + folds < rng.uniform(0.74, 0.84)
    ventricles = np.zeros(shape, dtype=bool)
    size = rng.uniform(0.08, 0.16, size=3) * np.array([1.0, 2.5, 1.5])
    for side in (-1, 1):
        offset = np.array([side * rng.uniform(0.1, 0.16), rng.uniform(-0.05, 0.1), rng.uniform(0.0, 0.15)])
        ventricles |= (((x - offset[0]) / size[0]) ** 2 + ((y - offset[1]) / size[1]) ** 2 + ((z - offset[2]) / size[2]) ** 2) < 1
    grey_level, white_level = rng.uniform(0.45, 0.6), rng.uniform(0.8, 0.95)
    volume = np.where(white, white_level, grey_level)
    volume = np.where(ventricles & white, rng.uniform(0.1, 0.2), volume)
    volume = volume * (1 + 0.05 * _smooth_noise(rng, shape, 3.0)) + 0.02 * rng.standard_normal(shape)
    return np.where(brain, np.clip(volume, 0.01, None), 0.0).astype(np.float32)


def _brain_subjects(folder: Path, kind: str, count: int, seed: int) -> list[dict[str, str]]:
    """``count`` subjects of the real-anatomy population in ``folder/<kind>``, written there first if missing. Each
    subject has its own random stream (``seed``, the kind, its index), so the held-out subjects never depend on how
    many training subjects there are."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}.")
    template, affine = load_template()
    (folder / kind).mkdir(parents=True, exist_ok=True)
    stream = {"train": 0, "heldout": 1}[kind]
    datalist = []
    for index in range(count):
        path = folder / kind / f"demo_brain_{kind}_{index:03d}.nii.gz"
        if not path.exists():
            volume = deform_brain(template, np.random.default_rng([seed, stream, index]))
            _write_once(path, lambda tmp: write_subject(volume, affine, tmp))
        datalist.append({"image": str(path)})
    return datalist


def brain_lesion_demo_datalist(
    folder: str | os.PathLike, kind: str = "train", count: int = 16, seed: int = 0, radius_range: tuple[float, float] = (4.0, 8.0)
) -> list[dict[str, str]]:
    """Datalist ``[{"image", "label"}, ...]`` of ``count`` real-anatomy brains with a simulated lesion each
    (``common.data.lesions``: BraTS labels 1 necrotic core, 2 oedema, 4 enhancing rim), as image/label pairs in
    ``folder/<kind>/images`` and ``folder/<kind>/labels`` (written there first if missing; 2 mm voxels, RAS), read
    back by ``common.data.paired_datalist`` as the Med-DDPM bundle reads its data. ``kind`` "train" or "heldout":
    each pair has its own random stream (``seed``, the kind, its index), so held-out pairs are other subjects with
    other lesions and never depend on how many training pairs there are. ``radius_range``: the tumours' mean radii
    in voxels (``add_lesion``); pairs already in the folder are kept as they are, so give each size its own folder."""
    if kind not in ("train", "heldout"):
        raise ValueError(f"kind must be 'train' or 'heldout', got {kind!r}.")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}.")
    root = Path(folder) / kind
    template, affine = load_template()
    stream = {"train": 2, "heldout": 3}[kind]  # other streams than the brains of brain_demo_datalist
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        name = f"demo_lesion_{kind}_{index:03d}.nii.gz"
        if (root / "images" / name).exists() and (root / "labels" / name).exists():
            continue
        rng = np.random.default_rng([seed, stream, index])
        image, labels, _ = add_lesion(deform_brain(template, rng), rng, radius_range=radius_range)
        _write_once(root / "images" / name, lambda tmp: write_subject(image, affine, tmp))
        _write_once(root / "labels" / name, lambda tmp: nib.save(nib.Nifti1Image(labels, affine), tmp))
    return paired_datalist(root)


def brain_demo_datalist(folder: str | os.PathLike, count: int = 20, seed: int = 0) -> list[dict[str, str]]:
    """Datalist of ``count`` demo brains for training, in ``folder/train`` (written there first if missing): real
    anatomy, the population of ``common.data.brain_population`` (2 mm voxels, RAS, int16 NIfTI)."""
    return _brain_subjects(Path(folder), "train", count, seed)


def brain_demo_heldout_datalist(folder: str | os.PathLike, count: int = 8, seed: int = 0) -> list[dict[str, str]]:
    """Datalist of ``count`` demo brains that are never trained on, in ``folder/heldout``: other subjects of the
    same population, for the held-out measures of the evaluation (``heldout_dir``)."""
    return _brain_subjects(Path(folder), "heldout", count, seed)


def brain_ventricles_demo_datalist(
    folder: str | os.PathLike, kind: str = "train", count: int = 10, seed: int = 0, amount: float = 4.0,
) -> list[dict[str, str]]:
    """Two classes of demo brains for class-conditional generation: ``count`` normal ones in
    ``folder/<kind>/normal`` and ``count`` with enlarged ventricles (``enlarge_ventricles`` by ``amount``) in
    ``folder/<kind>/enlarged``, written there first if missing, and ``folder/<kind>/labels.csv`` labelling each
    class folder (``file,ventricles``: every volume of a folder takes its row). ``kind`` "train" or "heldout": each
    brain has its own random stream (``seed``, the kind, the class, its index), so held-out brains are other
    subjects. Returns the datalist, each item with its class name under ``"ventricles"``."""
    if kind not in ("train", "heldout"):
        raise ValueError(f"kind must be 'train' or 'heldout', got {kind!r}.")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}.")
    template, affine = load_template()
    root = Path(folder) / kind
    datalist = []
    for number, name in enumerate(VENTRICLE_CLASSES):
        anatomy = enlarge_ventricles(template, amount) if name == "enlarged" else template
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            path = root / name / f"demo_brain_{kind}_{name}_{index:03d}.nii.gz"
            if not path.exists():
                volume = deform_brain(anatomy, np.random.default_rng([seed, 4 + {"train": 0, "heldout": 1}[kind], number, index]))
                _write_once(path, lambda tmp: write_subject(volume, affine, tmp))
            datalist.append({"image": str(path), "ventricles": name})
    labels = root / "labels.csv"
    if not labels.exists():
        _write_once(labels, lambda tmp: Path(tmp).write_text("file,ventricles\n" + "".join(f"{c},{c}\n" for c in VENTRICLE_CLASSES)))
    return datalist


def make_knee_phantom(rng: np.random.Generator, slices: int = 28) -> np.ndarray:
    """One synthetic sagittal knee exam, uint8 of shape (slices, 256, 256) like an MRNet file."""
    y, x = np.meshgrid(np.linspace(-1, 1, 256), np.linspace(-1, 1, 256), indexing="ij")  # y: superior-inferior
    joint = rng.uniform(-0.1, 0.1)  # height of the joint line
    exam = np.empty((slices, 256, 256), dtype=np.float32)
    for index in range(slices):
        lateral = (index - slices / 2) / slices  # medial-lateral position of the slice in [-0.5, 0.5]
        width = np.sqrt(max(1.0 - (2 * lateral) ** 2, 0.05))
        femur = ((x / (0.33 * width)) ** 2 + ((y - joint + 0.32) / 0.3) ** 2 < 1) | ((np.abs(x) < 0.18 * width) & (y < joint - 0.3))
        tibia = (np.abs(x) < 0.34 * width) & (y > joint + 0.06) & (y < joint + 0.9)
        patella = ((x - 0.45) / 0.08) ** 2 + ((y - joint + 0.35) / 0.16) ** 2 < width
        cartilage = ~femur & ~tibia & (((x / (0.36 * width)) ** 2 + ((y - joint + 0.32) / 0.33) ** 2 < 1) | (np.abs(x) < 0.36 * width) & (np.abs(y - joint - 0.03) < 0.04))
        soft = (x / 0.8) ** 2 + (y / 1.2) ** 2 < 1
        slice_ = np.where(soft, 0.35, 0.02)
        slice_ = np.where(cartilage, 0.75, slice_)
        slice_ = np.where(femur | tibia | patella, 0.2, slice_)  # fat-suppressed marrow is dark
        exam[index] = slice_
    near_joint = np.abs(y - joint) < 0.25
    fluid = (_smooth_noise(rng, exam.shape, 4.0) > 1.6) & near_joint[None]  # bright joint-fluid pockets
    exam = np.where(fluid & (exam > 0.3), 0.95, exam)
    exam = exam * (1 + 0.08 * _smooth_noise(rng, exam.shape, 6.0)) + 0.03 * rng.standard_normal(exam.shape)
    return (np.clip(exam, 0, 1) * 255).astype(np.uint8)


def knee_demo_datalist(folder: str | os.PathLike, count: int = 12, seed: int = 0) -> list[dict[str, str]]:
    """Datalist of ``count`` demo knee exams in MRNet layout under ``folder``, written there first if missing."""
    sagittal = Path(folder) / "train" / "sagittal"
    sagittal.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    datalist = []
    for index in range(count):
        path = sagittal / f"{index:04d}.npy"
        exam = make_knee_phantom(rng, slices=int(rng.integers(22, 40)))  # MRNet exams vary in slice count
        _write_once(path, lambda tmp: np.save(tmp, exam))
        datalist.append({"image": str(path)})
    return datalist


def make_chest_phantom(rng: np.random.Generator, shape: tuple[int, int, int] = (64, 64, 48)) -> np.ndarray:
    """One synthetic chest CT in Hounsfield units, float32 of ``shape`` (rows, columns, slices)."""
    r, c, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")  # r: anterior-posterior
    body = (c / rng.uniform(0.8, 0.92)) ** 2 + (r / rng.uniform(0.55, 0.7)) ** 2 < 1
    lung_size = rng.uniform(0.25, 0.33)
    lungs = np.zeros(shape, dtype=bool)
    for side in (-1, 1):
        lungs |= ((c - side * 0.4) / lung_size) ** 2 + (r / 0.42) ** 2 + ((z - 0.1) / 1.1) ** 2 < 1
    heart = ((c - 0.08) / 0.22) ** 2 + ((r + 0.15) / 0.25) ** 2 + ((z + 0.3) / 0.45) ** 2 < 1
    spine = (c / 0.09) ** 2 + ((r - 0.45) / 0.09) ** 2 < 1
    ribs = body & ~((c / 0.82) ** 2 + (r / 0.58) ** 2 < 0.9) & (np.sin(z * rng.uniform(14, 18)) > 0.6)
    hu = np.where(body, 40.0, -1000.0)
    hu = np.where(lungs & ~heart, -850.0, hu)
    hu = np.where(spine | ribs, 700.0, hu)
    hu = hu + 25 * _smooth_noise(rng, shape, 1.5) * body + 10 * rng.standard_normal(shape)
    return hu.astype(np.float32)


def write_dicom_series(
    hu: np.ndarray,
    folder: str | os.PathLike,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    slope: float = 1.0,
    intercept: float = -1024.0,
    modality: str = "CT",
    series_uid: str | None = None,
    series_description: str = "",
    patient_id: str = "DEMO",
) -> list[str]:
    """Write a (rows, columns, slices) volume as an axial DICOM series, one file per slice (CT or MR storage).

    Stored values are ``(hu - intercept) / slope`` as int16 with ``RescaleSlope``/``RescaleIntercept``, so a
    reader that applies them gets ``hu`` back (to the rounding of the stored integers).
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import (
        CTImageStorage,
        ExplicitVRLittleEndian,
        MRImageStorage,
        generate_uid,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    stored = np.round((hu - intercept) / slope).astype(np.int16)
    sop_class = MRImageStorage if modality == "MR" else CTImageStorage
    paths = []
    for index in range(hu.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID, ds.SeriesDescription = modality, patient_id, series_description
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(index * spacing[2])]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = hu.shape[0], hu.shape[1]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = float(slope), float(intercept)
        ds.PixelData = np.ascontiguousarray(stored[:, :, index]).tobytes()
        path = folder / f"{index + 1:04d}.dcm"
        with atomic_path(path) as tmp:
            pydicom.dcmwrite(str(tmp), ds, enforce_file_format=True)
        paths.append(str(path))
    return paths


def chest_demo_datalist(folder: str | os.PathLike, count: int = 8, seed: int = 0) -> list[dict[str, str]]:
    """Datalist of ``count`` demo chest CT series (one folder each, LIDC-like nesting), written first if missing."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    datalist = []
    for index in range(count):
        patient = folder / f"DEMO-{index:04d}"
        hu = make_chest_phantom(rng)
        spacing = (5.0, 5.0, float(rng.choice([5.0, 6.0, 7.0])))  # 320 mm field of view, varying slice distance
        folder.mkdir(parents=True, exist_ok=True)
        _write_once(patient, lambda tmp: write_dicom_series(hu, Path(tmp) / "study" / "series", spacing=spacing), directory=True)
        datalist.append({"image": str(patient / "study" / "series")})
    return datalist


def make_breast_phantom(rng: np.random.Generator, shape: tuple[int, int, int] = (48, 96, 16)) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic axial breast T1 MRI and its breast mask, (rows, columns, slices) as a DICOM series stores them.

    Rows run from anterior to posterior and columns from the patient's right to left (DICOM's default axial
    orientation). Two breasts hang in front of the chest wall; fat is bright and glandular tissue darker, as in a
    non-fat-saturated T1 image. Returns the intensities (float32, 0 to about 1000) and the mask (uint8).
    """
    r, c, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")  # r: anterior (-1) to posterior
    wall = rng.uniform(-0.05, 0.15)  # chest wall position along the rows
    breasts = np.zeros(shape, dtype=bool)
    for side in (-1, 1):
        radius = rng.uniform(0.3, 0.42)
        breasts |= ((c - side * 0.45) / radius) ** 2 + ((r - wall) / rng.uniform(0.7, 0.95)) ** 2 + (z / 1.2) ** 2 < 1
    breasts &= r < wall
    thorax = ((c / 0.95) ** 2 + ((r - wall - 0.6) / 0.6) ** 2 < 1) & (r >= wall)
    muscle = thorax & (r < wall + 0.12)
    glandular = breasts & (_smooth_noise(rng, shape, 3.0) > rng.uniform(0.2, 0.8))
    image = np.where(breasts | thorax, 850.0, 0.0)  # fat
    image = np.where(glandular, 380.0, image)
    image = np.where(muscle, 250.0, image)
    image = np.where(thorax & ~muscle & ((c / 0.5) ** 2 + ((r - wall - 0.55) / 0.35) ** 2 < 1), 120.0, image)  # heart/lungs
    image = image * (1 + 0.05 * _smooth_noise(rng, shape, 2.0)) + 15 * np.abs(rng.standard_normal(shape))
    return image.astype(np.float32), breasts.astype(np.uint8)


def write_breast_mask(mask: np.ndarray, path: str | os.PathLike, spacing: tuple[float, float, float]) -> None:
    """Write a (rows, columns, slices) mask of a series from ``write_dicom_series`` as NIfTI in the same space.

    The series' pixel (row i, column j, slice k) lies at LPS (j * column spacing, i * row spacing, k * slice
    distance), which is RAS (-j * column spacing, -i * row spacing, k * slice distance).
    """
    affine = np.diag([-spacing[1], -spacing[0], spacing[2], 1.0])
    with atomic_path(path) as tmp:
        nib.save(nib.Nifti1Image(np.ascontiguousarray(mask.transpose(1, 0, 2)), affine), str(tmp))


def breast_demo_datalist(folder: str | os.PathLike, count: int = 6, seed: int = 0) -> list[dict[str, str]]:
    """Datalist of ``count`` demo breast MRI series (Duke-like nesting) with NIfTI breast masks.

    Written to ``folder/dicom`` and ``folder/masks`` first if missing. When there are several patients the last
    has no mask, so the crop fallback for a series without one runs too.
    """
    folder = Path(folder)
    (folder / "dicom").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    spacing = (2.0, 2.0, 6.0)
    for index in range(count):
        patient = f"DEMO_{index:03d}"
        image, mask = make_breast_phantom(rng)
        _write_once(
            folder / "dicom" / patient,
            lambda tmp: write_dicom_series(
                image, Path(tmp) / "study" / "3-ax t1", spacing=spacing, slope=1.0, intercept=0.0, modality="MR",
                series_description="ax t1", patient_id=patient,
            ),
            directory=True,
        )
        if index < count - 1 or count == 1:
            _write_once(folder / "masks" / f"{patient}.nii.gz", lambda tmp: write_breast_mask(mask, tmp, spacing))
    return breast_datalist(folder / "dicom", folder / "masks")


def make_tumor_phantom(rng: np.random.Generator, shape: tuple[int, int, int] = (48, 48, 48)) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic contrast-enhanced T1 whole head with a ring-enhancing tumour, and its label mask.

    Returns the image (float32, 0 to about 1) and the labels (uint8: 0 background, 1 head, 2 tumour).
    """
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    radii = rng.uniform(0.75, 0.9, size=3)
    head = (x / radii[0]) ** 2 + (y / radii[1]) ** 2 + (z / radii[2]) ** 2 < 1
    brain = (x / (radii[0] - 0.12)) ** 2 + (y / (radii[1] - 0.12)) ** 2 + (z / (radii[2] - 0.12)) ** 2 < 1
    centre = rng.uniform(-0.35, 0.35, size=3)
    distance = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
    radius = rng.uniform(0.12, 0.22)
    tumour = brain & (distance < radius)
    image = np.where(head, 0.55, 0.0)  # scalp and skull
    image = np.where(brain, 0.4 + 0.06 * _smooth_noise(rng, shape, 2.0), image)
    image = np.where(tumour, np.where(distance > 0.7 * radius, 0.95, 0.25), image)  # enhancing rim, necrotic core
    image = image + 0.02 * rng.standard_normal(shape) * head
    labels = np.where(tumour, 2, np.where(head, 1, 0)).astype(np.uint8)
    return np.clip(image, 0, None).astype(np.float32), labels


def tumor_demo_datalist(folder: str | os.PathLike, count: int = 8, seed: int = 0) -> list[dict[str, str]]:
    """Datalist of ``count`` demo head/tumour image/label pairs in ``folder/images`` and ``folder/labels``
    (1.5 mm voxels), written first if missing, read back by ``common.data.paired_datalist``."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    for index in range(count):
        image, labels = make_tumor_phantom(rng)
        name = f"head_{index:03d}.nii.gz"
        _write_once(folder / "images" / name, lambda tmp: nib.save(nib.Nifti1Image(image, affine), tmp))
        _write_once(folder / "labels" / name, lambda tmp: nib.save(nib.Nifti1Image(labels, affine), tmp))
    return paired_datalist(folder)
