"""The MONAI Model Zoo's checks of a submitted bundle, run offline on a bundle folder or a package.

The zoo's CI (``ci/verify_bundle.py`` of Project-MONAI/model-zoo) checks a bundle's files, its version against the
changelog, its metadata against the JSON schema the metadata names, and (for bundles not on its exclusion lists)
the network's input and output against ``network_data_format`` and a TorchScript export; its pre-commit hooks
format JSON with an indent of 4 and refuse files over 1 MiB, which ``large_files.yml`` replaces with download URLs.
Generative bundles (``brats_mri_generative_diffusion``, ``maisi_ct_generative``) are exempt from the shape and
TorchScript checks; these bundles pass them anyway, with the denoiser's ``timesteps`` as the extra forward
argument. The schema is read from a copy kept in ``zoo_schema/`` (the zoo downloads it), so nothing here needs the
network. ``python -m common check_zoo FOLDER`` runs every check and names each problem.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from monai.apps.utils import SUPPORTED_HASH_TYPES, check_hash
from monai.bundle import ConfigParser, verify_metadata, verify_net_in_out
from monai.inferers import Inferer

__all__ = ["ZOO_SCHEMAS", "ZooCheckError", "check_bundle", "check_zoo", "is_package", "submitted_files"]

ZOO_SCHEMAS = Path(__file__).resolve().parent / "zoo_schema"  # copies of the schemas the zoo downloads
SCHEMA_URL_PREFIX = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
SCHEMA_MD5 = {"meta_schema_20240725.json": "76e1add273836515d0bbb3bc71962474"}  # of the released files
NECESSARY_FILES = ("LICENSE", "configs/metadata.json", "configs/inference.json")
MAX_COMMITTED_BYTES = 1024 * 1024  # the zoo's pre-commit check-added-large-files --maxkb=1024
INFERENCE_KEYS = ("bundle_root", "device", "network_def", "inferer", "output_dir")  # the zoo's CONTRIBUTING.md
HASH_TYPES = tuple(SUPPORTED_HASH_TYPES)  # MONAI's download checks md5 when an entry names none
RUN_OUTPUTS = ("output", "logs", "eval", "__pycache__")  # written by runs, never part of a submission
README_HEADINGS = (  # the zoo's docs/readme_template.md, "(Optional)" sections that every bundle here has included
    "authors", "tags", "model description", "data", "preprocessing", "performance", "system configuration",
    "limitations", "references",
)


class ZooCheckError(RuntimeError):
    """A bundle that fails the Model Zoo's checks; the message lists every problem."""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ZooCheckError(f"{path}: not valid JSON ({error}).") from None


def is_package(folder: Path) -> bool:
    """A package of ``python -m common package`` (weights, hashes, its code), not a bundle's source folder."""
    return (folder / "large_files.yml").is_file() and (folder / "common").is_dir()


def submitted_files(folder: Path, packaged: bool) -> list[Path]:
    """The files a submission of ``folder`` holds: not what runs wrote (``output/``, ``logs/``, ...), nor a source
    folder's ``models/`` (training checkpoints, which a package replaces)."""
    skipped = RUN_OUTPUTS + (() if packaged else ("models",))
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not (len(p.relative_to(folder).parts) > 1 and p.relative_to(folder).parts[0] in skipped)
    )


def check_files(folder: Path, packaged: bool) -> list[str]:
    """The files the zoo requires; a package also holds the denoiser's weights as ``models/model.pt``."""
    required = NECESSARY_FILES + (("models/model.pt",) if packaged else ())
    return [f"{folder / name}: missing (the Model Zoo requires it)." for name in required if not (folder / name).is_file()]


def check_version(folder: Path) -> list[str]:
    """``version`` is a key of ``changelog``, as the zoo's ``verify_version_changes`` asks."""
    metadata = _read_json(folder / "configs" / "metadata.json")
    version = metadata.get("version")
    if version is None or version not in metadata.get("changelog", {}):
        return [f"{folder / 'configs/metadata.json'}: version {version!r} has no entry in 'changelog'."]
    return []


