"""Which denoiser recipe and length give the demo its numbers, and in how few sampling steps? Demo denoisers
trained on one VQ-GAN, each sampled from several seed sets, side by side (issue 23, point 3).

    python benchmarks/demo_side_by_side.py --workdir W     # about 70 minutes here; reuses W's data and VQ-GAN

Each run of ``--runs`` is ``recipe:iterations:steps/steps/...[:guide]``: a denoiser with the demo's settings
(``common.pipeline.DEMO_SETTINGS``) and the recipe's ids (``RECIPES``), trained that many iterations (EMA from half
of them, the autoguidance guide its snapshot after ``guide`` iterations, by default a quarter of them as the demo),
sampled with autoguidance at each step count (DDIM steps for the DDPM recipes, Euler steps for rectified flow) and
each of ``--autoguidance-scales`` (the demo's by default), through the brain_mri bundle's own configs
(``common.pipeline.run_stages``). The default runs: the demo's recipe (v-prediction on codebook-range latents) at its
1,800 iterations, and rectified flow on unit-variance latents, the demo's recipe at 900 iterations in 0.2.22, at 900
and 1,800.

A seed change alone moves the histogram distances by a factor of two to three (``convergence_demo_rectified_flow.md``),
so every row is sampled from each ``--seeds`` set and the summary gives the mean and the range over the sets. The data
and the VQ-GAN are those of ``autoguidance.py`` / ``convergence.py --size 32`` (made in ``--workdir`` if absent).
Writes ``demo_side_by_side.md`` and the samples beside real brains in ``demo_side_by_side/``, where its
``rows.json`` keeps every sampled row: a later run into the same ``--out`` with the same ``--workdir`` (more seeds,
another length) trains only the denoisers missing there and samples only the rows it lacks; rows of another
work folder or of a denoiser it trains again are dropped.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import autoguidance  # noqa: E402  (the demo's data and VQ-GAN, and training a denoiser on them)
import convergence  # noqa: E402  (sampling and evaluation of the convergence runs)

# the denoiser recipes on top of DEMO_SETTINGS, by name: their model-defining ids
RECIPES: dict[str, dict[str, str]] = {
    "v_prediction": {"noise_schedule": "cosine", "latent_scaling": "codebook_range", "prediction_type": "v_prediction"},
    "rectified_flow": {"noise_schedule": "rectified_flow", "latent_scaling": "unit_variance", "prediction_type": "v_prediction"},
    # the demo's with the voxels' coordinates as three more input channels (more coherent brains at 64^3:
    # convergence_64_codes_diversity.md)
    "v_prediction_position": {"noise_schedule": "cosine", "latent_scaling": "codebook_range", "prediction_type": "v_prediction",
                              "network_def#position_channels": True},
    # the demo's with its denoiser under bfloat16 autocast, in training and sampling (a CPU's speed option): does the
    # precision cost quality?
    "v_prediction_bf16": {"noise_schedule": "cosine", "latent_scaling": "codebook_range", "prediction_type": "v_prediction",
                          "network_def#autocast_dtype": "bfloat16"},
    # the demo's fed its own estimate of the clean latent (self_conditioning, Chen et al., ICLR 2023): the demo's
    # numbers in half its iterations?
    "v_prediction_self_cond": {"noise_schedule": "cosine", "latent_scaling": "codebook_range", "prediction_type": "v_prediction",
                               "self_conditioning": True},
    # the demo's denoiser naming each latent voxel's code (code_classification, sampled through the expected code at
    # the inference default code_temperature 0.5), with and without every code's likelihood added to its logits
    # (code_likelihood)
    "codes": {"noise_schedule": "cosine", "latent_scaling": "codebook_range", "prediction_type": "sample",
              "code_classification": True},
    "codes_likelihood": {"noise_schedule": "cosine", "latent_scaling": "codebook_range", "prediction_type": "sample",
                         "code_classification": True, "code_likelihood": True},
}
# recipes that train the demo's denoiser (v_prediction) another way, by their training-only ids (the diffusion stage
# alone: sampling is not given them; HALF stands for half the run's iterations): the squared error instead of the
# paper's L1 (an L1 loss estimates the posterior median, the sampler assumes the mean), and the learning rate decayed
# along a half cosine to 0 over the second half of the run
HALF = "half the run's iterations"
TRAINING: dict[str, dict] = {
    "v_prediction_mse": {"train#trainer#loss_function": "$torch.nn.MSELoss()"},
    "v_prediction_lr_decay": {"lr_decay#final_ratio": 0.0, "lr_decay#start_iteration": HALF},
}
RECIPES.update({name: RECIPES["v_prediction"] for name in TRAINING})
DEFAULT_RUNS = "v_prediction:1800:100/25,rectified_flow:900:100/25/10,rectified_flow:1800:100/25"
TRAINING_BRAINS = 20  # the demo's (autoguidance.demo_vqgan), batched without remainder
# the ratios to real that the summary averages over the seed sets, with their column names
METRICS = {
    "histogram_jensen_shannon": "histogram JS", "histogram_wasserstein": "histogram W", "diversity_ms_ssim": "diversity",
    "slice_consistency_ssim": "slice consistency", "sharpness": "sharpness", "mmd": "MMD",
}


def parse_runs(text: str, iterations_per_epoch: int) -> dict[str, dict]:
    """``recipe:iterations:steps/steps[:guide],...`` -> by run name (``<recipe>_<iterations>``, with ``_guide_<guide>``
    where the guide is not the default quarter): the recipe, the iterations (whole epochs of ``iterations_per_epoch``),
    the sampling step counts and the guide's iteration; ValueError naming what is wrong."""
    runs = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        fields = part.split(":")
        if len(fields) not in (3, 4) or fields[0] not in RECIPES:
            raise ValueError(f"{part!r} is not recipe:iterations:steps/steps[:guide] with a recipe of {sorted(RECIPES)}")
        try:
            iterations, steps = int(fields[1]), [int(n) for n in fields[2].split("/")]
            guide = int(fields[3]) if len(fields) == 4 else iterations // 4
        except ValueError:
            raise ValueError(f"{part!r}: iterations, steps and guide are whole numbers") from None
        if iterations < 2 * iterations_per_epoch or iterations % iterations_per_epoch or min(steps) < 1:
            raise ValueError(f"{part!r}: iterations are whole epochs of {iterations_per_epoch} iterations, two at least; "
                             "steps at least 1")
        if not 0 < guide < iterations:
            raise ValueError(f"{part!r}: the guide's iteration must be between 0 and the iterations (exclusive)")
        if len(set(steps)) < len(steps):
            raise ValueError(f"{part!r} names a step count twice")
        name = f"{fields[0]}_{iterations}" + (f"_guide_{guide}" if guide != iterations // 4 else "")
        if name in runs:
            raise ValueError(f"{name} is given twice: give all its step counts in one entry")
        runs[name] = {"recipe": fields[0], "iterations": iterations, "steps": steps, "guide": guide}
    if not runs:
        raise ValueError("no run given")
    return runs


def summarise(rows: list[dict], demo: str, steps: int, scale: float) -> dict | None:
    """Mean, lowest and highest of every metric over the seed sets of one demo at one step count and guidance scale."""
    found = [r for r in rows if (r["demo"], r["steps"], r["scale"]) == (demo, steps, scale)]
    if not found:
        return None
    spread = {}
    for key in (*METRICS, "seconds_per_sample"):
        values = [r[key] for r in found if r.get(key) is not None]
        spread[key] = (sum(values) / len(values), min(values), max(values), len(values)) if values else None
    return {"demo": demo, "steps": steps, "scale": scale, "sets": len(found), **spread}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "convergence_run", help="data and VQ-GAN (convergence.py's)")
    parser.add_argument("--seeds", default="0,1000,2000,3000", help="first seed of each seed set")
    parser.add_argument("--runs", default=DEFAULT_RUNS, help="recipe:iterations:steps/steps[:guide], comma-separated")
    parser.add_argument("--autoguidance-scales", default="", help="comma-separated scales > 1 every run is sampled "
                        "with (default: the demo's)")
    parser.add_argument("--sampling-overrides", type=json.loads, default={}, help="JSON of inference.json ids every sample "
                        "takes, e.g. '{\"particle_guidance_scale\": 0.5, \"batch_size\": 8}' (rows of an earlier run into --out "
                        "with other ones are dropped)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "demo_side_by_side.md")
    args = parser.parse_args()
    from common.io import write_text
    from common.pipeline import DEMO_SETTINGS, V_PREDICTION_DENOISER, run_stages, without_autoguidance

    settings = copy.deepcopy(DEMO_SETTINGS[convergence.BUNDLE])
    settings["denoiser"].update(V_PREDICTION_DENOISER)  # the base the recipes' ids are written on
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        runs = parse_runs(args.runs, TRAINING_BRAINS // settings["diffusion"]["batch_size"])
    except ValueError as error:
        parser.error(f"--seeds or --runs: {error}")
    if not seeds:
        parser.error("--seeds needs at least one seed")
    if not isinstance(args.sampling_overrides, dict):
        parser.error(f"--sampling-overrides must be a JSON object of inference.json ids, got {args.sampling_overrides!r}")
    try:
        scales = [float(s) for s in args.autoguidance_scales.split(",") if s.strip()] or [settings["inference"]["autoguidance_scale"]]
    except ValueError:
        parser.error(f"--autoguidance-scales must be comma-separated numbers, got {args.autoguidance_scales!r}")
    if any(not 1 < scale < float("inf") for scale in scales) or len(set(scales)) < len(scales):
        parser.error(f"--autoguidance-scales: each finite and above 1 (1 is the denoiser alone), none twice; got {scales}")

    started = time.time()
    data, vqgan, common = autoguidance.demo_vqgan(args.workdir, without_autoguidance(settings), run_stages)
    pictures = args.out.parent / args.out.stem
    pictures.mkdir(parents=True, exist_ok=True)
    timed = pictures / "training_minutes.json"  # each denoiser's training minutes, kept for the runs that reuse it
    minutes = json.loads(timed.read_text()) if timed.is_file() else {}
    retrained = set()
    for name, run in runs.items():
        run["settings"] = copy.deepcopy(settings)
        run["settings"]["denoiser"].update(RECIPES[run["recipe"]])
        run["settings"]["diffusion"].update({k: run["iterations"] // 2 if v == HALF else v
                                             for k, v in TRAINING.get(run["recipe"], {}).items()})
        run["dir"] = args.workdir / "demo_side_by_side" / name
        took = autoguidance.train(run_stages, run["dir"], data, vqgan, without_autoguidance(run["settings"]),
                                  {**common, "guide_iteration": run["guide"]}, run["iterations"], run["iterations"] // 2)
        if took:
            retrained.add(name)
        minutes[name] = took or minutes.get(name, 0.0)
        timed.write_text(json.dumps(minutes, indent=1) + "\n")
    # the rows of an earlier run into the same --out, kept where they sampled the same denoiser: one of this
    # --workdir that this run did not train again
    kept = pictures / "rows.json"
    demo_scale = settings["inference"]["autoguidance_scale"]
    rows = [{"scale": demo_scale, **r} for r in (json.loads(kept.read_text()) if kept.is_file() else [])  # rows before
            if r["demo"] not in retrained and r.get("workdir") == str(args.workdir)  # scales were the demo's
            and r.get("overrides", {}) == args.sampling_overrides]
    plan = [(name, steps, scale) for name, run in runs.items() for steps in run["steps"] for scale in scales]
    for seed in seeds:
        for name, steps, scale in plan:
            if any((r["demo"], r["steps"], r["scale"], r["seed"]) == (name, steps, scale, seed) for r in rows):
                continue
            run = runs[name]
            found = convergence.sample_and_evaluate(run_stages, run["dir"], data, run["settings"],
                                                    {**common, "autoguidance_scale": scale, **args.sampling_overrides}, steps, seed)
            rows.append({"demo": name, "steps": steps, "scale": scale, "seed": seed, "workdir": str(args.workdir),
                         "overrides": args.sampling_overrides, **found})
            label = f"{name}_{steps}_steps" + (f"_scale_{scale:g}" if scale != demo_scale else "")
            shutil.copy(run["dir"] / "samples" / "evaluation" / "samples_and_real.png",
                        pictures / f"{label}_seeds_{seed}_samples_and_real.png")
            (pictures / "rows.json").write_text(json.dumps(rows, indent=1) + "\n")
            print(json.dumps(rows[-1]), flush=True)

    import torch

    def show(value) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    def spread(value, sets: int) -> str:
        if value is None:
            return "n/a"
        missing = f", {value[3]} of {sets} sets" if value[3] < sets else ""  # n/a where the real value is not positive
        return f"{value[0]:.2f} ({value[1]:.2f} to {value[2]:.2f}{missing})"

    plan += sorted({(r["demo"], r["steps"], r["scale"]) for r in rows} - set(plan))  # kept rows not asked for now
    summaries = [s for s in (summarise(rows, *planned) for planned in plan) if s]
    lines = [
        "# Demo denoisers side by side (brain_mri, 32^3)",
        "",
        f"Command: `python benchmarks/demo_side_by_side.py {shlex.join(sys.argv[1:])}` (commit {convergence.commit()}). "
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, CPU, torch {torch.__version__}. Wall time "
        f"{(time.time() - started) / 60:.1f} min; denoiser training minutes: "
        + ", ".join(f"{k} {v:.1f}" if v else f"{k} trained before (not timed)" for k, v in minutes.items())
        + " (the minutes of the run that trained each).",
        "",
        f"One VQ-GAN and data (`{args.workdir}`), the demo's settings (`common.pipeline.DEMO_SETTINGS`) with each "
        "recipe's ids ("
        + "; ".join(f"`{name}`: " + " ".join(f"`--{k} {v}`" for k, v in ids.items()) for name, ids in RECIPES.items())
        + "; training only: "
        + "; ".join(f"`{name}`: " + " ".join(f"`--{k} {v}`" for k, v in ids.items()) for name, ids in TRAINING.items())
        + "); each run `<recipe>_<iterations>` trained that many iterations, EMA from half of them, its snapshot at a "
        "quarter (`_guide_<iteration>`: after that iteration) the guide of autoguidance (at the scale of its row; the "
        f"demo's is {demo_scale:g}); "
        f"{settings['inference']['num_samples']} samples from each seed set ({', '.join(f'{s}+' for s in seeds)}); "
        "ratios to the held-out real brains (about 1 is real-like). Steps are DDIM steps for `v_prediction`, Euler "
        "steps for `rectified_flow`."
        + (f" Every sample with {' '.join(f'`--{k} {v}`' for k, v in args.sampling_overrides.items())}."
           if args.sampling_overrides else ""),
        "",
        "Mean over the seed sets (lowest to highest in brackets):",
        "",
        "| run | steps | scale | seed sets | s / sample | " + " | ".join(METRICS.values()) + " |",
        "|" + "---|" * (5 + len(METRICS)),
        *(f"| {s['demo']} | {s['steps']} | {s['scale']:g} | {s['sets']} | {s['seconds_per_sample'][0]:.1f} | "
          + " | ".join(spread(s[key], s["sets"]) for key in METRICS) + " |" for s in summaries),
        "",
        "Every seed set:",
        "",
        "| run | steps | scale | seeds | s / sample | " + " | ".join(METRICS.values()) + " | near copies |",
        "|" + "---|" * (6 + len(METRICS)),
        *(f"| {r['demo']} | {r['steps']} | {r['scale']:g} | {r['seed']}+ | {r['seconds_per_sample']:.1f} | "
          + " | ".join(show(r.get(key)) for key in METRICS) + f" | {r['near_copies']} |"
          for r in sorted(rows, key=lambda r: (plan.index((r["demo"], r["steps"], r["scale"])), r["seed"]))),
        "",
        f"Pictures (`{pictures.name}/`): each row's samples beside real brains "
        "(`<run>_<steps>_steps[_scale_<scale>]_seeds_<seed>_samples_and_real.png`).",
    ]
    write_text("\n".join(lines) + "\n", args.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
