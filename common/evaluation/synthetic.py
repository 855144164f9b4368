"""Evaluating the samples of a latent bundle against the real volumes: ``metrics.json`` and pictures to look at.

``SyntheticDataEvaluator`` reads the samples that ``LatentSampler`` wrote (``samples.json``), the real volumes
through the bundle's own preprocessing, and writes to ``evaluation_dir``: ``metrics.json`` (diversity, fidelity,
slice consistency, sharpness of samples and reconstructions, the VQ-GAN's reconstruction quality, the
memorisation audit, and the seconds each took) and
PNGs of samples next to real volumes, adjacent slices, the audit's nearest pairs and the training curves.
docs/evaluation.md says what each number means and what a good value looks like.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from torch.utils.data import Dataset

from common.data import labels_description

from . import metrics
from .audit import NearestNeighbourSearch, memorisation_audit
from .base import SyntheticEvaluationBase
from .pictures import (
    save_adjacent_slices,
    save_three_plane_montage,
    save_training_curves,
)

__all__ = ["SyntheticDataEvaluator"]

logger = logging.getLogger(__name__)

AUDIT_CHUNK = 16  # real volumes compared with all samples at once
SHARPNESS_CUTOFF = 0.25  # cycles per voxel: above it lie the edges and textures that blur removes


def ratios_to_real(results: dict[str, Any]) -> dict[str, Any]:
    """Each sample measure over the same measure for real volumes: about 1 means real-like (docs/evaluation.md).
    Diversity is compared with the held-out real volumes when there are some, the set distances with two halves of
    the real volumes; None where the real value is not positive."""

    def ratio(synthetic: float | None, real: float | None) -> float | None:
        return None if synthetic is None or real is None or real <= 0 else synthetic / real

    diversity, histogram = results["diversity_ms_ssim"], results["intensity_histogram"]
    return {
        "diversity_ms_ssim": ratio(diversity["synthetic"], diversity.get("real_heldout", diversity["real"])),
        "diversity_compared_with": "held-out real volumes" if "real_heldout" in diversity else "real volumes",
        "mmd": ratio(results["mmd"]["synthetic_vs_real"], results["mmd"]["real_half_vs_half"]),
        "histogram_wasserstein": ratio(histogram["synthetic_vs_real"]["wasserstein"], histogram["real_half_vs_half"]["wasserstein"]),
        "histogram_jensen_shannon": ratio(histogram["synthetic_vs_real"]["jensen_shannon"], histogram["real_half_vs_half"]["jensen_shannon"]),
        "slice_consistency_ssim": ratio(results["slice_consistency_ssim"]["synthetic"], results["slice_consistency_ssim"]["real"]),
        "sharpness": ratio(results["sharpness"]["synthetic"], results["sharpness"]["real"]),
        "reconstruction_sharpness": ratio(results["sharpness"]["reconstructions"], results["sharpness"]["reconstructed_volumes"]),
    }


def _summary(values: torch.Tensor) -> dict[str, float]:
    values = values.double().flatten()
    return {"mean": float(values.mean()), "std": float(values.std()) if len(values) > 1 else 0.0}


class SyntheticDataEvaluator(SyntheticEvaluationBase):
    """Compare the samples in ``samples_dir`` with the real volumes of ``real_dataset``.

    Args (besides those of ``SyntheticEvaluationBase``, whose meaning here is given too):
        samples_dir: folder with ``samples.json`` and the NIfTI samples it lists (the inference output).
        real_dataset: the real (training) volumes, preprocessed as for training without random transforms;
            items are dicts with an ``"image"`` of shape (1, H, W, D).
        evaluation_dir: where ``metrics.json`` and the PNGs go.
        autoencoder: the ``CodebookRangeAutoencoder`` of the bundle, for the reconstruction metrics.
        heldout_dataset: real volumes not used in training, for the reconstruction metrics; without it the
            reconstruction is measured on ``reference_volumes`` of ``real_dataset`` (and ``metrics.json`` says so).
        reference_volumes: how many real volumes (the first ones) the set-to-set metrics and the real-to-real
            distances use. The audit compares every sample with every real volume.
        max_pairs: random pairs per set for the MS-SSIM diversity.
        copy_threshold: a sample is flagged as a near copy when its distance to the nearest real volume is below
            this fraction of the median real-to-real nearest-neighbour distance.
        flip_axis: spatial axis the training flips along (a memorised mirror image is a copy too); None for none.
        fid_weights: a local MedicalNet ResNet weights file for FID on 3D features; None skips FID, saying so.
        fid_depth: depth of that ResNet (10, 18, 34 or 50).
        log_dir: TensorBoard logs of the training, for the loss curves; None skips them.
        device: where the autoencoder and the feature network run.
        num_workers: processes preprocessing the real volumes.
        seed: seed of the random pairs and halves.
        real_class: for a class-conditional model, the class (class names by variable) that ``real_dataset`` and
            ``heldout_dataset`` were selected for (``common.data.volumes_of_class``); every sample must have been
            asked for it. None: the real volumes are of every class (``metrics.json`` says so).
    """

    def __init__(
        self,
        samples_dir: str | os.PathLike,
        real_dataset: Dataset,
        evaluation_dir: str | os.PathLike,
        autoencoder: torch.nn.Module,
        heldout_dataset: Dataset | None = None,
        reference_volumes: int = 100,
        max_pairs: int = 100,
        copy_threshold: float = 0.5,
        flip_axis: int | None = 0,
        fid_weights: str | os.PathLike | None = None,
        fid_depth: int = 10,
        log_dir: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        num_workers: int = 0,
        seed: int = 0,
        real_class: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            real_dataset, evaluation_dir, heldout_dataset, reference_volumes, max_pairs, copy_threshold, device, num_workers, seed
        )
        if flip_axis not in (None, 0, 1, 2):
            raise ValueError(f"flip_axis must be None, 0, 1 or 2, got {flip_axis}.")
        self.samples_dir = Path(samples_dir)
        self.autoencoder = autoencoder
        self.flip_axis = flip_axis
        self.fid_weights = fid_weights
        self.fid_depth = fid_depth
        self.log_dir = log_dir
        self.real_class = None if real_class is None else {str(k): str(v) for k, v in dict(real_class).items()}

    # ----- inputs
    def load_samples(self) -> tuple[torch.Tensor, list[str], dict[str, Any]]:
        """The synthetic volumes listed in ``samples.json``, as (N, 1, H, W, D), their files, and what classes they
        were asked for against which real volumes (``class_comparison``)."""
        record_path = self.samples_dir / "samples.json"
        if not record_path.is_file():
            raise FileNotFoundError(f"{record_path} does not exist: run inference (inference.json) into {self.samples_dir} first.")
        record = json.loads(record_path.read_text())
        files = record["files"]
        if len(files) < 2:
            raise ValueError(f"{record_path} lists {len(files)} sample; the evaluation needs at least 2 (raise num_samples).")
        classes = self.class_comparison(record, record_path)
        volumes = [np.asanyarray(nib.load(str(self.samples_dir / name)).dataobj) for name in files]
        return metrics.as_batch(volumes), files, classes

    def class_comparison(self, record: Mapping[str, Any], record_path: Path) -> dict[str, Any]:
        """The classes the samples were asked for (from ``samples.json``) and the class of the real volumes they
        are compared with; ``ValueError`` when a sample was asked for another class than ``real_class``."""
        asked = record.get("labels")
        if asked is None:
            if self.real_class is not None:
                raise ValueError(f"the real volumes were selected for the class {self.real_class} but {record_path} records "
                                 "no labels: the samples are of an unconditional model.")
            return {"samples_asked_for": None, "real_volumes_of_class": None}
        counts = Counter(labels_description(labels) for labels in asked)
        if self.real_class is not None:
            other = sorted(set(counts) - {labels_description(self.real_class)})
            if other:
                raise ValueError(f"{record_path} records samples asked for {other}, but the real volumes were selected for "
                                 f"{labels_description(self.real_class)}: sample that class alone (labels) to compare it with them.")
        else:
            logger.warning("the samples were asked for %s and are compared with real volumes of every class; to compare a "
                           "class with its own, ask for one class (labels) and give the real volumes' labels (labels_file, "
                           "heldout_labels_file).", ", ".join(counts))
        return {"samples_asked_for": dict(counts), "real_volumes_of_class": self.real_class,
                "guidance_scale": record.get("guidance_scale")}

    def _volumes(self, dataset: Dataset) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, (1, 1, H, W, D) volume) of every item of a dataset, in order."""
        for name, item in self.real_items(dataset):
            yield name, torch.as_tensor(item["image"], dtype=torch.float32)

    # ----- the parts of metrics.json
    def scan_real(self, samples: torch.Tensor) -> dict[str, Any]:
        """One pass over the real volumes: keep the first ``reference_volumes``, and find the nearest real volume
        of every sample (also flipped) over all of them."""
        scan: dict[str, Any] = {"reference": [], "names": []}
        search = NearestNeighbourSearch(samples, self.flip_axis)
        chunk: list[torch.Tensor] = []
        for name, volume in self._volumes(self.real_dataset):
            if volume.shape[2:] != samples.shape[2:]:
                raise ValueError(
                    f"samples are {tuple(samples.shape[2:])} but the real volume {name} is {tuple(volume.shape[2:])}: "
                    "evaluate with the image_size the model was trained and sampled with."
                )
            scan["names"].append(name)
            if len(scan["reference"]) < self.reference_volumes:
                scan["reference"].append((name, volume))
            chunk.append(volume)
            if len(chunk) == AUDIT_CHUNK:
                search.add(torch.cat(chunk))
                chunk.clear()
        if chunk:
            search.add(torch.cat(chunk))
        scan["nearest"], scan["nearest_volumes"] = search.result(), search.volumes
        if len(scan["reference"]) < 2:
            raise ValueError(f"the evaluation needs at least 2 real volumes, got {len(scan['reference'])}.")
        return scan

    def audit(self, sample_files: Sequence[str], scan: dict[str, Any], reference: torch.Tensor) -> dict[str, Any]:
        """Every sample's nearest real volume, judged against the real-to-real distances of the reference volumes."""
        return memorisation_audit(sample_files, scan["nearest"], scan["names"], reference, self.flip_axis, self.copy_threshold)

    @torch.no_grad()
    def reconstruction(self, volumes: torch.Tensor, held_out: bool) -> tuple[dict[str, Any], torch.Tensor]:
        """PSNR, SSIM and MS-SSIM of the VQ-GAN's quantised reconstructions of ``volumes`` (the held-out ones, or
        the reference volumes when there are none), and the reconstructions."""
        rebuilt = []
        for volume in volumes:
            latent = self.autoencoder.encode_stage_2_inputs(volume[None].to(self.device))
            rebuilt.append(self.autoencoder.decode_stage_2_outputs(latent).float().cpu())
        rebuilt = torch.cat(rebuilt).clamp(-1, 1)
        source = "held-out volumes (heldout_dir)" if held_out else "training volumes: no heldout_dir given, so this is not a held-out measure"
        return {
            "volumes": source,
            "count": len(volumes),
            "psnr_db": _summary(metrics.psnr(rebuilt, volumes)),
            "ssim": _summary(metrics.ssim(rebuilt, volumes)),
            "ms_ssim": _summary(metrics.ms_ssim(rebuilt, volumes).flatten()),
        }, rebuilt

    def fid(self, samples: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
        if self.fid_weights is None:
            return {"skipped": "no feature network: set fid_weights to a local MedicalNet ResNet file (e.g. resnet_10_23dataset.pth) to compute FID"}
        network = metrics.load_medicalnet(self.fid_weights, self.fid_depth).to(self.device)
        synthetic, real = metrics.medicalnet_features(network, samples), metrics.medicalnet_features(network, reference)
        halves = metrics.split_halves(real, self.seed)
        return {
            "feature_network": f"MedicalNet resnet{self.fid_depth} ({self.fid_weights})",
            "synthetic_vs_real": metrics.fid(synthetic, real),
            "real_half_vs_half": metrics.fid(*halves) if len(halves[0]) >= 2 else None,
        }

    # ----- the run
    def run(self) -> dict[str, Any]:
        """Compute everything, write ``metrics.json`` and the PNGs to ``evaluation_dir``, and return the metrics."""
        samples, sample_files, classes = self.load_samples()
        scan = self.timed("reading_real_volumes", lambda: self.scan_real(samples))
        reference_items = scan["reference"]
        reference = torch.cat([v for _, v in reference_items])
        heldout_items = self.timed("reading_heldout_volumes", lambda: list(self._volumes(self.heldout_dataset)) if self.heldout_dataset is not None else [])
        heldout = torch.cat([v for _, v in heldout_items]) if heldout_items else None
        real_halves = metrics.split_halves(reference, self.seed)
        results: dict[str, Any] = {
            "samples": len(samples),
            "real_volumes": len(reference),
            "image_size": list(samples.shape[2:]),
            "classes": classes,
        }

        def diversity() -> dict[str, Any]:
            found = {
                "synthetic": metrics.mean_pairwise_ms_ssim(samples, self.max_pairs, self.seed)[0],
                "real": metrics.mean_pairwise_ms_ssim(reference, self.max_pairs, self.seed)[0],
                "scales": len(metrics.MS_SSIM_WEIGHTS), "kernel": metrics.MS_SSIM_KERNEL,
            }
            if heldout is not None and len(heldout) >= 2:
                found["real_heldout"] = metrics.mean_pairwise_ms_ssim(heldout, self.max_pairs, self.seed)[0]
            return found

        results["diversity_ms_ssim"] = self.timed("diversity_ms_ssim", diversity)
        results["intensity_histogram"] = self.timed("intensity_histogram", lambda: {
            "synthetic_vs_real": metrics.histogram_distances(samples, reference),
            "real_half_vs_half": metrics.histogram_distances(*real_halves),
        })
        results["mmd"] = self.timed("mmd", lambda: {
            "synthetic_vs_real": metrics.mmd(samples, reference),
            "real_half_vs_half": metrics.mmd(*real_halves) if len(real_halves[0]) >= 2 else None,
        })
        results["fid"] = self.timed("fid", lambda: self.fid(samples, reference))
        results["slice_consistency_ssim"] = self.timed("slice_consistency_ssim", lambda: {
            "synthetic": metrics.slice_consistency(samples), "real": metrics.slice_consistency(reference),
        })
        results["reconstruction"], rebuilt = self.timed(
            "reconstruction", lambda: self.reconstruction(heldout if heldout is not None else reference, heldout is not None)
        )
        reconstructed = heldout if heldout is not None else reference
        results["sharpness"] = self.timed("sharpness", lambda: {
            "measure": f"share of spectral power above {SHARPNESS_CUTOFF} cycles per voxel, mean over volumes",
            "synthetic": float(metrics.high_frequency_share(samples, SHARPNESS_CUTOFF).mean()),
            "real": float(metrics.high_frequency_share(reference, SHARPNESS_CUTOFF).mean()),
            "reconstructions": float(metrics.high_frequency_share(rebuilt, SHARPNESS_CUTOFF).mean()),
            "reconstructed_volumes": float(metrics.high_frequency_share(reconstructed, SHARPNESS_CUTOFF).mean()),
        })
        results["memorisation_audit"] = self.timed("memorisation_audit", lambda: self.audit(sample_files, scan, reference))
        results["ratios_to_real"] = ratios_to_real(results)
        rebuilt_items = heldout_items or reference_items
        results["pictures"] = self.timed(
            "pictures",
            lambda: self.pictures(samples, sample_files, reference_items, results["memorisation_audit"], scan["nearest_volumes"],
                                  (rebuilt_items, rebuilt)),
        )
        flagged = results["memorisation_audit"]["near_copies"]
        logger.info("%d of %d samples flagged as near copies%s", len(flagged), len(samples), f": {flagged}" if flagged else "")
        return self.write(results)

    def pictures(
        self, samples: torch.Tensor, sample_files: Sequence[str], reference_items: list, audit: dict, nearest: list,
        reconstructions: tuple[list, torch.Tensor],
    ) -> dict[str, str | None]:
        """The PNGs: samples next to real volumes, adjacent slices, the audit's closest pairs, reconstructions next to
        their inputs (held-out ones when given), training curves."""
        out = self.evaluation_dir
        shown = min(4, len(samples), len(reference_items))
        volumes = [v[0, 0].numpy() for _, v in reference_items[:shown]] + [s[0].numpy() for s in samples[:shown]]
        titles = [f"real {Path(n.split(' (')[0]).name}" for n, _ in reference_items[:shown]] + [f"synthetic {f}" for f in sample_files[:shown]]
        written: dict[str, str | None] = {
            "samples_and_real": save_three_plane_montage(volumes, out / "samples_and_real.png", titles),
            "adjacent_slices": save_adjacent_slices(
                [samples[0, 0].numpy(), reference_items[0][1][0, 0].numpy()], out / "adjacent_slices.png",
                [f"synthetic {sample_files[0]}", "real"],
            ),
        }
        entries = audit["samples"]
        order = sorted(range(len(entries)), key=lambda i: entries[i]["distance"])
        shown_pairs = [i for i in order if entries[i]["near_copy"]] or order[:3]
        pairs, pair_titles = [], []
        for i in shown_pairs[:4]:
            entry = entries[i]
            pairs += [samples[i, 0].numpy(), nearest[i].numpy()]
            label = "NEAR COPY" if entry["near_copy"] else f"closest (ratio {entry['ratio_to_real_median']:.2f})"
            pair_titles += [f"{label}: {entry['sample']}", f"nearest real{' (flipped)' if entry['flipped'] else ''}"]
        written["nearest_neighbours"] = save_three_plane_montage(pairs, out / "nearest_neighbours.png", pair_titles)
        originals, rebuilt = reconstructions
        volumes, titles = [], []
        for (name, volume), again in list(zip(originals, rebuilt))[:3]:
            short = Path(name.split(" (")[0]).name
            volumes += [volume[0, 0].numpy(), again[0].numpy()]
            titles += [f"input {short}", "VQ-GAN reconstruction"]
        written["reconstructions"] = save_three_plane_montage(volumes, out / "reconstructions.png", titles)
        written["training_curves"] = save_training_curves(self.log_dir, out / "training_curves.png") if self.log_dir else None
        return written