def check_metadata_schema(folder: Path) -> list[str]:
    """The metadata validated against the schema it names, as the zoo's ``verify_metadata_format`` does."""
    meta_file = folder / "configs" / "metadata.json"
    url = _read_json(meta_file).get("schema", "")
    local = ZOO_SCHEMAS / url.removeprefix(SCHEMA_URL_PREFIX)
    if not url.startswith(SCHEMA_URL_PREFIX) or local.name not in SCHEMA_MD5 or not local.is_file():
        known = ", ".join(sorted(SCHEMA_MD5))
        return [f"{meta_file}: schema {url!r} is not one this check has a copy of ({known})."]
    with tempfile.TemporaryDirectory() as scratch:  # verify_metadata reads the schema where it would download it
        schema = Path(scratch) / "schema.json"
        shutil.copyfile(local, schema)
        try:
            verify_metadata(meta_file=str(meta_file), filepath=str(schema), hash_val=SCHEMA_MD5[local.name], hash_type="md5")
        except Exception as error:  # MONAI re-raises jsonschema's ValidationError; name the failing key's path
            where = getattr(error.__cause__ or error, "json_path", "$")
            return [f"{meta_file}: does not follow {local.name}: {str(error).splitlines()[0]}" + (f" (at {where})" if where != "$" else "")]
    return []


def check_json_format(folder: Path, packaged: bool) -> list[str]:
    """Every JSON file formatted as the zoo's pre-commit ``pretty-format-json --indent=4 --no-sort-keys`` writes it."""
    problems = []
    for path in (p for p in submitted_files(folder, packaged) if p.suffix == ".json"):
        text = path.read_text()
        try:
            formatted = json.dumps(json.loads(text), indent=4, ensure_ascii=True) + "\n"
        except json.JSONDecodeError as error:
            problems.append(f"{path}: not valid JSON ({error}).")
            continue
        if formatted != text:
            problems.append(f"{path}: not formatted as json.dumps(..., indent=4) with a final newline.")
    return problems


def check_large_files(folder: Path, packaged: bool, require_urls: bool) -> list[str]:
    """Every file over the zoo's 1 MiB commit limit is listed in ``large_files.yml`` with a matching hash (and,
    for a submission, the URL the zoo downloads it from); a package holds every file it lists."""
    listing = next((folder / f"large_files.{s}" for s in ("yml", "yaml", "json") if (folder / f"large_files.{s}").is_file()), None)
    entries = ConfigParser.load_config_file(str(listing)).get("large_files", []) if listing else []
    if not isinstance(entries, list):
        return [f"{listing}: 'large_files' must be a list of entries with path, url, hash_val and hash_type."]
    problems, listed = [], set()
    for entry in entries:
        if not isinstance(entry, dict) or not entry.get("path"):
            problems.append(f"{listing}: entry {entry!r} is not a mapping with a 'path'.")
            continue
        path = (folder / str(entry["path"])).resolve()
        if not path.is_relative_to(folder.resolve()):
            problems.append(f"{listing}: {entry['path']}: lies outside the bundle.")
            continue
        listed.add(path)
        hash_type = entry.get("hash_type") or "md5"
        if hash_type not in HASH_TYPES:
            problems.append(f"{listing}: {entry['path']}: hash_type {hash_type!r} is not one of {HASH_TYPES}.")
        elif path.is_file() and entry.get("hash_val") and not check_hash(path, entry["hash_val"], hash_type):
            problems.append(f"{listing}: {entry['path']}: the file's {hash_type} differs from hash_val.")
        if packaged and not path.is_file():
            problems.append(f"{listing}: {entry['path']}: listed, but the package has no such file.")
        if require_urls and not entry.get("url"):
            problems.append(f"{listing}: {entry['path']}: no url; the zoo downloads the file from it.")
    for path in submitted_files(folder, packaged):
        if path.stat().st_size > MAX_COMMITTED_BYTES and path.resolve() not in listed:
            problems.append(f"{path}: {path.stat().st_size} bytes, over the zoo's 1 MiB limit, and not in large_files.yml.")
    return problems


