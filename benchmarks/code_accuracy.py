"""How often a trained code classifier names the right code of a noised training latent, by noise level: where in
the noise its samples go wrong.

A code classifier (``code_classification``) estimates the clean latent from the softmax over the codes at each
voxel. Its samples' last steps see a barely noised latent, whose codes the closed-form likelihood of each code
(``common.networks.code_log_likelihood``) alone would name; its middle steps need the context of other voxels. For a
denoiser trained by ``benchmarks/convergence.py`` this noises training latents (snapped to their codes, as the
classifier is trained) at a range of timesteps and reports, among the latent voxels, the share whose most likely
code is the true one: by the network as sampled (its logits, plus the likelihood if trained with
``code_likelihood``), by the likelihood alone, and, for a network trained without it, by its logits plus the
likelihood (what ``code_likelihood`` would add at sampling).

    python benchmarks/code_accuracy.py --workdir W --recipe R   # a minute or two on a 2-core CPU

``W`` and ``R`` as given to ``convergence.py --size 64``: its VQ-GAN, training data and the recipe's last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import convergence  # noqa: E402  (its recipes and stage settings)
from monai.bundle import ConfigParser  # noqa: E402
from monai.data import Dataset  # noqa: E402

from common.networks import code_log_likelihood, noising_line  # noqa: E402
from common.pipeline import config_files_of  # noqa: E402

TIMESTEPS = (299, 200, 140, 100, 60, 40, 20, 10, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="convergence.py's --workdir")
    parser.add_argument("--recipe", required=True, help="a code-classifying recipe of convergence.py trained there")
    parser.add_argument("--volumes", type=int, default=4, help="training volumes to noise")
    parser.add_argument("--out", type=Path, help="write the table here (markdown) as well as printing it")
    args = parser.parse_args()
    if args.volumes < 1:
        parser.error(f"--volumes must be at least 1, got {args.volumes}")
    if args.recipe not in convergence.RECIPES:
        parser.error(f"--recipe must be one of convergence.py's recipes, got {args.recipe!r}")
    recipe = {**convergence.RECIPES[args.recipe]["train"], **convergence.RECIPES[args.recipe]["sample"]}
    if not recipe.get("code_classification"):
        parser.error(f"{args.recipe} does not classify codes (code_classification)")
    models = args.workdir / "recipes" / args.recipe / "models"
    if not (models / "diffusion.pt").is_file():
        parser.error(f"no trained denoiser at {models / 'diffusion.pt'}: train it with convergence.py first")
    settings = convergence.stage_settings(argparse.Namespace(size=64, paper_widths=False, train=20, samples=8,
                                                             downsample_factor=None, scale_equivariance=0.0))
    config = ConfigParser()
    config.read_config(config_files_of(REPO / "bundles" / convergence.BUNDLE / "configs")["evaluation"])
    overrides = {**settings["shared"], **settings["denoiser"], **recipe, "ckpt_dir": str(models),
                 "bundle_root": str(REPO / "bundles" / convergence.BUNDLE), "dataset_dir": str(args.workdir / "data" / "train"),
                 "device": "cpu"}
    for key, value in overrides.items():
        config[key] = value
    autoencoder = config.get_parsed_content("latent_autoencoder")
    network = config.get_parsed_content("network").eval()
    scheduler = config.get_parsed_content("noise_scheduler")
    data = Dataset(config.get_parsed_content("datalist")[:args.volumes], config.get_parsed_content("evaluation_preprocessing"))
    images = torch.stack([item["image"] for item in data])
    with_likelihood = bool(recipe.get("code_likelihood", False))
    generator = torch.Generator().manual_seed(0)
    rows = []
    with torch.no_grad():
        snapped, truth = autoencoder.snap_to_codes(autoencoder.encode_stage_2_inputs(images))
        codes = autoencoder.codes()
        for t in TIMESTEPS:
            timesteps = torch.full((len(images),), t)
            noisy = scheduler.add_noise(snapped, torch.randn(snapped.shape, generator=generator), timesteps)
            likelihood = code_log_likelihood(noisy, codes, *noising_line(scheduler, timesteps))
            logits = torch.cat([network(noisy[i:i + 1], timesteps[i:i + 1]).float() for i in range(len(images))])
            sampled = logits + likelihood if with_likelihood else logits
            row = {"timestep": t, "noise_share": float(1 - scheduler.alphas_cumprod[t]),
                   "network": float((sampled.argmax(1) == truth).float().mean()),
                   "likelihood": float((likelihood.argmax(1) == truth).float().mean())}
            if not with_likelihood:
                row["network_plus_likelihood"] = float(((logits + likelihood).argmax(1) == truth).float().mean())
            rows.append(row)
            print(json.dumps(row), flush=True)
    header = ["timestep", "noise share", "network as sampled", "likelihood alone"] + ([] if with_likelihood else ["network + likelihood"])
    lines = [f"Top-1 code accuracy of `{args.recipe}` on {len(images)} training latents (`python benchmarks/code_accuracy.py "
             f"--workdir W --recipe {args.recipe} --volumes {args.volumes}`):", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        values = [str(row["timestep"]), f"{row['noise_share']:.3f}", f"{row['network']:.3f}", f"{row['likelihood']:.3f}"]
        if not with_likelihood:
            values.append(f"{row['network_plus_likelihood']:.3f}")
        lines.append("| " + " | ".join(values) + " |")
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
