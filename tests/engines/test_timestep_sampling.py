"""Which timesteps diffusion training draws: uniformly (the papers), by their min-SNR-gamma weight at the inputs'
own variance, or half shifted to the SNRs of unit-variance inputs, and for rectified flow uniformly or logit-normally
over 1 to T (``common.engines.timestep_sampling``), through ``PredictionTargetPrepareBatch``."""

from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDPMScheduler

from common.engines import PredictionTargetPrepareBatch
from common.engines.timestep_sampling import logit_normal_probabilities, min_snr_weights, timestep_probabilities
from common.networks import RectifiedFlowScheduler

T = 300


def scheduler(prediction_type: str = "v_prediction") -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=T, schedule="cosine", prediction_type=prediction_type)


def test_uniform_gives_every_timestep_the_same_chance():
    probabilities = timestep_probabilities("uniform", scheduler().alphas_cumprod, 0.03, "v_prediction")
    assert probabilities.shape == (T,) and torch.allclose(probabilities, torch.full((T,), 1 / T, dtype=torch.float64))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weights_follow_hang_et_al_at_the_real_snr(prediction_type):
    alphas = scheduler(prediction_type).alphas_cumprod
    weights = min_snr_weights(alphas, 0.03, prediction_type, 5.0)
    for t in (0, 20, 150, 299):
        snr = 0.03 * float(alphas[t]) / (1 - float(alphas[t]))
        expected = {"epsilon": min(snr, 5) / snr, "v_prediction": min(snr, 5) / (snr + 1), "sample": min(snr, 5)}[prediction_type]
        assert float(weights[t]) == pytest.approx(expected, rel=1e-6)


