from __future__ import annotations

import pytest
import torch

from common.checkpoints import CheckpointError, ModelSettings, find_latest_checkpoint, load_weights
from tests.helpers import tiny_vqgan


def test_loads_a_named_entry(tmp_path):
    source, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    torch.save({"network": source.state_dict(), "optimizer": {}}, tmp_path / "c.pt")
    load_weights(target, tmp_path / "c.pt", "network")
    assert torch.equal(source.weight, target.weight)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(torch.nn.Linear(3, 2), tmp_path / "none.pt")


def test_truncated_file(tmp_path):
    torch.save({"network": torch.nn.Linear(30, 20).state_dict()}, tmp_path / "c.pt")
    raw = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "c.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_weights(torch.nn.Linear(30, 20), tmp_path / "c.pt", "network")


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"network": torch.nn.Linear(3, 2)}, tmp_path / "c.pt")  # a whole module, not a state dict
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_weights(torch.nn.Linear(3, 2), tmp_path / "c.pt", "network")


def test_missing_entry_and_wrong_shapes(tmp_path):
    torch.save({"network": torch.nn.Linear(3, 2).state_dict()}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"no entry 'ema_network' \(found: \['network'\]\)"):
        load_weights(torch.nn.Linear(3, 2), tmp_path / "c.pt", "ema_network")
    with pytest.raises(CheckpointError, match="does not fit Linear"):
        load_weights(torch.nn.Linear(4, 2), tmp_path / "c.pt", "network")


def test_a_checkpoint_of_another_bundle_is_named_not_a_torch_trace(tmp_path):
    """A brain VQ-GAN (compression 2) checkpoint given to a knee/chest one (compression 4): a one-line error."""
    torch.save({"autoencoder": tiny_vqgan(downsample_factor=2).state_dict()}, tmp_path / "autoencoder.pt")
    with pytest.raises(CheckpointError) as info:
        load_weights(tiny_vqgan(downsample_factor=4), tmp_path / "autoencoder.pt", "autoencoder")
    message = str(info.value)
    assert message.startswith(f"checkpoint {tmp_path / 'autoencoder.pt'} [autoencoder] does not fit VQGAN")
    assert "trained with other settings or by another bundle" in message and "\n" not in message


def test_find_latest_checkpoint_goes_by_iteration_not_by_name(tmp_path):
    assert find_latest_checkpoint(tmp_path / "none", "m") is None
    for iteration in (8, 10, 12):
        torch.save({"trainer": {"iteration": iteration}}, tmp_path / f"m_iteration={iteration}.pt")
    torch.save({"trainer": {"iteration": 10}}, tmp_path / "m.pt")  # final file of a shorter, earlier run
    (tmp_path / ".m_iteration=14.pt.abc.tmp").write_bytes(b"half")  # an interrupted write is never a candidate
    (tmp_path / "m_old.pt").write_bytes(b"")
    assert find_latest_checkpoint(tmp_path, "m").name == "m_iteration=12.pt"
    torch.save({"trainer": {"iteration": 20}}, tmp_path / "m.pt")
    assert find_latest_checkpoint(tmp_path, "m").name == "m.pt"


def test_model_settings_are_stored_and_a_difference_is_refused_with_the_setting_named(tmp_path):
    settings = ModelSettings(num_train_timesteps=300, noise_schedule="cosine", prediction_type="v_prediction")
    network = torch.nn.Linear(1, 1)
    torch.save({"model_settings": settings.state_dict(), "ema_network": network.state_dict()}, tmp_path / "diffusion.pt")
    torch.save({"ema_network": network.state_dict()}, tmp_path / "older.pt")
    load_weights(network, tmp_path / "diffusion.pt", "ema_network", settings)  # the same: accepted
    load_weights(network, tmp_path / "older.pt", "ema_network", ModelSettings(prediction_type="epsilon"))  # before settings were stored
    with pytest.raises(CheckpointError, match=r"trained with prediction_type 'v_prediction' \(configured: 'epsilon'\); set --prediction_type"):
        load_weights(network, tmp_path / "diffusion.pt", "ema_network",
                     ModelSettings(num_train_timesteps=300, noise_schedule="cosine", prediction_type="epsilon"))
    with pytest.raises(TypeError, match="setting 'schedule' must be a string, number, boolean or None, or lists"):
        ModelSettings(schedule=torch.zeros(1))
    # a class-conditional model's classes are a setting too: compared as JSON data, so a tuple is the list it was
    conditional = ModelSettings(class_labels={"acl": ("intact", "tear")})
    torch.save({"model_settings": conditional.state_dict(), "ema_network": network.state_dict()}, tmp_path / "conditional.pt")
    load_weights(network, tmp_path / "conditional.pt", "ema_network", ModelSettings(class_labels={"acl": ["intact", "tear"]}))
    with pytest.raises(CheckpointError, match=r"trained with class_labels \{'acl': \['intact', 'tear'\]\} \(configured: None\)"):
        load_weights(network, tmp_path / "conditional.pt", "ema_network", ModelSettings(class_labels=None))
    # an older checkpoint was trained with what written_before says: sampled with another setting, it is refused too
    paper = {"prediction_type": "epsilon"}
    load_weights(network, tmp_path / "older.pt", "ema_network", ModelSettings(written_before=paper, prediction_type="epsilon"))
    with pytest.raises(CheckpointError, match=r"older.pt holds no settings, so it was written before they were stored and "
                                              r"the model was trained with prediction_type 'epsilon' \(configured: 'v_prediction'\)"):
        load_weights(network, tmp_path / "older.pt", "ema_network", ModelSettings(written_before=paper, prediction_type="v_prediction"))
    with pytest.raises(ValueError, match=r"written_before names \['schedule'\]"):
        ModelSettings(written_before={"schedule": "cosine"}, prediction_type="epsilon")
