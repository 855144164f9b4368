"""The layout of ``common``: imports go one way, from higher layers to lower ones; every module says what it is
and the method's modules cite their paper; the import paths of release 0.1 still resolve, with a warning."""

from __future__ import annotations

import ast
import importlib
import pydoc
import sys
import warnings
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

COMMON = Path(__file__).resolve().parents[1] / "common"

# lowest first; a unit may import from lower layers and from itself only (the docstring of common/__init__.py)
LAYERS = {
    "io": 0, "logs": 0,
    "checkpoints": 1, "overrides": 1,
    "networks": 2, "losses": 2, "data": 2,
    "engines": 3, "handlers": 3, "evaluation": 3,
    "sampling": 4,
    "med_ddpm": 5,
    "pipeline": 6,
    "deploy": 7, "class_evaluation": 7,
    "conditional_demo": 8,
    "cli": 9,
}
# the package's entry points, and the old paths' stand-ins: a module's ``__getattr__`` for its moved names (e.g.
# ``common.engines.ConcatConditionPrepareBatch``) reaches ``common.med_ddpm`` at run time, through _deprecated only
EXEMPT = {"__init__", "__main__", "_deprecated"}

# the modules that implement a paper's method, and whom they must cite
CITING = {
    "networks/depth_attention_unet.py": "Khader", "networks/vqgan.py": "Khader", "networks/quantizer.py": "Khader",
    "networks/codebook_range.py": "Khader", "losses.py": "Khader", "engines/vqgan_trainer.py": "Khader",
    "engines/latent_diffusion.py": "Khader", "sampling/latent.py": "Khader", "sampling/schedulers.py": "Khader", "evaluation/metrics.py": "Khader",
    "med_ddpm/__init__.py": "Dorjsembe", "med_ddpm/prepare_batch.py": "Dorjsembe", "med_ddpm/sampler.py": "Dorjsembe",
    "med_ddpm/evaluation.py": "Dorjsembe", "med_ddpm/segmentation_utility.py": "Dorjsembe",
    "med_ddpm/mask_edits.py": "Dorjsembe", "med_ddpm/demo.py": "Dorjsembe",
}


def modules() -> list[Path]:
    return sorted(COMMON.rglob("*.py"))


def unit_of(path: Path) -> str:
    """The layer unit of a module: its top-level package or module under common/."""
    return path.relative_to(COMMON).parts[0].removesuffix(".py")