def test_min_snr_favours_the_less_noisy_steps_more_the_less_variance_the_inputs_have():
    alphas = scheduler().alphas_cumprod
    low_noise_share = {var: float(timestep_probabilities("min_snr", alphas, var, "v_prediction")[: T // 2].sum()) for var in (0.03, 1.0)}
    assert low_noise_share[0.03] > 0.9  # codebook-range latents: the real SNR is low almost everywhere
    assert 0.5 < low_noise_share[1.0] < low_noise_share[0.03]
    # epsilon: weight 1 wherever the real SNR is below gamma, so nearly uniform for low-variance latents
    epsilon = timestep_probabilities("min_snr", scheduler("epsilon").alphas_cumprod, 0.03, "epsilon")
    assert float(epsilon[T // 2 :].sum()) == pytest.approx(0.5, abs=0.05)


def test_variance_shifted_moves_half_the_draws_to_the_steps_with_the_schedules_snr():
    alphas = scheduler().alphas_cumprod.double()
    log_snr = (alphas / (1 - alphas)).log()
    uniform = torch.full((T,), 1 / T, dtype=torch.float64)
    assert torch.allclose(timestep_probabilities("variance_shifted", alphas, 1.0, "v_prediction"), uniform)  # unit variance
    low = timestep_probabilities("variance_shifted", alphas, 0.03, "v_prediction")
    assert float(low.sum()) == pytest.approx(1.0) and float(low.min()) >= 0.5 / T  # every step keeps half its chance
    # the shifted half: a step drawn uniformly at j moves to the step t with 0.03 * SNR(t) = SNR(j), within one step
    shifted = 2 * low - uniform
    for j in (40, 150, 260):
        t = int(torch.argmin((log_snr + torch.log(torch.tensor(0.03, dtype=torch.float64)) - log_snr[j]).abs()))
        assert t < j and float(shifted[t - 1 : t + 2].sum()) >= 1 / T
    assert float(low[:18].sum()) > 3 * 18 / T  # several times the uniform share of the least noisy steps
    assert float(low[T // 2 :].sum()) > 0.25  # and a good share of the noisy half, unlike min-SNR's
    # targets beyond the schedule's least noisy SNR pile up on step 0 (the docstring's 2.5% at variance 0.03)
    assert float(low[0]) == pytest.approx(0.025, abs=0.003)
    high = timestep_probabilities("variance_shifted", alphas, 4.0, "v_prediction")
    assert float(high[T // 2 :].sum()) > 0.5  # more variance than the schedule assumes: towards the noisy steps


def test_the_prepare_batch_draws_timesteps_by_the_batchs_own_variance():
    torch.manual_seed(0)
    prepare = PredictionTargetPrepareBatch(T, scheduler(), timestep_sampling="min_snr")
    images = torch.randn(4000, 1, 2, 2, 2) * 0.17  # the spread of codebook-range latents
    _, _, _, kwargs = prepare({"image": images})
    drawn = kwargs["timesteps"]
    assert drawn.shape == (4000,) and drawn.dtype == torch.long and 0 <= int(drawn.min()) and int(drawn.max()) < T
    expected = float(timestep_probabilities("min_snr", scheduler().alphas_cumprod, float(images.var()), "v_prediction")[:30].sum())
    assert float((drawn < 30).float().mean()) == pytest.approx(expected, abs=0.03)
    shifted = PredictionTargetPrepareBatch(T, scheduler(), timestep_sampling="variance_shifted")({"image": images})[3]["timesteps"]
    expected = float(timestep_probabilities("variance_shifted", scheduler().alphas_cumprod, float(images.var()), "v_prediction")[:30].sum())
    assert float((shifted < 30).float().mean()) == pytest.approx(expected, abs=0.03) and expected > 0.2
    uniform = PredictionTargetPrepareBatch(T, scheduler())({"image": images})[3]["timesteps"]
    assert float((uniform < 30).float().mean()) == pytest.approx(0.1, abs=0.03)


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="timestep_sampling must be one of"):
        PredictionTargetPrepareBatch(T, scheduler(), timestep_sampling="minsnr")
    with pytest.raises(ValueError, match="needs the scheduler"):
        PredictionTargetPrepareBatch(T, None, timestep_sampling="min_snr")
    with pytest.raises(ValueError, match="snr_gamma must be a positive number"):
        PredictionTargetPrepareBatch(T, scheduler(), timestep_sampling="min_snr", snr_gamma=0)
    with pytest.raises(ValueError, match="variance must be positive.*constant"):
        timestep_probabilities("min_snr", scheduler().alphas_cumprod, 0.0, "v_prediction")
    with pytest.raises(ValueError, match="variance must be positive.*constant"):
        timestep_probabilities("variance_shifted", scheduler().alphas_cumprod, 0.0, "v_prediction")


def test_logit_normal_puts_the_draws_at_the_middle_of_the_line_and_rectified_flow_draws_from_1_to_t():
    probabilities = logit_normal_probabilities(T)
    assert probabilities.shape == (T,) and float(probabilities.sum()) == pytest.approx(1.0)
    assert torch.allclose(probabilities, probabilities.flip(0))  # symmetric about t = T / 2
    # a standard normal logit: about 38% of the draws within 0.4 to 0.6 of the way (erf of 0.405 / sqrt 2 is 0.31 each side)
    assert float(probabilities[int(0.4 * T):int(0.6 * T)].sum()) == pytest.approx(0.315, abs=0.01)
    assert float(probabilities[:3].sum()) < 1e-4 and int(probabilities.argmax()) in (T // 2 - 1, T // 2)

    torch.manual_seed(0)
    images = torch.randn(4000, 1, 2, 2, 2)
    for sampling in ("uniform", "logit_normal"):
        drawn = PredictionTargetPrepareBatch(T, RectifiedFlowScheduler(T), timestep_sampling=sampling)({"image": images})[3]["timesteps"]
        assert drawn.dtype == torch.long and int(drawn.min()) >= 1 and int(drawn.max()) <= T
    assert float(((drawn > 0.4 * T) & (drawn <= 0.6 * T)).float().mean()) == pytest.approx(0.315, abs=0.03)


def test_rectified_flow_refuses_the_densities_of_a_ddpm_schedule_and_ddpm_refuses_logit_normal():
    for sampling in ("min_snr", "variance_shifted"):
        with pytest.raises(ValueError, match="with noise_schedule 'rectified_flow' choose one of"):
            PredictionTargetPrepareBatch(T, RectifiedFlowScheduler(T), timestep_sampling=sampling)
    with pytest.raises(ValueError, match="'logit_normal' is for noise_schedule 'rectified_flow'"):
        PredictionTargetPrepareBatch(T, scheduler(), timestep_sampling="logit_normal")
    with pytest.raises(ValueError, match="'logit_normal' is for noise_schedule 'rectified_flow'"):
        timestep_probabilities("logit_normal", scheduler().alphas_cumprod, 1.0, "v_prediction")
