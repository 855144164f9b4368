"""Every input trains correctly or stops with its file named: the bundles' own configs against messy data and
mistakes (docs/reliability.md lists the classes)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from common.checkpoints import CheckpointError
from tests.bundles.bundle_runs import (
    EVALUATE,
    SIZE_32,
    SMALL_AUTOENCODER,
    SMALL_DENOISER,
    SMALL_SHARED,
    checkpoints_in,
    command_line,
    config_files,
    error_chain,
    make_brains,
    run_bundle,
)
from tests.helpers import lock_held_in_another_process

SHARED = {"image_size": [16, 16, 16], **SMALL_SHARED}


def train_autoencoder(dataset: Path, workdir: Path, **overrides) -> None:
    run_bundle(
        config_files("brain_mri", "train_autoencoder"), dataset_dir=str(dataset), ckpt_dir=str(workdir / "models"),
        log_dir=str(workdir / "logs"), **{**SHARED, **SMALL_AUTOENCODER, **overrides},
    )


def raw_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """A NIfTI file written field by field, as a broken converter may write it (nibabel refuses such affines)."""
    header = nib.Nifti1Header()
    header.set_data_shape(data.shape)
    header.set_data_dtype(np.float32)
    header["srow_x"], header["srow_y"], header["srow_z"] = affine[0], affine[1], affine[2]
    header["sform_code"], header["qform_code"], header["vox_offset"] = 1, 0, 352
    path.write_bytes(header.binaryblock + b"\0" * 4 + data.astype(np.float32).tobytes(order="F"))


# ----- every volume the check accepts is preprocessed, or named


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # one volume is made to overflow float32
def test_volumes_that_pass_the_header_check_but_not_the_preprocessing_are_named(tmp_path):
    brains = make_brains(tmp_path / "brains", count=3)
    good = np.asanyarray(nib.load(str(brains / "brain_0.nii.gz")).dataobj).astype(np.float32)
    nib.save(nib.Nifti1Image(-good - 1.0, np.eye(4)), str(brains / "no_positive_voxel.nii.gz"))
    nib.save(nib.Nifti1Image(good.astype(np.float64) * 1e300, np.eye(4)), str(brains / "beyond_float32.nii.gz"))
    nib.save(nib.Nifti1Image(np.random.default_rng(0).uniform(1, 2, (200, 200, 2)).astype(np.float32), np.eye(4)),
             str(brains / "two_slices.nii.gz"))
    with pytest.raises(Exception) as info:
        train_autoencoder(brains, tmp_path)
    chain = error_chain(info.value)
    assert "DatasetError: 3 of 6 volumes after the bundle's preprocessing are unusable" in chain
    assert (f"{brains / 'no_positive_voxel.nii.gz'}: the bundle's preprocessing fails at Resized (ZeroDivisionError: "
            "division by zero); CropForegroundd keeps the voxels above 0 and this volume has none") in chain
    assert (f"{brains / 'two_slices.nii.gz'}: the bundle's preprocessing fails at Resized (OverflowError: cannot convert "
            "float infinity to integer); the volume is 200x200x2 voxels after CropForegroundd: 2 along axis 2 against "
            "200 along the longest, too thin to resize") in chain
    assert f"{brains / 'beyond_float32.nii.gz'}: after preprocessing" in chain and "NaN or infinite" in chain
    assert checkpoints_in(tmp_path / "models") == []  # nothing written but the lock


@pytest.mark.parametrize(
    "case, message",
    [
        ("complex", "voxels of type complex64, not real intensities"),
        ("five_dimensions", r"expected a 3D volume, got shape \(20, 24, 18, 1, 1\)"),
        ("nan_affine", "its affine .* holds NaN or infinite values"),
        ("degenerate_affine", "its affine is degenerate"),
    ],
)
def test_files_the_preprocessing_cannot_use_are_refused_by_the_header_check(tmp_path, case, message):
    brains = make_brains(tmp_path / "brains", count=2)
    volume = np.random.default_rng(0).uniform(0, 1, (20, 24, 18)).astype(np.float32)
    path = brains / f"{case}.nii"
    if case == "complex":
        nib.save(nib.Nifti1Image(volume.astype(np.complex64), np.eye(4)), str(path))
    elif case == "five_dimensions":
        nib.save(nib.Nifti1Image(volume[..., None, None], np.eye(4)), str(path))
    else:
        affine = np.diag([1.0, 0.0 if case == "degenerate_affine" else 1.0, 1.0, 1.0])
        affine[0, 0] = np.nan if case == "nan_affine" else 1.0
        raw_nifti(path, volume, affine)
    with pytest.raises(Exception) as info:
        train_autoencoder(brains, tmp_path)
    assert "DatasetError: 1 of 3 files" in error_chain(info.value)
    assert pytest.importorskip("re").search(f"{path}: {message}", error_chain(info.value)), error_chain(info.value)


def test_a_write_in_progress_is_not_read_as_a_volume(tmp_path):
    brains = make_brains(tmp_path / "brains", count=3)
    (brains / ".brain_9.nii.gz.x1y2.tmp.nii.gz").write_bytes(b"")  # what a killed atomic write leaves
    from common.data import nifti_datalist

    assert [Path(item["image"]).name for item in nifti_datalist(brains)] == [f"brain_{i}.nii.gz" for i in range(3)]


# ----- a non-finite loss stops every training stage at once, naming the term and the batch


def test_a_non_finite_loss_stops_the_vqgan_stage_naming_the_term_and_the_batch(tmp_path):
    brains = make_brains(tmp_path / "brains", count=2)
    with pytest.raises(Exception) as info:
        train_autoencoder(brains, tmp_path, **{"autoencoder_def#commitment_cost": "$float('nan')"})
    chain = error_chain(info.value)
    assert "NonFiniteLossError: training stopped at iteration 1 (epoch 1): " in chain and "losses/commitment = nan" in chain
    assert "The batch held: " in chain and str(brains / "brain_0.nii.gz") in chain and str(brains / "brain_1.nii.gz") in chain
    assert not (tmp_path / "models" / "autoencoder.pt").exists()


def test_a_vqgan_whose_reconstructions_stay_constant_stops_naming_the_cause(tmp_path):
    """The guard sits in the bundle's config and reads the real trainer's output. A saturated decoder cannot be
    forced here in a few iterations, so its tolerance is raised until an untrained decoder's output (which varies
    far less than the input) counts as constant; what counts as constant is tested in ``tests/handlers``."""
    from monai.bundle import ConfigParser

    handlers = ConfigParser.load_config_file(config_files("brain_mri", "train_autoencoder")[0])["train"]["handlers"]
    index = next(i for i, h in enumerate(handlers) if isinstance(h, dict) and h["_target_"] == "common.handlers.StopOnConstantReconstruction")
    brains = make_brains(tmp_path / "brains", count=2)
    with pytest.raises(Exception) as info:
        train_autoencoder(brains, tmp_path, **{f"train#handlers#{index}#tolerance": 0.99, f"train#handlers#{index}#patience": 3,
                                               "train#trainer#max_epochs": 20, "lr": 0.0})
    chain = error_chain(info.value)
    assert "ConstantReconstructionError: training stopped at iteration 3 (epoch 3): for 3 iterations the VQ-GAN's reconstructions were constant" in chain
    assert "its output no longer depends on its input: lower the learning rate (lr), and check the data" in chain
    assert not (tmp_path / "models" / "autoencoder.pt").exists()  # no final checkpoint of the dead weights


def test_a_non_finite_loss_stops_the_diffusion_stage(brain_model, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(brain_model["models"] / "autoencoder.pt", models)
    with pytest.raises(Exception) as info:
        run_bundle(
            config_files("brain_mri", "train_autoencoder", "train_diffusion"), dataset_dir=str(brain_model["brains"]),
            ckpt_dir=str(models), log_dir=str(tmp_path / "logs"), **SIZE_32, **SMALL_DENOISER, num_workers=0, batch_size=2,
            **{"train#trainer#max_epochs": 2, "train#trainer#loss_function": "$lambda prediction, target: (prediction - target).abs().mean() * float('nan')"},
        )
    chain = error_chain(info.value)
    assert "NonFiniteLossError: training stopped at iteration 1 (epoch 1): loss = nan. The batch held: " in chain
    assert str(brain_model["brains"]) in chain.split("The batch held: ")[1]
    assert checkpoints_in(models) == ["autoencoder.pt"]  # no diffusion checkpoint of broken weights


@pytest.mark.parametrize(
    "bundle, configs, handlers",
    [("brain_mri", ["train_autoencoder", "multi_gpu_train_autoencoder"], "train#handlers"),
     ("brain_mri", ["train_autoencoder", "train_diffusion", "multi_gpu_train_autoencoder", "multi_gpu_train_diffusion"], "train#handlers"),
     ("brain_tumor_semantic", ["train", "multi_gpu_train"], "train#handlers")],
)
def test_the_multi_gpu_configs_keep_the_guards_on_every_rank(bundle, configs, handlers, tmp_path):
    """Ranks other than 0 keep only some handlers (the config's own expression, evaluated for rank 1): the
    non-finite loss and empty-training guards are among them; the folder's lock is rank 0's alone."""
    import socket
    import types

    import monai
    import torch.distributed as torch_dist
    from monai.bundle import ConfigParser

    import common

    parser = ConfigParser()
    parser.read_config(config_files(bundle, *configs))
    parser.update({"ckpt_dir": str(tmp_path), "log_dir": str(tmp_path / "logs"), "demo_dir": str(tmp_path / "demo")})
    diffusion = "train_diffusion" in configs
    if diffusion:  # the diffusion stage's handlers hold the VQ-GAN (LatentStatistics): an untrained one will do
        torch.save({"autoencoder": parser.get_parsed_content("autoencoder_def").state_dict()}, tmp_path / "autoencoder.pt")
    with socket.socket() as free:  # the handlers hold the DDP-wrapped networks: a process group of one
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        made = parser.get_parsed_content(handlers, instantiate=True)
    finally:
        torch_dist.destroy_process_group()
    expression = parser["train#trainer#train_handlers"][1:].replace("@train::handlers", "made").replace("@train#handlers", "made")
    for rank in (0, 1):
        dist = types.SimpleNamespace(get_rank=lambda rank=rank: rank)
        kept = {type(h).__name__ for h in eval(expression, {"made": made, "dist": dist, "common": common, "monai": monai})}
        assert {"StopOnNonFiniteLoss", "TrainingLengthCheck", "CheckpointResumer"} <= kept
        # the VQ-GAN's ranks agree each iteration whether its reconstructions are constant: all of them check
        assert ("StopOnConstantReconstruction" in kept) == (bundle == "brain_mri" and not diffusion)
        # every rank measures its share of the latents and takes part in their all-reduce, so all fit one scale
        assert ("LatentStatistics" in kept) == diffusion
        assert ("CheckpointDirLock" in kept) == (rank == 0) and ("AtomicCheckpointSaver" in kept) == (rank == 0)


# ----- a mistyped override is an error, on the command line


def test_a_mistyped_id_on_the_command_line_stops_before_anything_runs(tmp_path):
    result = command_line(
        config_files("brain_mri", "train_autoencoder"), "--dataset_dirr", str(tmp_path / "adni"),
        "--ckpt_dir", str(tmp_path / "models"), "--demo_dir", str(tmp_path / "demo"),
    )
    assert result.returncode != 0
    assert "--dataset_dirr (did you mean --dataset_dir" in result.stderr and "Nothing was run" in result.stderr
    assert not (tmp_path / "models").exists() and not (tmp_path / "demo").exists()  # no demo data trained on


def test_a_mistyped_override_of_the_pipeline_is_an_error(tmp_path):
    from common.pipeline import pipeline

    with pytest.raises(ValueError, match=r"--dataset_dirr \(did you mean --dataset_dir"):
        pipeline("brain_mri", str(tmp_path), dataset_dirr="/data/adni")
    assert not any(tmp_path.iterdir())


# ----- training that would do nothing is an error before it starts


def test_a_dataset_smaller_than_one_batch_is_an_error(tmp_path):
    brains = make_brains(tmp_path / "brains", count=1)
    with pytest.raises(Exception) as info:
        train_autoencoder(brains, tmp_path, batch_size=2)
    assert "training would run no iteration: the dataloader gives no batch (1 volumes, batch_size 2, drop_last True)" in error_chain(info.value)
    assert checkpoints_in(tmp_path / "models") == []  # nothing written but the lock


def test_an_image_size_the_networks_cannot_take_is_named_before_any_data_are_read(brain_model, tmp_path):
    with pytest.raises(Exception) as info:
        train_autoencoder(tmp_path / "no_data", tmp_path, image_size=[16, 15, 16])
    assert ("image_size [16, 15, 16] cannot be taken by the networks: each axis must be a multiple of [2, 2, 2] "
            "(VQGAN divides H, W, D by [2, 2, 2]). Nearest valid image_size: [16, 16, 16].") in error_chain(info.value)
    with pytest.raises(Exception) as info:  # a latent (9^3) that the scale-equivariance term cannot pool by 2 or 4
        train_autoencoder(tmp_path / "no_data", tmp_path, image_size=[18, 18, 18], scale_equivariance_weight=4.0)
    assert "scale_equivariance_weight > 0 pools the latent by 2 or 4, which divides no latent of spatial size (9, 9, 9)" in error_chain(info.value)
    with pytest.raises(Exception) as info:  # sampling: the size a user asks of trained models
        run_bundle(config_files("brain_mri", "inference"), ckpt_dir=str(brain_model["models"]), **SMALL_DENOISER,
                   **{**SIZE_32, "image_size": [32, 30, 32]}, output_dir=str(tmp_path / "out"))
    assert ("image_size [32, 30, 32] cannot be taken by the networks: each axis must be a multiple of [4, 4, 2] "
            "(VQGAN divides H, W, D by [2, 2, 2]; DepthAttentionUNet divides H, W, D by [2, 2, 1]). Nearest valid "
            "image_size: [32, 32, 32].") in error_chain(info.value)
    with pytest.raises(Exception) as info:  # a patched denoiser also divides the latent's depth
        run_bundle(config_files("brain_mri", "inference"), ckpt_dir=str(brain_model["models"]), **SMALL_DENOISER,
                   **{**SIZE_32, "image_size": [32, 32, 34], "network_def#patch_size": 2}, output_dir=str(tmp_path / "out"))
    assert ("image_size [32, 32, 34] cannot be taken by the networks: each axis must be a multiple of [8, 8, 4] "
            "(VQGAN divides H, W, D by [2, 2, 2]; DepthAttentionUNet divides H, W, D by [4, 4, 2]). Nearest valid "
            "image_size: [32, 32, 32], or [32, 32, 36] not to lose voxels.") in error_chain(info.value)
    assert not (tmp_path / "out").exists()


def test_output_folders_that_cannot_be_written_stop_training_and_evaluation_before_they_start(brain_model, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    brains = make_brains(tmp_path / "brains", count=2)
    with pytest.raises(Exception) as info:
        train_autoencoder(brains, tmp_path / "a_file")  # its ckpt_dir is a_file/models
    assert f"ckpt_dir {tmp_path / 'a_file' / 'models'} lies under the file {tmp_path / 'a_file'}, not a folder" in error_chain(info.value)
    with pytest.raises(Exception) as info:  # found before sampling, not after
        run_bundle(EVALUATE, **brain_model["overrides"], output_dir=str(tmp_path / "samples"), num_samples=2,
                   num_inference_steps=2, evaluation_dir=str(tmp_path / "a_file" / "evaluation"))
    assert f"evaluation_dir {tmp_path / 'a_file' / 'evaluation'} lies under the file" in error_chain(info.value)
    assert not (tmp_path / "samples").exists()


def test_zero_epochs_is_an_error(tmp_path):
    brains = make_brains(tmp_path / "brains", count=2)
    with pytest.raises(Exception) as info:
        train_autoencoder(brains, tmp_path, **{"train#trainer#max_epochs": 0})
    assert "training would run no iteration: max_epochs is 0" in error_chain(info.value)


def test_resuming_a_finished_run_is_an_error(brain_model, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(brain_model["models"], models)
    with pytest.raises(Exception) as info:
        train_autoencoder(brain_model["brains"], tmp_path, image_size=[32, 32, 32], resume=True)
    assert "training would run no iteration: it resumed at iteration 4 and ends at 4 (max_epochs 2)" in error_chain(info.value)


# ----- one training run per checkpoint folder


def test_a_second_run_on_a_checkpoint_folder_in_use_is_refused(tmp_path):
    brains = make_brains(tmp_path / "brains", count=2)
    models = tmp_path / "models"
    with lock_held_in_another_process(models) as running:  # a training run that holds the folder
        in_flight = models / ".autoencoder_iteration=200.pt.k3j2.tmp.pt"  # the checkpoint it is writing right now
        in_flight.write_bytes(b"half")
        with pytest.raises(Exception) as info:
            train_autoencoder(brains, tmp_path)
        chain = error_chain(info.value)
        assert f"CheckpointDirLockedError: {models} is in use by the training run of process {running.pid}" in chain
        assert in_flight.read_bytes() == b"half"  # the refused run touched nothing of the running one
        assert sorted(p.name for p in models.iterdir()) == [".autoencoder_iteration=200.pt.k3j2.tmp.pt", ".training.lock"]
    # that run is gone: the next run gets the folder, cleans up after it, and trains
    train_autoencoder(brains, tmp_path)
    assert not in_flight.exists() and (models / "autoencoder.pt").is_file()


# ----- inference checks its settings and its weights before it samples


def test_inference_checks_its_settings_and_output_folder_before_sampling(brain_model, tmp_path):
    model = {"ckpt_dir": str(brain_model["models"]), **SIZE_32, **SMALL_DENOISER}
    with pytest.raises(Exception) as info:
        run_bundle(config_files("brain_mri", "inference"), **model, spacing=[0.0, 2.7, 2.7], output_dir=str(tmp_path / "out"))
    assert "spacing must be 3 positive voxel sizes in mm, got (0.0, 2.7, 2.7)" in error_chain(info.value)
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(Exception) as info:
        run_bundle(config_files("brain_mri", "inference"), **model, output_dir=str(tmp_path / "a_file" / "samples"))
    assert f"output_dir {tmp_path / 'a_file' / 'samples'} lies under the file {tmp_path / 'a_file'}, not a folder" in error_chain(info.value)
    assert not (tmp_path / "out").exists()


def test_weights_with_nan_are_refused_at_load_with_the_file_named(brain_model, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(brain_model["models"], models)
    checkpoint = torch.load(models / "diffusion.pt", weights_only=True)
    name = next(iter(checkpoint["ema_network"]))
    checkpoint["ema_network"][name] = checkpoint["ema_network"][name] * float("nan")
    torch.save(checkpoint, models / "diffusion.pt")
    with pytest.raises(Exception) as info:
        run_bundle(config_files("brain_mri", "inference"), ckpt_dir=str(models), **SIZE_32, **SMALL_DENOISER, output_dir=str(tmp_path / "out"))
    chain = error_chain(info.value)
    assert isinstance(info.value, CheckpointError) or "CheckpointError" in chain
    assert f"checkpoint {models / 'diffusion.pt'} [ema_network] holds NaN or infinite values in {name}" in chain


def test_evaluation_only_reads_and_runs_beside_a_training_that_holds_the_folder(brain_model, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(brain_model["models"], models)
    with lock_held_in_another_process(models):  # a training run that holds the folder
        run_bundle(EVALUATE, **{**brain_model["overrides"], "ckpt_dir": str(models)}, output_dir=str(tmp_path / "evaluated"),
                   num_samples=2, num_inference_steps=2)
    assert (tmp_path / "evaluated" / "evaluation" / "metrics.json").is_file()