def check_inference_config(folder: Path) -> list[str]:
    """The ids the zoo asks of an inference config, and an ``inferer`` that is a MONAI ``Inferer``."""
    config = folder / "configs" / "inference.json"
    parser = ConfigParser(_read_json(config))
    missing = [key for key in INFERENCE_KEYS if key not in parser]
    if missing:
        return [f"{config}: no {', '.join(missing)} (the Model Zoo asks every inference config for {', '.join(INFERENCE_KEYS)})."]
    parser["bundle_root"] = str(folder)
    inferer = parser.get_parsed_content("inferer")
    if not isinstance(inferer, Inferer):
        return [f"{config}: 'inferer' is a {type(inferer).__name__}, not a MONAI Inferer."]
    return []


def check_readme(folder: Path) -> list[str]:
    """``docs/README.md`` has the sections of the zoo's README template."""
    readme = folder / "docs" / "README.md"
    if not readme.is_file():
        return [f"{readme}: missing (the Model Zoo's README template goes there)."]
    headings = {line.lstrip("#").replace("*", "").strip().lower() for line in readme.read_text().splitlines() if line.startswith("##")}
    missing = [h for h in README_HEADINGS if h not in headings]
    return [f"{readme}: no section {', '.join(repr(h) for h in missing)} of the Model Zoo's README template."] if missing else []


def _denoiser_inputs(metadata: dict, spatial_shape: Sequence[int] | None) -> dict:
    """Overrides for ``verify_net_in_out``: the metadata's image input, at ``spatial_shape`` if given."""
    if spatial_shape is None:
        return {}
    image = dict(metadata["network_data_format"]["inputs"]["image"], spatial_shape=list(spatial_shape))
    return {"_meta_#network_data_format#inputs#image": image}


def _labels_input(metadata: dict, device: str) -> dict[str, torch.Tensor]:
    """A class-conditional denoiser's ``context`` for one sample, as ``network_data_format`` names it (one class
    index per variable; the first classes); nothing for other networks."""
    context = metadata["network_data_format"]["inputs"].get("context")
    return {} if context is None else {"context": torch.zeros(1, context["num_channels"], dtype=torch.long, device=device)}


def check_networks(folder: Path, device: str = "cpu", spatial_shape: Sequence[int] | None = None) -> list[str]:
    """The zoo's ``verify_data_shape`` (MONAI's ``verify_net_in_out``) for the denoiser, with ``timesteps`` (and a
    class-conditional denoiser's labels, ``context``) as its extra forward arguments, and the same for the VQ-GAN
    against ``autoencoder_data_format`` (its forward returns the reconstruction and the quantisation loss; the
    reconstruction is checked). ``spatial_shape`` runs the denoiser at another size than the metadata's (it is fully
    convolutional), for a quick check on a CPU."""
    meta_file, config_file = folder / "configs" / "metadata.json", folder / "configs" / "inference.json"
    metadata = _read_json(meta_file)
    problems = []
    try:
        verify_net_in_out(
            "network_def", meta_file=str(meta_file), config_file=str(config_file), device=device,
            extra_forward_args={"timesteps": torch.tensor([1], device=device), **_labels_input(metadata, device)},
            bundle_root=str(folder), **_denoiser_inputs(metadata, spatial_shape),
        )
    except Exception as error:
        problems.append(f"{config_file}: network_def fails MONAI's verify_net_in_out: {type(error).__name__}: {error}")
    if "autoencoder_data_format" in metadata:
        try:
            problems += _check_autoencoder(folder, metadata["autoencoder_data_format"], device)
        except Exception as error:
            problems.append(f"{config_file}: autoencoder_def cannot be checked against autoencoder_data_format: "
                            f"{type(error).__name__}: {error}")
    return problems


