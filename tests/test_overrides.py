"""A mistyped id on the command line stops the run and says which ids were meant."""

from __future__ import annotations

import pytest

from common.overrides import (
    check_command_line,
    command_line_overrides,
    config_ids,
    refuse_unknown_ids,
)
from tests.bundles.bundle_runs import config_files

MONAI = "/usr/lib/python3/site-packages/monai/bundle/__main__.py"
TRAIN = config_files("brain_mri", "train_autoencoder")


def test_the_command_line_of_a_bundle_run_is_read_as_fire_reads_it():
    argv = [MONAI, "run", "--config_file", f"['{TRAIN[0]}']", "--dataset_dir=/data", "--train#trainer#max_epochs", "3",
            "--resume", "--log_interval", "-1", "--meta_file", "m.json", "-save-interval", "5", "--", "--trace"]
    files, ids, arguments = command_line_overrides(argv)
    assert files == TRAIN and ids == ["dataset_dir", "train#trainer#max_epochs", "resume", "log_interval", "save_interval"]
    assert arguments == {"config_file": f"['{TRAIN[0]}']", "meta_file": "m.json"}
    # positional arguments fill run's parameters in order; comma-separated config files as MONAI reads them
    files, ids, arguments = command_line_overrides([MONAI, "run", "training", "--config_file", "a.json,b.json", "-dataset_dirr", "x"])
    assert files == ["a.json", "b.json"] and ids == ["dataset_dirr"] and arguments["run_id"] == "training"
    assert command_line_overrides(["/usr/bin/pytest", "run", "--config_file", "x.json", "--typo", "1"]) is None
    assert command_line_overrides([MONAI, "download", "--name", "x"]) is None


def test_unknown_ids_are_an_error_with_the_closest_known_ids():
    with pytest.raises(ValueError) as info:
        refuse_unknown_ids(TRAIN, ["dataset_dir", "dataset_dirr", "train#trainer#max_epoch", "zzz_unrelated"])
    message = str(info.value)
    assert message.startswith("3 ids given on the command line are not in train_autoencoder.json:")
    assert "--dataset_dirr (did you mean --dataset_dir" in message
    assert "--train#trainer#max_epoch (did you mean --train#trainer#max_epochs" in message
    assert "--zzz_unrelated" in message and "--zzz_unrelated (did" not in message and "Nothing was run" in message
    refuse_unknown_ids(TRAIN, ["dataset_dir", "autoencoder_def#base_channels", "train#handlers#1#save_dir"])  # all known


def test_what_monai_itself_reads_is_not_refused():
    known = ["workflow_type", "_meta_#version", "train#dataloader#pin_memory"]  # a new argument of a component
    refuse_unknown_ids(TRAIN, known)
    refuse_unknown_ids(TRAIN, ["tracking_uri", "experiment_name", "run_name"], tracking="mlflow")
    with pytest.raises(ValueError, match="--tracking_uri"):
        refuse_unknown_ids(TRAIN, ["tracking_uri"])  # without tracking it is a typo like any other
    with pytest.raises(ValueError, match="--train#dataloaderr#pin_memory"):
        refuse_unknown_ids(TRAIN, ["train#dataloaderr#pin_memory"])


def test_only_bundle_runs_are_checked(monkeypatch):
    monkeypatch.setattr("sys.argv", ["/usr/bin/pytest", "--dataset_dirr", "x"])
    check_command_line()  # another program: nothing to check
    with pytest.raises(ValueError, match="--dataset_dirr"):
        check_command_line([MONAI, "run", "--config_file", TRAIN[0], "--dataset_dirr", "x"])
    with pytest.raises(ValueError, match="--dataset_dirr"):  # one dash is a flag to fire too
        check_command_line([MONAI, "run", "--config_file", TRAIN[0], "-dataset_dirr", "x"])


def test_config_ids_name_nested_keys_and_list_items():
    assert list(config_ids({"a": {"b": [1, {"c": 2}]}})) == ["a", "a#b", "a#b#0", "a#b#1", "a#b#1#c"]