def imported_units(source: str, package: list[str]) -> set[str]:
    """The units of common that ``source``, a module of ``package`` (e.g. ["common", "data"]), imports, with
    relative imports resolved."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names = [f"{module}.{alias.name}" for alias in node.names] if module == "common" or not node.module else [module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "common" and len(parts) > 1:
                found.add(parts[1])
    return found


def package_of(path: Path) -> list[str]:
    return ["common", *path.relative_to(COMMON).parent.parts]


def test_every_unit_has_a_layer():
    assert {unit_of(p) for p in modules()} - EXEMPT == set(LAYERS)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(COMMON)))
def test_imports_go_from_higher_layers_to_lower_ones(path):
    unit = unit_of(path)
    if unit in EXEMPT:
        return
    upward = {other for other in imported_units(path.read_text(), package_of(path)) - {unit} if other not in EXEMPT and LAYERS[other] >= LAYERS[unit]}
    assert not upward, f"{path.relative_to(COMMON)} (layer {LAYERS[unit]}) imports {sorted(upward)} from its own layer or above"


def test_the_check_sees_absolute_relative_and_plain_imports():
    source = "import common.pipeline\nfrom common.sampling import LatentSampler\nfrom ..evaluation import metrics\nfrom . import checks\n"
    assert imported_units(source, ["common", "data"]) == {"pipeline", "sampling", "evaluation", "data"}
    assert imported_units("from .. import io\nimport numpy\n", ["common", "handlers"]) == {"io"}
    assert imported_units("from common import pipeline, io\n", ["common", "data"]) == {"pipeline", "io"}


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(COMMON)))
def test_every_module_says_what_it_is(path):
    assert ast.get_docstring(ast.parse(path.read_text())), f"{path.relative_to(COMMON)} has no docstring"


@pytest.mark.parametrize("relative, author", sorted(CITING.items()))
def test_the_methods_modules_cite_their_paper_and_section(relative, author):
    docstring = ast.get_docstring(ast.parse((COMMON / relative).read_text()))
    assert author in docstring and "Sec." in docstring, relative


@pytest.mark.parametrize(
    "old, new",
    [
        ("common.latent.CodebookRangeAutoencoder", "common.networks.CodebookRangeAutoencoder"),
        ("common.semantic.MaskConditionedSampler", "common.med_ddpm.MaskConditionedSampler"),
        ("common.semantic.paired_datalist", "common.data.paired_datalist"),
        ("common.semantic_evaluation.MaskConditionedEvaluator", "common.med_ddpm.MaskConditionedEvaluator"),
        ("common.engines.ConcatConditionPrepareBatch", "common.med_ddpm.ConcatConditionPrepareBatch"),
        ("common.transforms.CropBreastSided", "common.data.CropBreastSided"),
        ("common.breast.T1_NON_FAT_SAT", "common.data.T1_NON_FAT_SAT"),
        ("common.dicom.dicom_series_datalist", "common.data.dicom_series_datalist"),
        ("common.demo_data.brain_demo_datalist", "common.data.brain_demo_datalist"),
        ("common.metrics.nearest_neighbours", "common.evaluation.audit.nearest_neighbours"),
        ("common.visualize.save_three_plane_montage", "common.evaluation.pictures.save_three_plane_montage"),
        ("common.packaging.unpack_bundle", "common.deploy.unpack_bundle"),
        ("common.evaluation.memorisation_audit", "common.evaluation.audit.memorisation_audit"),
        ("common.handlers.save_atomically", "common.io.save_torch"),
        ("common.cli.DEMO_SETTINGS", "common.pipeline.DEMO_SETTINGS"),
        ("common.evaluation.Evaluator", "common.evaluation.SyntheticEvaluationBase"),
        ("common.io.channels_last", "common.io.to_nifti_layout"),
        ("common.med_ddpm.utility.train_segmentation", "common.med_ddpm.segmentation_utility.train_segmentation"),
    ],
)
def test_old_import_paths_still_resolve_with_a_warning(old, new):
    with pytest.warns(FutureWarning, match=rf"{old.replace('.', '[.]')} moved to .* stops working in release 0.3"):
        found = pydoc.locate(old)  # how a config's "_target_" is looked up
    assert found is not None and found is pydoc.locate(new)


def test_a_config_naming_an_old_path_still_runs():
    parser = ConfigParser({"imports": ["$import common"], "stem": "$common.semantic.stem('case_1.nii.gz')",
                           "crop": {"_target_": "common.transforms.CropBreastSided", "keys": "image"}})
    with pytest.warns(FutureWarning):
        assert parser.get_parsed_content("stem") == "case_1"
    with pytest.warns(FutureWarning):
        assert type(parser.get_parsed_content("crop")).__name__ == "CropBreastSided"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.import_module("common.latent")  # importing the old module alone does not warn; using a name does
    assert sys.modules["common.latent"].__doc__.startswith("Moved")
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        common = importlib.import_module("common")
        common.latent.nothing  # noqa: B018


# every public name of release 0.1 (the __all__ of each module then), except an internal helper that is gone
RELEASE_0_1 = {
    "common.breast": ["T1_NON_FAT_SAT", "breast_datalist", "patient_of"],
    "common.checkpoints": ["CheckpointError", "find_latest_checkpoint", "load_state", "load_weights", "periodic_iteration", "read_checkpoint"],
    "common.cli": ["DEMO_SETTINGS", "STAGES", "bundle_dir", "demo", "pipeline"],
    "common.data": ["DatasetError", "check_mrnet_exam", "check_volume", "find_nifti_files", "mrnet_datalist", "nifti_datalist", "raise_if_problems", "require_folder"],
    "common.demo_data": ["brain_demo_datalist", "breast_demo_datalist", "chest_demo_datalist", "knee_demo_datalist", "tumor_demo_datalist", "make_brain_phantom", "make_breast_phantom", "make_chest_phantom", "make_tumor_phantom", "make_knee_phantom", "write_breast_mask", "write_dicom_series"],
    "common.dicom": ["DicomSeries", "dicom_series_datalist", "read_series"],
    "common.engines": ["ConcatConditionPrepareBatch", "LatentDiffusionPrepareBatch", "VQGANTrainer"],
    "common.engines.conditional_diffusion": ["ConcatConditionPrepareBatch"],
    "common.engines.latent_diffusion": ["LatentDiffusionPrepareBatch"],
    "common.engines.vqgan_trainer": ["VQGANTrainer"],
    "common.evaluation": ["SyntheticDataEvaluator", "memorisation_audit", "volume_name", "write_json"],  # not TimedParts
    "common.export": ["ExportError", "export_torchscript"],
    "common.handlers": ["AtomicCheckpointSaver", "CheckpointResumer", "DelayedEMAHandler", "NonFiniteLossError", "StopOnNonFiniteLoss", "save_atomically"],
    "common.handlers.checkpoint_saver": ["AtomicCheckpointSaver", "save_atomically"],
    "common.handlers.ema": ["DelayedEMAHandler"],
    "common.handlers.nan_guard": ["NonFiniteLossError", "StopOnNonFiniteLoss"],
    "common.handlers.resume": ["CheckpointResumer"],
    "common.latent": ["CodebookRangeAutoencoder"],
    "common.losses": ["VQGANLoss", "build_perceptual_loss", "depth_slices", "feature_matching_loss"],
    "common.metrics": ["MS_SSIM_KERNEL", "MS_SSIM_WEIGHTS", "NearestNeighbour", "NearestNeighbourSearch", "fid", "histogram_distances", "load_medicalnet", "mean_pairwise_ms_ssim", "medicalnet_features", "mmd", "ms_ssim", "nearest_neighbours", "psnr", "slice_consistency", "split_halves", "ssim", "as_batch"],
    "common.networks": ["CodebookQuantizer", "DepthAttentionUNet", "VQGAN"],
    "common.networks.nearest_code": ["BACKENDS", "faiss_available", "nearest_code"],
    "common.packaging": ["PackagingError", "UnsafeArchiveError", "package_bundle", "unpack_bundle"],
    "common.sampling": ["LatentSampler", "gather", "make_sampling_scheduler", "process_rank", "save_nifti", "volume_affine"],
    "common.semantic": ["MaskConditionedSampler", "check_pair", "paired_datalist", "stem"],
    "common.semantic_evaluation": ["MaskConditionedEvaluator", "classes_of"],
    "common.transforms": ["CropBreastSided", "RemapLabelsd"],
    "common.utility": ["segmentation_dice", "train_segmentation"],
    "common.visualize": ["save_adjacent_slices", "save_three_plane_montage", "save_training_curves"],
}


@pytest.mark.parametrize("module", sorted(RELEASE_0_1))
def test_every_public_name_of_release_0_1_still_resolves(module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for name in RELEASE_0_1[module]:
            assert pydoc.locate(f"{module}.{name}") is not None, f"{module}.{name}"
