"""`runtime.diffusion.schedulers` against diffusers' schedulers, step for step.

Each case runs one whole denoising loop twice, diffusers' scheduler on torch tensors and the port on
numpy arrays, from SD 1.5's scheduler config (with variations), the same seeded initial latents and
a deterministic fake model (`0.1 * sample + sin(t / 100) + a fixed random tensor`, evaluated on each
side's own latents). Compared: the timesteps (same dtype, equal or within `TIMESTEP_ATOL`),
`init_noise_sigma`, and the initial latents, the model input after `scale_model_input` and the latents
after every step, each within `RTOL` of the loop's latent scale (`Comparison`). Stochastic steps get,
as `noise`, what diffusers drew: `torch.randn` from a generator seeded as diffusers' was, in the same
order. Measured on this machine: at most 7.1e-7 of the scale (2.5e-5 absolute at latents of about 35,
DDIM); float32 accumulation in `cumprod`, an error of about 1e-5, fails 10 of these loops.
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any

import diffusers
import numpy as np
import pytest
import torch

from runtime.diffusion.schedulers import SCHEDULERS, Scheduler, scheduler_from_config

RTOL = 2e-6
"""Latents of magnitude 50 (Euler's initial ones) differ in their last bits (ulp 3.8e-6), so the bound is
relative to the latents' scale; for latents of magnitude at most 1 it is absolute."""
TIMESTEP_ATOL = 1e-4
"""Integer timesteps are equal; the fractional ones of Euler's Karras sigmas may move by about 1e-5 (out of
999), because torch's float32 `sqrt` on CPU is not always correctly rounded (numpy's is): a training sigma
differs in its last bit."""
SHAPE = (1, 4, 8, 8)
STEPS = (1, 4, 10, 25)
SD15 = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "clip_sample": False,
    "skip_prk_steps": True,
    "trained_betas": None,
}
NOT_READ_BY_DIFFUSERS = {"LCMScheduler": {"timestep_spacing", "steps_offset"}}
"""Keys diffusers' class takes but never reads; the port ignores them too."""


@dataclass(frozen=True)
class Case:
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    eta: float = 0.0
    steps: tuple[int, ...] = STEPS

    @property
    def stochastic(self) -> bool:
        return self.name in ("EulerAncestralDiscreteScheduler", "LCMScheduler") or self.eta > 0

    def id(self) -> str:
        options = [f"{k}={v}" if not isinstance(v, list) else f"{k}=[{len(v)}]" for k, v in self.overrides.items()]
        options += [f"eta={self.eta}"] if self.eta else []
        return "-".join([self.name.removesuffix("Scheduler"), *options]) or self.name


