"""A training run starts from the same weights whatever drew random numbers before it in the process (a notebook,
``train.json``'s first stage, a test session): every training config seeds (``set_determinism``) before its
``initialize`` builds a network. Before, the size check built the networks first, so their initial weights came from
the generator as earlier code had left it; a 4-channel test VQ-GAN drawn that way could start with every channel of
its last residual unit dead (MONAI's ``VQVAEResidualUnit`` ends in a ReLU) and decode every latent to one constant."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import create_workflow

from tests.bundles.bundle_runs import SIZE_32, SMALL_DENOISER, config_files, in_repository, isolated_state
from tests.bundles.med_ddpm_runs import TRAINING

CASES = {
    "vqgan": ("brain_mri", ("train_autoencoder",), "autoencoder_def", SIZE_32),
    "latent_denoiser": ("brain_mri", ("train_autoencoder", "train_diffusion"), "network_def", {**SIZE_32, **SMALL_DENOISER}),
    "med_ddpm": ("brain_tumor_semantic", ("train",), "network_def", TRAINING),
}


def initial_weights(bundle: str, configs: tuple[str, ...], network: str, overrides: dict, ckpt_dir: Path) -> dict:
    """The weights of ``network`` once the bundle's ``initialize`` has run (as ``monai.bundle run`` does first)."""
    with in_repository(), isolated_state():
        workflow = create_workflow(config_file=config_files(bundle, *configs), ckpt_dir=str(ckpt_dir), **overrides)
        try:
            return {name: value.clone() for name, value in workflow.parser.get_parsed_content(network).state_dict().items()}
        finally:
            workflow.parser.get_parsed_content("run_lock").release()


@pytest.mark.parametrize("case", list(CASES))
def test_a_training_run_starts_from_the_same_weights_whatever_ran_before(case, tmp_path):
    bundle, configs, network, overrides = CASES[case]
    torch.manual_seed(1)
    first = initial_weights(bundle, configs, network, overrides, tmp_path / "first")
    torch.manual_seed(2)
    torch.rand(5)
    second = initial_weights(bundle, configs, network, overrides, tmp_path / "second")
    assert first.keys() == second.keys()
    differing = [name for name in first if not torch.equal(first[name], second[name])]
    assert not differing, f"{case}: initial weights depend on the random state before the run: {differing[:3]}"
