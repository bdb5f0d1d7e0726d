"""Diffusers' noise schedulers, ported to numpy for the denoising loop of text-to-image pipelines.

Each class matches the diffusers class of the same name (diffusers 0.39, `diffusers/schedulers/`)
step for step: the same timesteps, sigmas and update formulas, computed in the same precision
(float32 where diffusers computes with torch tensors, float64 where it computes with numpy before
casting, torch's float64 accumulation in `cumprod`, its fused multiply-add in `linspace`): the
training schedule is diffusers' to the bit, and the latents of a whole loop agree with diffusers' to
within 1e-6 of their scale (tests/test_schedulers.py), the rest being torch's float32 `sqrt`, which
is not always correctly rounded on CPU.

Only what a text-to-image loop uses is ported: `set_timesteps(n)`, `scale_model_input` and `step`.
Not ported: `add_noise` (image-to-image), custom `timesteps`/`sigmas`, Euler's `s_churn`, DDIM's
`use_clipped_model_output`, DPM-Solver's SDE and non-++ variants. `scheduler_from_config` refuses a
config that asks for any of what is not ported, rather than produce different latents; keys the
diffusers class does not read (SD 1.5's PNDM config carries `clip_sample`) are ignored, as
diffusers ignores them.

Stochastic steps (Euler ancestral, DDIM with `eta` > 0, LCM) take their noise from `noise` when
given, for instance the noise diffusers drew, else draw it from a numpy `Generator`.
"""

from __future__ import annotations

import abc
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")