SPACINGS = [{"timestep_spacing": s} for s in ("leading", "trailing", "linspace")]
CASES = [
    *(Case("EulerDiscreteScheduler", o) for o in [{}, *SPACINGS]),
    Case("EulerDiscreteScheduler", {"prediction_type": "v_prediction"}),
    Case("EulerDiscreteScheduler", {"prediction_type": "sample"}),
    Case("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    Case("EulerDiscreteScheduler", {"use_karras_sigmas": True, "timestep_spacing": "leading"}),
    Case("EulerDiscreteScheduler", {"use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0}),
    Case("EulerDiscreteScheduler", {"final_sigmas_type": "sigma_min", "timestep_spacing": "trailing"}),
    Case("EulerDiscreteScheduler", {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}),
    Case("EulerDiscreteScheduler", {"beta_schedule": "squaredcos_cap_v2"}),
    Case("EulerDiscreteScheduler", {"trained_betas": [0.0001 + 0.00002 * i for i in range(1000)]}),
    Case(
        "EulerDiscreteScheduler",
        {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
    ),
    *(Case("EulerAncestralDiscreteScheduler", o) for o in [{}, *SPACINGS]),
    Case("EulerAncestralDiscreteScheduler", {"prediction_type": "v_prediction"}),
    Case(
        "EulerAncestralDiscreteScheduler",
        {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
    ),
    *(Case("DDIMScheduler", o) for o in [{}, *SPACINGS]),
    Case("DDIMScheduler", {"prediction_type": "v_prediction"}),
    Case("DDIMScheduler", {"prediction_type": "sample", "timestep_spacing": "trailing"}),
    Case("DDIMScheduler", {"set_alpha_to_one": True}),
    Case("DDIMScheduler", {}, eta=0.5),
    Case("DDIMScheduler", {"timestep_spacing": "trailing"}, eta=1.0),
    Case("DDIMScheduler", {"clip_sample": True, "clip_sample_range": 1.5}),
    Case("DDIMScheduler", {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5}),
    Case(
        "DDIMScheduler",
        {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
    ),
    *(Case("PNDMScheduler", o) for o in [{}, *SPACINGS]),
    Case("PNDMScheduler", {"prediction_type": "v_prediction"}),
    Case("PNDMScheduler", {"set_alpha_to_one": True}),
    Case("PNDMScheduler", {"skip_prk_steps": False}, steps=(4, 10, 25)),
    Case("PNDMScheduler", {"skip_prk_steps": False, "timestep_spacing": "trailing"}, steps=(4, 10)),
    *(Case("DPMSolverMultistepScheduler", o) for o in [{}, *SPACINGS]),
    Case("DPMSolverMultistepScheduler", {"solver_type": "heun"}),
    Case("DPMSolverMultistepScheduler", {"solver_order": 1}),
    Case("DPMSolverMultistepScheduler", {"solver_order": 3}),
    Case("DPMSolverMultistepScheduler", {"solver_order": 3, "solver_type": "heun", "lower_order_final": False}),
    Case("DPMSolverMultistepScheduler", {"lower_order_final": False}),
    Case("DPMSolverMultistepScheduler", {"final_sigmas_type": "sigma_min"}),
    Case("DPMSolverMultistepScheduler", {"final_sigmas_type": "sigma_min", "euler_at_final": True}),
    Case("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    Case("DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "solver_type": "heun"}),
    Case("DPMSolverMultistepScheduler", {"prediction_type": "v_prediction"}),
    Case("DPMSolverMultistepScheduler", {"prediction_type": "sample", "thresholding": True}),
    Case("DPMSolverMultistepScheduler", {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1}),
    Case(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "deis", "solver_type": "bh2", "final_sigmas_type": "sigma_min"},
    ),
    Case(
        "DPMSolverMultistepScheduler",
        {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
    ),
    Case("LCMScheduler", {}),
    Case("LCMScheduler", {"set_alpha_to_one": False}),
    Case("LCMScheduler", {"prediction_type": "v_prediction"}),
    Case("LCMScheduler", {"original_inference_steps": 25, "timestep_scaling": 5.0}),
    Case("LCMScheduler", {"clip_sample": True}),
]


def config(case: Case) -> dict[str, Any]:
    return {"_class_name": case.name, **SD15, **case.overrides}


def latents() -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))


FIXED = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)) * 0.5


def fake_model(sample: torch.Tensor, t: float) -> torch.Tensor:
    return 0.1 * sample + math.sin(t / 100) + FIXED


def fake_model_np(sample: np.ndarray, t: float) -> np.ndarray:
    out: np.ndarray = 0.1 * sample + math.sin(t / 100) + FIXED.numpy()
    return out


def run_both(case: Case, steps: int) -> tuple[float, float]:
    """Runs the loop with diffusers and with the port and asserts that they agree; returns the largest
    absolute difference and the largest relative to the scale of the loop's latents."""
    theirs = getattr(diffusers, case.name).from_config(config(case))
    ours = scheduler_from_config(config(case))
    if case.name == "DDIMScheduler":
        ours.eta = case.eta  # type: ignore[attr-defined]
    theirs.set_timesteps(steps)
    ours.set_timesteps(steps)
    expected_timesteps = theirs.timesteps.numpy()
    assert ours.timesteps.dtype == expected_timesteps.dtype
    np.testing.assert_allclose(ours.timesteps, expected_timesteps, rtol=0, atol=TIMESTEP_ATOL)
    sigma = float(theirs.init_noise_sigma)
    assert abs(ours.init_noise_sigma - sigma) <= RTOL * max(1.0, sigma), f"init_noise_sigma {ours.init_noise_sigma}"

    kwargs: dict[str, Any] = {}
    if case.stochastic:
        kwargs["generator"] = torch.Generator().manual_seed(42)
    if case.eta:
        kwargs["eta"] = case.eta
    replay = torch.Generator().manual_seed(42)

    sample_t = latents() * theirs.init_noise_sigma
    sample_n = latents().numpy() * ours.init_noise_sigma
    comparison = Comparison()
    comparison(sample_n, sample_t, "initial latents")
    for i, (t_t, t_n) in enumerate(zip(theirs.timesteps, ours.timesteps, strict=True)):
        scaled_t = theirs.scale_model_input(sample_t, t_t)
        scaled_n = ours.scale_model_input(sample_n, t_n)
        comparison(scaled_n, scaled_t, f"model input at step {i}")
        noise = torch.randn(SHAPE, generator=replay).numpy() if case.stochastic else None
        sample_t = theirs.step(fake_model(scaled_t, float(t_t)), t_t, sample_t, **kwargs).prev_sample
        sample_n = ours.step(fake_model_np(scaled_n, float(t_n)), t_n, sample_n, noise=noise)
        comparison(sample_n, sample_t, f"latents after step {i}")
    return comparison.worst_abs, comparison.worst_rel


@dataclass
class Comparison:
    """Asserts |ours - theirs| <= RTOL * max(1, the largest latent of the loop so far): float32 rounding
    at the loop's largest values carries on into its later, smaller ones."""

    scale: float = 1.0
    worst_abs: float = 0.0
    worst_rel: float = 0.0

    def __call__(self, ours: np.ndarray, theirs: torch.Tensor, what: str) -> None:
        assert ours.dtype == np.float32, what
        reference = theirs.numpy()
        self.scale = max(self.scale, float(np.abs(reference).max()))
        difference = float(np.abs(ours - reference).max())
        self.worst_abs, self.worst_rel = max(self.worst_abs, difference), max(self.worst_rel, difference / self.scale)
        assert difference <= RTOL * self.scale, f"{what}: max abs difference {difference:.3g}, scale {self.scale:.3g}"


@pytest.mark.parametrize("case", CASES, ids=Case.id)
def test_matches_diffusers_step_for_step(case: Case) -> None:
    for steps in case.steps:
        run_both(case, steps)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
@pytest.mark.parametrize(
    "schedule",
    [
        {},
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"trained_betas": [0.0001 + 0.00002 * i for i in range(1000)]},
    ],
    ids=["scaled_linear", "linear", "squaredcos_cap_v2", "trained_betas"],
)
def test_training_schedule_is_bit_for_bit(name: str, schedule: dict[str, Any]) -> None:
    """The training schedule agrees to the bit: torch's `linspace` (fused multiply-add) and `cumprod`
    (float64 accumulation) reproduced."""
    case = Case(name, schedule)
    theirs = getattr(diffusers, name).from_config(config(case))
    ours = scheduler_from_config(config(case))
    np.testing.assert_array_equal(ours.alphas_cumprod, theirs.alphas_cumprod.numpy())  # type: ignore[attr-defined]