def _check_autoencoder(folder: Path, data_format: dict, device: str) -> list[str]:
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    parser["bundle_root"] = str(folder)
    expected_in, expected_out = data_format["inputs"]["image"], data_format["outputs"]["pred"]
    network = parser.get_parsed_content("autoencoder_def").to(device).eval()
    with torch.no_grad():
        output = network(torch.rand(1, expected_in["num_channels"], *expected_in["spatial_shape"], device=device))
    reconstruction = output[0] if isinstance(output, (tuple, list)) else output
    found = (reconstruction.shape[1], list(reconstruction.shape[2:]), str(reconstruction.dtype).removeprefix("torch."))
    wanted = (expected_out["num_channels"], list(expected_out["spatial_shape"]), expected_out["dtype"])
    if found != wanted:
        return [f"{folder / 'configs/metadata.json'}: autoencoder_def gives (channels, shape, dtype) {found}, "
                f"autoencoder_data_format says {wanted}."]
    return []


def check_torchscript(folder: Path) -> list[str]:
    """A package's TorchScript files load, as the zoo's ``verify_torchscript`` loads ``models/model.ts``."""
    problems = []
    for path in sorted((folder / "models").glob("*.ts")):
        try:
            torch.jit.load(str(path), map_location="cpu")
        except Exception as error:
            problems.append(f"{path}: torch.jit.load fails: {error}")
    return problems


def check_bundle(
    folder: str | Path,
    packaged: bool | None = None,
    require_urls: bool = False,
    device: str = "cpu",
    spatial_shape: Sequence[int] | None = None,
) -> list[str]:
    """Every check of this module on a bundle folder; returns the problems found (empty: it passes).

    Args:
        folder: a bundle folder (``bundles/<name>``) or an unpacked package.
        packaged: whether it is a package (weights in ``models/``, ``large_files.yml``, its code); by default,
            whether the folder looks like one (``is_package``).
        require_urls: every entry of ``large_files.yml`` must have its download URL (a zoo submission).
        device: where the networks run for the shape checks.
        spatial_shape: the denoiser's input size for its shape check, instead of the metadata's.
    """
    folder = Path(folder)
    if not (folder / "configs" / "metadata.json").is_file():
        raise ZooCheckError(f"{folder}: not a bundle folder (no configs/metadata.json).")
    packaged = is_package(folder) if packaged is None else packaged
    problems = check_files(folder, packaged)
    if problems:
        return problems
    checks: list[Callable[[], list[str]]] = [
        lambda: check_version(folder),
        lambda: check_metadata_schema(folder),
        lambda: check_json_format(folder, packaged),
        lambda: check_large_files(folder, packaged, require_urls),
        lambda: check_inference_config(folder),
        lambda: check_readme(folder),
        lambda: check_networks(folder, device, spatial_shape),
    ]
    if packaged:
        checks.append(lambda: check_torchscript(folder))
    for check in checks:
        problems += check()
    return problems


def check_zoo(folder: str, submission: bool = False, packaged: bool | None = None, device: str = "cpu") -> None:
    """``python -m common check_zoo FOLDER [--submission True] [--packaged True|False]``: run the Model Zoo's
    checks on a bundle folder or an unpacked package and print the result; ``ZooCheckError`` listing every
    problem if any."""
    packaged = is_package(Path(folder)) if packaged is None else packaged
    problems = check_bundle(folder, packaged=packaged, require_urls=submission, device=device)
    if problems:
        raise ZooCheckError(f"{folder} fails {len(problems)} Model Zoo check(s):\n" + "\n".join(f"- {p}" for p in problems))
    print(f"{folder}: passes the Model Zoo checks (files, version, metadata schema, JSON format, large files, "
          "inference ids, README sections, network input/output" + (", TorchScript" if packaged else "") + ").")