def noise_like(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Standard normal float32 noise of `shape`, what diffusers' `randn_tensor` draws (with another generator)."""
    return rng.standard_normal(tuple(shape), dtype=np.float32)


class Scheduler(abc.ABC):
    """One diffusers scheduler: `set_timesteps`, then for each of `timesteps`, `scale_model_input` on the
    latents, the model, and `step` on its output."""

    order: ClassVar[int] = 1
    unsupported: ClassVar[Mapping[str, object]] = {}
    """Config keys of the diffusers class that the port does not implement, each with the only value it
    accepts (diffusers' default)."""

    def __init__(self) -> None:
        self.timesteps: np.ndarray = np.empty(0, dtype=np.int64)
        self.num_inference_steps: int | None = None
        self._step_index: int | None = None

    @property
    def init_noise_sigma(self) -> float:
        """The standard deviation of the initial latents."""
        return 1.0

    @abc.abstractmethod
    def set_timesteps(self, num_inference_steps: int) -> None:
        """Sets `timesteps` for a loop of `num_inference_steps` and resets the state of any earlier loop."""

    def scale_model_input(self, sample: np.ndarray, timestep: int | float) -> np.ndarray:
        """The model's input at `timestep`: the latents themselves, unless the scheduler scales them."""
        return sample

    @abc.abstractmethod
    def step(
        self,
        model_output: np.ndarray,
        timestep: int | float,
        sample: np.ndarray,
        *,
        noise: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """The previous sample (diffusers' `prev_sample`) from the model's output at `timestep`."""

    def _index(self, timestep: int | float) -> int:
        """The position of this step in `timesteps`: found from the first step's timestep (the second of two
        equal ones, as diffusers does), then counted."""
        if self._step_index is None:
            found = np.flatnonzero(self.timesteps == timestep)
            if found.size == 0:
                raise ValueError(
                    f"timestep {timestep} is not in {type(self).__name__}'s schedule: call set_timesteps, then step "
                    "through its `timesteps`"
                )
            self._step_index = int(found[1] if found.size > 1 else found[0])
        return self._step_index

    def _noise(self, shape: tuple[int, ...], noise: np.ndarray | None, rng: np.random.Generator | None) -> np.ndarray:
        if noise is not None:
            if noise.shape != shape:
                raise ValueError(f"noise has shape {noise.shape}, the sample {shape}")
            return noise.astype(np.float32, copy=False)
        if rng is None:
            raise ValueError(f"{type(self).__name__}'s step is stochastic: pass `noise` or `rng`")
        return noise_like(shape, rng)

    def _check(self, key: str, value: object, allowed: Sequence[object]) -> None:
        if value not in allowed:
            raise ValueError(
                f"{type(self).__name__}: {key}={value!r} is not supported; supported: {', '.join(map(repr, allowed))}"
            )


def _torch_linspace_float32(start: float, end: float, steps: int) -> np.ndarray:
    """`torch.linspace(start, end, steps, dtype=torch.float32)` on CPU: a float32 step, each value one fused
    multiply-add from the nearer end."""
    first, last = np.float32(start), np.float32(end)
    step = np.float64((last - first) / np.float32(steps - 1))
    index = np.arange(steps)
    from_start = np.float64(first) + step * index
    from_end = np.float64(last) - step * (steps - 1 - index)
    return np.where(index < steps // 2, from_start, from_end).astype(np.float32)


def _cumprod(values: np.ndarray) -> np.ndarray:
    """`torch.cumprod` of float32 on CPU, which accumulates in float64."""
    return np.cumprod(values, dtype=np.float64).astype(np.float32)


def _betas_for_alpha_bar(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """The `squaredcos_cap_v2` (Glide cosine) schedule, in Python floats as diffusers computes it."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), max_beta)
        for i in range(num_train_timesteps)
    ]
    return np.asarray(betas, dtype=np.float32)


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Betas rescaled to a zero terminal SNR (https://huggingface.co/papers/2305.08891, Algorithm 1)."""
    root = np.sqrt(_cumprod(1.0 - betas))
    first, last = root[0], root[-1]
    root = (root - last) * (first / (first - last))
    alphas_bar = root**2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


def _alphas_cumprod(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    trained_betas: Sequence[float] | None,
    rescale_betas_zero_snr: bool,
) -> np.ndarray:
    """The float32 cumulative product of the training schedule's alphas, as every diffusers scheduler builds it."""
    if trained_betas is not None:
        betas = np.asarray(trained_betas, dtype=np.float32)
    elif beta_schedule == "linear":
        betas = _torch_linspace_float32(beta_start, beta_end, num_train_timesteps)
    elif beta_schedule == "scaled_linear":
        betas = _torch_linspace_float32(beta_start**0.5, beta_end**0.5, num_train_timesteps) ** 2
    else:
        betas = _betas_for_alpha_bar(num_train_timesteps)
    if rescale_betas_zero_snr:
        betas = _rescale_zero_terminal_snr(betas)
    return _cumprod(1.0 - betas)


def _spaced_timesteps(
    spacing: str, num_train_timesteps: int, num_inference_steps: int, steps_offset: int
) -> np.ndarray:
    """The descending float64 timesteps of Table 2 of https://huggingface.co/papers/2305.08891, before each
    scheduler rounds or casts them."""
    if spacing == "linspace":
        return np.linspace(0, num_train_timesteps - 1, num_inference_steps)[::-1].copy()
    if spacing == "leading":
        ratio = num_train_timesteps // num_inference_steps
        return (np.arange(0, num_inference_steps) * ratio)[::-1].astype(np.float64) + steps_offset
    return np.arange(num_train_timesteps, 0, -num_train_timesteps / num_inference_steps).round() - 1


def _sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """The fractional training timesteps of `sigmas`, interpolated in log-sigma (diffusers' `_sigma_to_t`,
    which takes one sigma at a time)."""
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    low, high = log_sigmas[low_idx], log_sigmas[low_idx + 1]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    t: np.ndarray = (1 - w) * low_idx + w * (low_idx + 1)
    return t


def _karras_sigmas(sigma_min: float, sigma_max: float, num_inference_steps: int) -> np.ndarray:
    """The noise levels of https://huggingface.co/papers/2206.00364 (rho = 7), in float64."""
    rho = 7.0
    ramp = np.linspace(0, 1, num_inference_steps)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas: np.ndarray = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return sigmas


def _threshold(sample: np.ndarray, ratio: float, max_value: float) -> np.ndarray:
    """Dynamic thresholding (https://huggingface.co/papers/2205.11487): each sample clipped to its `ratio`
    quantile of absolute values, at least 1 and at most `max_value`, then divided by it."""
    flat = sample.reshape(sample.shape[0], -1).astype(np.promote_types(sample.dtype, np.float32), copy=False)
    s = np.clip(np.quantile(np.abs(flat), ratio, axis=1), 1, max_value).astype(flat.dtype)[:, None]
    thresholded: np.ndarray = np.clip(flat, -s, s) / s
    return thresholded.reshape(sample.shape).astype(sample.dtype)


class _Sigmas(Scheduler):
    """The Euler schedulers: timesteps walk sigmas ((1 - ᾱ) / ᾱ) ** 0.5 to 0, the model's input is scaled by
    (sigma ** 2 + 1) ** -0.5, and the initial latents have the largest sigma's spread."""

    def __init__(self, alphas_cumprod: np.ndarray, timestep_spacing: str, prediction_type: str) -> None:
        super().__init__()
        self.alphas_cumprod = alphas_cumprod
        self.timestep_spacing = timestep_spacing
        self.prediction_type = prediction_type
        self.train_sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.sigmas = np.concatenate([self.train_sigmas[::-1], np.zeros(1, dtype=np.float32)])

    @property
    def init_noise_sigma(self) -> float:
        top = self.sigmas.max()
        return float(top if self.timestep_spacing in ("linspace", "trailing") else (top**2 + 1) ** 0.5)

    def _set_sigmas(self, timesteps: np.ndarray, sigmas: np.ndarray) -> None:
        self.num_inference_steps = len(timesteps)
        self.timesteps = timesteps.astype(np.float32)
        self.sigmas = sigmas.astype(np.float32)
        self._step_index = None

    def scale_model_input(self, sample: np.ndarray, timestep: int | float) -> np.ndarray:
        sigma = self.sigmas[self._index(timestep)]
        scaled: np.ndarray = sample / ((sigma**2 + 1) ** 0.5)
        return scaled

    def _pred_original(self, model_output: np.ndarray, sample: np.ndarray, sigma: np.floating[Any]) -> np.ndarray:
        if self.prediction_type == "epsilon":
            pred: np.ndarray = sample - sigma * model_output
        elif self.prediction_type == "v_prediction":
            pred = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))
        else:
            pred = model_output
        return pred


class EulerDiscreteScheduler(_Sigmas):
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 2), diffusers'
    `EulerDiscreteScheduler` without `s_churn` (SDXL ships it)."""

    unsupported: ClassVar[Mapping[str, object]] = {
        "interpolation_type": "linear",
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "timestep_type": "discrete",
    }

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        prediction_type: str = "epsilon",
        use_karras_sigmas: bool | None = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        final_sigmas_type: str = "zero",
    ) -> None:
        self._check("beta_schedule", beta_schedule, BETA_SCHEDULES)
        self._check("prediction_type", prediction_type, ("epsilon", "v_prediction", "sample", "original_sample"))
        self._check("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        self._check("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES)
        alphas_cumprod = _alphas_cumprod(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr
        )
        if rescale_betas_zero_snr:
            alphas_cumprod[-1] = 2.0**-24
        super().__init__(alphas_cumprod, timestep_spacing, prediction_type)
        self.num_train_timesteps = num_train_timesteps
        self.use_karras_sigmas = bool(use_karras_sigmas)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.steps_offset = steps_offset
        self.final_sigmas_type = final_sigmas_type

    def set_timesteps(self, num_inference_steps: int) -> None:
        timesteps = _spaced_timesteps(
            self.timestep_spacing, self.num_train_timesteps, num_inference_steps, self.steps_offset
        ).astype(np.float32)
        sigmas = np.interp(timesteps, np.arange(0, len(self.train_sigmas)), self.train_sigmas)
        if self.use_karras_sigmas:
            sigma_min = self.sigma_min if self.sigma_min is not None else sigmas[-1].item()
            sigma_max = self.sigma_max if self.sigma_max is not None else sigmas[0].item()
            sigmas = _karras_sigmas(sigma_min, sigma_max, num_inference_steps)
            timesteps = _sigma_to_t(sigmas, np.log(self.train_sigmas))
        last = self.train_sigmas[0] if self.final_sigmas_type == "sigma_min" else 0
        self._set_sigmas(timesteps, np.concatenate([sigmas, [last]]))

    def step(
        self,
        model_output: np.ndarray,
        timestep: int | float,
        sample: np.ndarray,
        *,
        noise: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        index = self._index(timestep)
        sample = sample.astype(np.float32, copy=False)
        sigma = self.sigmas[index]
        derivative = (sample - self._pred_original(model_output, sample, sigma)) / sigma
        prev_sample: np.ndarray = sample + derivative * (self.sigmas[index + 1] - sigma)
        self._step_index = index + 1
        return prev_sample.astype(model_output.dtype, copy=False)


class EulerAncestralDiscreteScheduler(_Sigmas):
    """Ancestral sampling with Euler steps: each step goes down to sigma_down, then adds fresh noise of
    sigma_up (diffusers' `EulerAncestralDiscreteScheduler`)."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        self._check("beta_schedule", beta_schedule, BETA_SCHEDULES)
        self._check("prediction_type", prediction_type, ("epsilon", "v_prediction"))
        self._check("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        alphas_cumprod = _alphas_cumprod(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr
        )
        if rescale_betas_zero_snr:
            alphas_cumprod[-1] = 2.0**-24
        super().__init__(alphas_cumprod, timestep_spacing, prediction_type)
        self.num_train_timesteps = num_train_timesteps
        self.steps_offset = steps_offset

    def set_timesteps(self, num_inference_steps: int) -> None:
        timesteps = _spaced_timesteps(
            self.timestep_spacing, self.num_train_timesteps, num_inference_steps, self.steps_offset
        ).astype(np.float32)
        sigmas = np.interp(timesteps, np.arange(0, len(self.train_sigmas)), self.train_sigmas)
        self._set_sigmas(timesteps, np.concatenate([sigmas, [0.0]]))

    def step(
        self,
        model_output: np.ndarray,
        timestep: int | float,
        sample: np.ndarray,
        *,
        noise: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        index = self._index(timestep)
        sigma, sigma_to = self.sigmas[index], self.sigmas[index + 1]
        sample = sample.astype(np.float32, copy=False)
        pred_original_sample = self._pred_original(model_output, sample, sigma)
        sigma_up = (sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        derivative = (sample - pred_original_sample) / sigma
        prev_sample: np.ndarray = sample + derivative * (sigma_down - sigma)
        prev_sample = prev_sample + self._noise(model_output.shape, noise, rng) * sigma_up
        self._step_index = index + 1
        return prev_sample.astype(model_output.dtype, copy=False)


class DDIMScheduler(Scheduler):
    """Denoising diffusion implicit models (https://huggingface.co/papers/2010.02502), diffusers'
    `DDIMScheduler`. `eta` (0: deterministic, 1: DDPM) is the pipeline's argument, not the config's: set
    the attribute."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        super().__init__()
        self._check("beta_schedule", beta_schedule, BETA_SCHEDULES)
        self._check("prediction_type", prediction_type, ("epsilon", "v_prediction", "sample"))
        self._check("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        self.alphas_cumprod = _alphas_cumprod(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr
        )
        self.final_alpha_cumprod = np.float32(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.num_train_timesteps = num_train_timesteps
        self.clip_sample, self.clip_sample_range = clip_sample, clip_sample_range
        self.thresholding = thresholding
        self.dynamic_thresholding_ratio, self.sample_max_value = dynamic_thresholding_ratio, sample_max_value
        self.steps_offset = steps_offset
        self.prediction_type = prediction_type
        self.timestep_spacing = timestep_spacing
        self.eta = 0.0

    def set_timesteps(self, num_inference_steps: int) -> None:
        if num_inference_steps > self.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps {num_inference_steps} is more than the {self.num_train_timesteps} training steps"
            )
        self.num_inference_steps = num_inference_steps
        spaced = _spaced_timesteps(
            self.timestep_spacing, self.num_train_timesteps, num_inference_steps, self.steps_offset
        )
        self.timesteps = spaced.round().astype(np.int64)

    def step(
        self,
        model_output: np.ndarray,
        timestep: int | float,
        sample: np.ndarray,
        *,
        noise: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        t = int(timestep)
        prev_t = t - self.num_train_timesteps // self.num_inference_steps
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        beta_prod_t = 1 - alpha_prod_t
        if self.prediction_type == "epsilon":
            pred_original_sample = (sample - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5
            pred_epsilon = model_output
        elif self.prediction_type == "sample":
            pred_original_sample = model_output
            pred_epsilon = (sample - alpha_prod_t**0.5 * pred_original_sample) / beta_prod_t**0.5
        else:
            pred_original_sample = (alpha_prod_t**0.5) * sample - (beta_prod_t**0.5) * model_output
            pred_epsilon = (alpha_prod_t**0.5) * model_output + (beta_prod_t**0.5) * sample
        if self.thresholding:
            pred_original_sample = _threshold(
                pred_original_sample, self.dynamic_thresholding_ratio, self.sample_max_value
            )
        elif self.clip_sample:
            pred_original_sample = np.clip(pred_original_sample, -self.clip_sample_range, self.clip_sample_range)
        variance = ((1 - alpha_prod_t_prev) / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
        std_dev_t = self.eta * variance**0.5
        pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** 0.5 * pred_epsilon
        prev_sample: np.ndarray = alpha_prod_t_prev**0.5 * pred_original_sample + pred_sample_direction
        if self.eta > 0:
            prev_sample = prev_sample + std_dev_t * self._noise(model_output.shape, noise, rng)
        return prev_sample


class PNDMScheduler(Scheduler):
    """Pseudo numerical methods (https://huggingface.co/papers/2202.09778), diffusers' `PNDMScheduler`:
    linear multistep (PLMS) steps, after Runge-Kutta warm-up steps unless `skip_prk_steps` (SD 1.x ships
    it skipped). The Runge-Kutta warm-up needs at least 4 inference steps."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        skip_prk_steps: bool = False,
        set_alpha_to_one: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
    ) -> None:
        super().__init__()
        self._check("beta_schedule", beta_schedule, BETA_SCHEDULES)
        self._check("prediction_type", prediction_type, ("epsilon", "v_prediction"))
        self._check("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        self.alphas_cumprod = _alphas_cumprod(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, False
        )
        self.final_alpha_cumprod = np.float32(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.num_train_timesteps = num_train_timesteps
        self.skip_prk_steps = skip_prk_steps
        self.prediction_type = prediction_type
        self.timestep_spacing = timestep_spacing
        self.steps_offset = steps_offset
        self.prk_timesteps: np.ndarray = np.empty(0, dtype=np.int64)
        self.ets: list[np.ndarray] = []
        self.counter = 0
        self.cur_model_output: np.ndarray | float = 0.0
        self.cur_sample: np.ndarray | None = None

    def set_timesteps(self, num_inference_steps: int) -> None:
        if not self.skip_prk_steps and num_inference_steps < 4:
            raise ValueError(f"PNDM's Runge-Kutta steps need at least 4 inference steps, not {num_inference_steps}")
        self.num_inference_steps = num_inference_steps
        spaced = _spaced_timesteps(
            self.timestep_spacing, self.num_train_timesteps, num_inference_steps, self.steps_offset
        )
        ascending = spaced.round().astype(np.int64)[::-1]
        if self.skip_prk_steps:
            self.prk_timesteps = np.empty(0, dtype=np.int64)
            plms = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1]
        else:
            half_step = self.num_train_timesteps // num_inference_steps // 2
            prk = ascending[-4:].repeat(2) + np.tile(np.array([0, half_step]), 4)
            self.prk_timesteps = prk[:-1].repeat(2)[1:-1][::-1].copy()
            plms = ascending[:-3][::-1]
        self.timesteps = np.concatenate([self.prk_timesteps, plms]).astype(np.int64)
        self.ets = []
        self.counter = 0
        self.cur_model_output = 0.0
        self.cur_sample = None

    def step(
        self,
        model_output: np.ndarray,
        timestep: int | float,
        sample: np.ndarray,
        *,
        noise: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        if self.counter < len(self.prk_timesteps) and not self.skip_prk_steps:
            return self._step_prk(model_output, int(timestep), sample)
        return self._step_plms(model_output, int(timestep), sample)

    def _step_prk(self, model_output: np.ndarray, timestep: int, sample: np.ndarray) -> np.ndarray:
        assert self.num_inference_steps is not None
        diff_to_prev = 0 if self.counter % 2 else self.num_train_timesteps // self.num_inference_steps // 2
        prev_timestep = timestep - diff_to_prev
        timestep = int(self.prk_timesteps[self.counter // 4 * 4])
        phase = self.counter % 4
        if phase == 0:
            self.cur_model_output = self.cur_model_output + 1 / 6 * model_output
            self.ets.append(model_output)
            self.cur_sample = sample
        elif phase in (1, 2):
            self.cur_model_output = self.cur_model_output + 1 / 3 * model_output
        else:
            model_output = self.cur_model_output + 1 / 6 * model_output
            self.cur_model_output = 0.0
        cur_sample = self.cur_sample if self.cur_sample is not None else sample
        self.counter += 1
        return self._prev_sample(cur_sample, timestep, prev_timestep, model_output)

    def _step_plms(self, model_output: np.ndarray, timestep: int, sample: np.ndarray) -> np.ndarray:
        assert self.num_inference_steps is not None
        if not self.skip_prk_steps and len(self.ets) < 3:
            raise ValueError("PNDM's linear multistep steps need the Runge-Kutta steps first")
        prev_timestep = timestep - self.num_train_timesteps // self.num_inference_steps
        if self.counter != 1:
            self.ets = [*self.ets[-3:], model_output]
        else:
            prev_timestep = timestep
            timestep = timestep + self.num_train_timesteps // self.num_inference_steps
        ets = self.ets
        if len(ets) == 1 and self.counter == 0:
            self.cur_sample = sample
        elif len(ets) == 1 and self.counter == 1:
            assert self.cur_sample is not None
            model_output = (model_output + ets[-1]) / 2
            sample, self.cur_sample = self.cur_sample, None
        elif len(ets) == 2:
            model_output = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            model_output = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            model_output = (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
        self.counter += 1
        return self._prev_sample(sample, timestep, prev_timestep, model_output)

    def _prev_sample(
        self, sample: np.ndarray, timestep: int, prev_timestep: int, model_output: np.ndarray
    ) -> np.ndarray:
        """x_(t-δ) from x_t, formula (9) of the PNDM paper."""
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        if self.prediction_type == "v_prediction":
            model_output = (alpha_prod_t**0.5) * model_output + (beta_prod_t**0.5) * sample
        sample_coeff = (alpha_prod_t_prev / alpha_prod_t) ** 0.5
        denom = alpha_prod_t * beta_prod_t_prev**0.5 + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev) ** 0.5
        prev_sample: np.ndarray = sample_coeff * sample - (alpha_prod_t_prev - alpha_prod_t) * model_output / denom
        return prev_sample


class DPMSolverMultistepScheduler(Scheduler):
    """DPM-Solver++ (https://huggingface.co/papers/2211.01095), multistep, of order 1 to 3: diffusers'
    `DPMSolverMultistepScheduler` with `algorithm_type="dpmsolver++"`, or `"deis"`, which diffusers maps to
    it (and accepts only with `final_sigmas_type="sigma_min"`). UniPC's solver types `logrho`, `bh1` and
    `bh2`, in configs converted from UniPC, map to `midpoint` as in diffusers."""

    unsupported: ClassVar[Mapping[str, object]] = {
        "variance_type": None,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_lu_lambdas": False,
        "use_flow_sigmas": False,
        "flow_shift": 1.0,
        "use_dynamic_shifting": False,
        "time_shift_type": "exponential",
    }

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool | None = False,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        super().__init__()
        self._check("beta_schedule", beta_schedule, BETA_SCHEDULES)
        self._check("solver_order", solver_order, (1, 2, 3))
        self._check("prediction_type", prediction_type, ("epsilon", "v_prediction", "sample"))
        self._check("algorithm_type", algorithm_type, ("dpmsolver++", "deis"))
        self._check("solver_type", solver_type, ("midpoint", "heun", "logrho", "bh1", "bh2"))
        self._check("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        self._check("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES)
        if algorithm_type == "deis" and final_sigmas_type == "zero":
            raise ValueError(
                "DPMSolverMultistepScheduler: final_sigmas_type='zero' is not supported with algorithm_type='deis'"
            )
        self.alphas_cumprod = _alphas_cumprod(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr
        )
        if rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2.0**-24
        self.lambda_t = np.log(np.sqrt(self.alphas_cumprod)) - np.log(np.sqrt(1 - self.alphas_cumprod))
        self.train_sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.sigmas = np.empty(0, dtype=np.float32)
        self.num_train_timesteps = num_train_timesteps
        self.beta_schedule = beta_schedule
        self.solver_order = solver_order
        self.prediction_type = prediction_type
        self.thresholding = thresholding
        self.dynamic_thresholding_ratio, self.sample_max_value = dynamic_thresholding_ratio, sample_max_value
        self.solver_type = "heun" if solver_type == "heun" else "midpoint"
        self.lower_order_final, self.euler_at_final = lower_order_final, euler_at_final
        self.use_karras_sigmas = bool(use_karras_sigmas)
        self.final_sigmas_type = final_sigmas_type
        self.lambda_min_clipped = lambda_min_clipped
        self.timestep_spacing = timestep_spacing
        self.steps_offset = steps_offset
        self.model_outputs: list[np.ndarray | None] = [None] * solver_order
        self.lower_order_nums = 0

    def set_timesteps(self, num_inference_steps: int) -> None:
        clipped_idx = int(np.searchsorted(self.lambda_t[::-1], self.lambda_min_clipped))
        last_timestep = self.num_train_timesteps - clipped_idx
        n = num_inference_steps
        if self.timestep_spacing == "linspace":
            spaced: np.ndarray = np.linspace(0, last_timestep - 1, n + 1).round()[::-1][:-1]
        elif self.timestep_spacing == "leading":
            spaced = (np.arange(0, n + 1) * (last_timestep // (n + 1)))[::-1][:-1] + self.steps_offset
        else:
            spaced = np.arange(last_timestep, 0, -self.num_train_timesteps / n).round() - 1
        timesteps = spaced.astype(np.int64)
        if self.use_karras_sigmas:
            descending = self.train_sigmas[::-1]
            sigmas = _karras_sigmas(descending[-1].item(), descending[0].item(), n)
            fractional = _sigma_to_t(sigmas, np.log(self.train_sigmas))
            timesteps = (fractional if self.beta_schedule == "squaredcos_cap_v2" else fractional.round()).astype(
                np.int64
            )
        else:
            sigmas = np.interp(timesteps, np.arange(0, len(self.train_sigmas)), self.train_sigmas)
        last = self.train_sigmas[0] if self.final_sigmas_type == "sigma_min" else 0
        self.sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
        self.timesteps = timesteps
        self.num_inference_steps = len(timesteps)
        self.model_outputs = [None] * self.solver_order
        self.lower_order_nums = 0
        self._step_index = None

    def _alpha_sigma_lambda(self, index: int) -> tuple[np.floating[Any], np.floating[Any], np.floating[Any]]:
        """alpha_t, sigma_t and lambda_t = log(alpha_t / sigma_t) at `sigmas[index]`; lambda is +inf at sigma 0."""
        sigma = self.sigmas[index]
        alpha_t = 1 / ((sigma**2 + 1) ** 0.5)
        sigma_t = sigma * alpha_t
        with np.errstate(divide="ignore"):
            return alpha_t, sigma_t, np.log(alpha_t) - np.log(sigma_t)

    def _convert_model_output(self, model_output: np.ndarray, sample: np.ndarray, index: int) -> np.ndarray:
        """The model's prediction of x0, which DPM-Solver++ integrates."""
        if self.prediction_type == "sample":
            x0_pred = model_output
        else:
            alpha_t, sigma_t, _ = self._alpha_sigma_lambda(index)
            if self.prediction_type == "epsilon":
                x0_pred = (sample - sigma_t * model_output) / alpha_t
            else:
                x0_pred = alpha_t * sample - sigma_t * model_output
        if self.thresholding:
            x0_pred = _threshold(x0_pred, self.dynamic_thresholding_ratio, self.sample_max_value)
        return x0_pred

    def step(
        self,
        model_output: np.ndarray,
        timestep: int | float,
        sample: np.ndarray,
        *,
        noise: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        index = self._index(timestep)
        count = len(self.timesteps)
        lower_order_final = index == count - 1 and (
            self.euler_at_final or (self.lower_order_final and count < 15) or self.final_sigmas_type == "zero"
        )
        lower_order_second = index == count - 2 and self.lower_order_final and count < 15
        x0_pred = self._convert_model_output(model_output, sample, index)
        self.model_outputs = [*self.model_outputs[1:], x0_pred]
        sample = sample.astype(np.float32, copy=False)
        if self.solver_order == 1 or self.lower_order_nums < 1 or lower_order_final:
            prev_sample = self._first_order(x0_pred, sample, index)
        elif self.solver_order == 2 or self.lower_order_nums < 2 or lower_order_second:
            prev_sample = self._second_order(sample, index)
        else:
            prev_sample = self._third_order(sample, index)
        self.lower_order_nums = min(self.lower_order_nums + 1, self.solver_order)
        self._step_index = index + 1
        return prev_sample.astype(x0_pred.dtype, copy=False)

    def _first_order(self, x0_pred: np.ndarray, sample: np.ndarray, index: int) -> np.ndarray:
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(index + 1)
        _, sigma_s, lambda_s = self._alpha_sigma_lambda(index)
        h = lambda_t - lambda_s
        x_t: np.ndarray = (sigma_t / sigma_s) * sample - (alpha_t * (np.exp(-h) - 1.0)) * x0_pred
        return x_t

    def _second_order(self, sample: np.ndarray, index: int) -> np.ndarray:
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(index + 1)
        _, sigma_s0, lambda_s0 = self._alpha_sigma_lambda(index)
        _, _, lambda_s1 = self._alpha_sigma_lambda(index - 1)
        m0, m1 = self.model_outputs[-1], self.model_outputs[-2]
        assert m0 is not None and m1 is not None
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r0 = h_0 / h
        d0, d1 = m0, (1.0 / r0) * (m0 - m1)
        if self.solver_type == "midpoint":
            x_t: np.ndarray = (
                (sigma_t / sigma_s0) * sample
                - (alpha_t * (np.exp(-h) - 1.0)) * d0
                - 0.5 * (alpha_t * (np.exp(-h) - 1.0)) * d1
            )
        else:
            x_t = (
                (sigma_t / sigma_s0) * sample
                - (alpha_t * (np.exp(-h) - 1.0)) * d0
                + (alpha_t * ((np.exp(-h) - 1.0) / h + 1.0)) * d1
            )
        return x_t

    def _third_order(self, sample: np.ndarray, index: int) -> np.ndarray:
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(index + 1)
        _, sigma_s0, lambda_s0 = self._alpha_sigma_lambda(index)
        _, _, lambda_s1 = self._alpha_sigma_lambda(index - 1)
        _, _, lambda_s2 = self._alpha_sigma_lambda(index - 2)
        m0, m1, m2 = self.model_outputs[-1], self.model_outputs[-2], self.model_outputs[-3]
        assert m0 is not None and m1 is not None and m2 is not None
        h, h_0, h_1 = lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2
        r0, r1 = h_0 / h, h_1 / h
        d1_0, d1_1 = (1.0 / r0) * (m0 - m1), (1.0 / r1) * (m1 - m2)
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = (1.0 / (r0 + r1)) * (d1_0 - d1_1)
        x_t: np.ndarray = (
            (sigma_t / sigma_s0) * sample
            - (alpha_t * (np.exp(-h) - 1.0)) * m0
            + (alpha_t * ((np.exp(-h) - 1.0) / h + 1.0)) * d1
            - (alpha_t * ((np.exp(-h) - 1.0 + h) / h**2 - 0.5)) * d2
        )
        return x_t


class LCMScheduler(Scheduler):
    """Latent consistency models (https://huggingface.co/papers/2310.04378), diffusers' `LCMScheduler`:
    timesteps picked from the `original_inference_steps` of the distillation, each step a consistency
    function's x0, re-noised to the next timestep except at the last. diffusers' LCM reads neither
    `timestep_spacing` nor `steps_offset`."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        trained_betas: Sequence[float] | None = None,
        original_inference_steps: int = 50,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        set_alpha_to_one: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        timestep_scaling: float = 10.0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        super().__init__()
        self._check("beta_schedule", beta_schedule, BETA_SCHEDULES)
        self._check("prediction_type", prediction_type, ("epsilon", "v_prediction", "sample"))
        if original_inference_steps > num_train_timesteps:
            raise ValueError(
                f"LCMScheduler: original_inference_steps={original_inference_steps} is more than the "
                f"{num_train_timesteps} training steps"
            )
        self.alphas_cumprod = _alphas_cumprod(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr
        )
        self.final_alpha_cumprod = np.float32(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.num_train_timesteps = num_train_timesteps
        self.original_inference_steps = original_inference_steps
        self.clip_sample, self.clip_sample_range = clip_sample, clip_sample_range
        self.prediction_type = prediction_type
        self.thresholding = thresholding
        self.dynamic_thresholding_ratio, self.sample_max_value = dynamic_thresholding_ratio, sample_max_value
        self.timestep_scaling = timestep_scaling

    def set_timesteps(self, num_inference_steps: int) -> None:
        original_steps = self.original_inference_steps
        if num_inference_steps > original_steps:
            raise ValueError(
                f"num_inference_steps {num_inference_steps} is more than the original_inference_steps {original_steps}"
            )
        k = self.num_train_timesteps // original_steps
        origin = (np.arange(1, original_steps + 1) * k - 1)[::-1]
        indices = np.floor(np.linspace(0, len(origin), num=num_inference_steps, endpoint=False)).astype(np.int64)
        self.timesteps = origin[indices].astype(np.int64)
        self.num_inference_steps = num_inference_steps
        self._step_index = None

    def step(
        self,
        model_output: np.ndarray,
        timestep: int | float,
        sample: np.ndarray,
        *,
        noise: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        index = self._index(timestep)
        t = int(timestep)
        prev_t = int(self.timesteps[index + 1]) if index + 1 < len(self.timesteps) else t
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        scaled = np.float32(t) * np.float32(self.timestep_scaling)
        c_skip = np.float32(0.25) / (scaled**2 + np.float32(0.25))
        c_out = scaled / (scaled**2 + np.float32(0.25)) ** 0.5
        if self.prediction_type == "epsilon":
            predicted = (sample - np.sqrt(beta_prod_t) * model_output) / np.sqrt(alpha_prod_t)
        elif self.prediction_type == "sample":
            predicted = model_output
        else:
            predicted = np.sqrt(alpha_prod_t) * sample - np.sqrt(beta_prod_t) * model_output
        if self.thresholding:
            predicted = _threshold(predicted, self.dynamic_thresholding_ratio, self.sample_max_value)
        elif self.clip_sample:
            predicted = np.clip(predicted, -self.clip_sample_range, self.clip_sample_range)
        denoised: np.ndarray = c_out * predicted + c_skip * sample
        self._step_index = index + 1
        if index == len(self.timesteps) - 1:
            return denoised
        drawn = self._noise(model_output.shape, noise, rng)
        prev_sample: np.ndarray = np.sqrt(alpha_prod_t_prev) * denoised + np.sqrt(beta_prod_t_prev) * drawn
        return prev_sample


SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.__name__: cls
    for cls in (
        EulerDiscreteScheduler,
        EulerAncestralDiscreteScheduler,
        DDIMScheduler,
        PNDMScheduler,
        DPMSolverMultistepScheduler,
        LCMScheduler,
    )
}
"""The ported schedulers, by diffusers class name (a `scheduler_config.json`'s `_class_name`)."""


def _is_default(value: object, default: object) -> bool:
    """Whether a config value asks for what the port assumes; diffusers treats a null flag as false."""
    return value == default or (default is False and value is None)


def scheduler_from_config(config: Mapping[str, Any]) -> Scheduler:
    """The scheduler of a `scheduler_config.json`'s content, `_class_name` choosing the class.

    Raises ValueError for a class that is not ported (naming those that are), for a key the port does
    not implement set to anything but diffusers' default, and for a value the port does not support
    (naming the key). Keys the diffusers class does not read are ignored, as diffusers ignores them.
    """
    name = config.get("_class_name")
    cls = SCHEDULERS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"scheduler {name!r} is not supported; supported: {', '.join(sorted(SCHEDULERS))}")
    for key, default in cls.unsupported.items():
        if key in config and not _is_default(config[key], default):
            raise ValueError(f"{name}: {key}={config[key]!r} is not supported; only {default!r} is")
    parameters = inspect.signature(cls).parameters
    return cls(**{key: value for key, value in config.items() if key in parameters})