def test_every_diffusers_config_key_is_ported_or_refused() -> None:
    """A diffusers key that the port neither reads nor refuses would change results silently."""
    for name, cls in SCHEDULERS.items():
        theirs = set(inspect.signature(getattr(diffusers, name)).parameters)
        ours = set(inspect.signature(cls).parameters) | set(cls.unsupported)
        assert theirs - ours - NOT_READ_BY_DIFFUSERS.get(name, set()) == set(), name
        assert ours <= theirs, name


def test_unknown_class_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'KDPM2DiscreteScheduler' is not supported; supported: DDIMScheduler, "):
        scheduler_from_config({"_class_name": "KDPM2DiscreteScheduler"})
    with pytest.raises(ValueError, match="None is not supported"):
        scheduler_from_config(SD15)


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("EulerDiscreteScheduler", "use_exponential_sigmas", True),
        ("EulerDiscreteScheduler", "interpolation_type", "log_linear"),
        ("EulerDiscreteScheduler", "timestep_type", "continuous"),
        ("DPMSolverMultistepScheduler", "algorithm_type", "sde-dpmsolver++"),
        ("DPMSolverMultistepScheduler", "use_lu_lambdas", True),
        ("DPMSolverMultistepScheduler", "variance_type", "learned_range"),
        ("DPMSolverMultistepScheduler", "solver_order", 4),
        ("EulerAncestralDiscreteScheduler", "prediction_type", "sample"),
        ("DDIMScheduler", "beta_schedule", "sigmoid"),
        ("PNDMScheduler", "timestep_spacing", "uniform"),
    ],
)
def test_unsupported_setting_is_refused(name: str, key: str, value: object) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{name}: {key}={value!r} is not supported")):
        scheduler_from_config({"_class_name": name, **SD15, key: value})


def test_defaults_and_keys_diffusers_ignores_are_accepted() -> None:
    scheduler = scheduler_from_config(
        {
            "_class_name": "EulerDiscreteScheduler",
            "_diffusers_version": "0.39.0",
            **SD15,
            "use_exponential_sigmas": None,
            "use_beta_sigmas": False,
            "interpolation_type": "linear",
            "algorithm_type": "sde-dpmsolver++",
        }
    )
    assert isinstance(scheduler, SCHEDULERS["EulerDiscreteScheduler"])


def rng_loop(scheduler: Scheduler, seed: int) -> np.ndarray:
    scheduler.set_timesteps(4)
    sample = latents().numpy() * scheduler.init_noise_sigma
    rng = np.random.default_rng(seed)
    for t in scheduler.timesteps:
        scaled = scheduler.scale_model_input(sample, t)
        sample = scheduler.step(fake_model_np(scaled, float(t)), t, sample, rng=rng)
    return sample


@pytest.mark.parametrize(
    "case",
    [Case("EulerAncestralDiscreteScheduler"), Case("LCMScheduler"), Case("DDIMScheduler", eta=0.5)],
    ids=Case.id,
)
def test_rng_draws_are_reproducible(case: Case) -> None:
    def make() -> Scheduler:
        scheduler = scheduler_from_config(config(case))
        if case.eta:
            scheduler.eta = case.eta  # type: ignore[attr-defined]
        return scheduler

    first, again, other = rng_loop(make(), 7), rng_loop(make(), 7), rng_loop(make(), 8)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 0.01
    scheduler = make()
    scheduler.set_timesteps(4)
    t = scheduler.timesteps[0]
    with pytest.raises(ValueError, match="stochastic: pass `noise` or `rng`"):
        scheduler.step(fake_model_np(latents().numpy(), float(t)), t, latents().numpy())


def test_step_outside_the_schedule_is_refused() -> None:
    scheduler = scheduler_from_config(config(Case("EulerDiscreteScheduler")))
    scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match="timestep 500 is not in EulerDiscreteScheduler's schedule"):
        scheduler.step(latents().numpy(), 500, latents().numpy())
