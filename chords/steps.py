"""Step functions that jump between any two grid indices ``i < j``.

They take the grid as data (arrays read once from a scheduler), never a scheduler object, and
come in two arithmetics, chosen by ``precision`` (the model config's ``step_precision``):

* ``"model"`` (the default): the scheduler's own arithmetic, operation for operation, so a
  sequential run through an adapter equals the diffusers pipeline bit for bit in bf16 too.
  :class:`EulerStep` does what ``FlowMatchEulerDiscreteScheduler.step`` does: the state is
  upcast to float32, ``dt = sigmas[j] - sigmas[i]`` is a 0-d float32 tensor on the state's
  device (the scheduler keeps its sigmas on the pipeline's device), ``prev = x + dt * v``, and
  the result is cast to the *velocity's* dtype. PyTorch's promotion makes ``dt * v`` a bf16
  product when ``v`` is bf16 (on CPU ``dt`` itself is rounded to bf16 first), and a float32
  state becomes bf16 after its first step, as the HunyuanVideo and Wan pipelines' latents do.
  :class:`DDIMStep` does what ``CogVideoXDDIMScheduler.step`` does: the alphas are 0-d CPU
  tensors in the scheduler's own dtype (float64 after its zero-terminal-SNR rescale);
  ``x0 = sqrt(a_i) x - sqrt(1 - a_i) v`` (v-prediction), ``a_t = sqrt((1 - a_j) / (1 - a_i))``,
  ``b_t = sqrt(a_j) - sqrt(a_i) a_t``, ``prev = a_t x + b_t x0``, each operation in the dtype
  PyTorch's promotion gives; the result is cast back to the state's dtype, as
  ``CogVideoXPipeline`` casts its latents to the prompt embeddings' dtype. A jump ``i -> j``
  uses grid entry ``j`` where a single step uses ``i + 1``, as the official release's
  ``custom_step_Euler`` / ``custom_step_DDIM`` do. Float64 states (the analytic test models)
  are computed in float64.
* ``"float32"``: the state and the velocity are upcast to float32 (float64 stays float64), the
  whole step is computed there, and the result is cast back to the *state's* dtype: one
  rounding per step instead of one per operation, and states keep the dtype of the initial
  noise (float32 for HunyuanVideo and Wan). This was the harness's arithmetic before
  ``"model"`` became the default; it is closer to the exact ODE step in bf16, but it is not
  what the pipelines (or the official release) compute.

For float32 (or float64) states and velocities the two Euler arithmetics agree exactly; the two
DDIM forms differ by float rounding. Each step also exposes ``noise_variance`` (one value per
grid index ``0..num_steps``), which ParaDIGMS uses to scale its error.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from chords.positions import at_positions, is_fractional, scalar_at

Tensor = torch.Tensor

#: accepted values of ``precision`` / the model config key ``step_precision``; the first is the default
STEP_PRECISIONS: tuple[str, ...] = ("model", "float32")


def step_precision_problem(value: object) -> str | None:
    """A one-line message when ``value`` is not an accepted ``model.step_precision``, else None."""
    if value in STEP_PRECISIONS:
        return None
    return f"model.step_precision {value!r} is invalid: use one of {', '.join(STEP_PRECISIONS)}"


def _compute_dtype(*ts: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def _same_bits_in_place(x: Tensor, v: Tensor, cd: torch.dtype) -> bool:
    """Whether ``(x.to(cd) + dt * v).to(v.dtype)`` may be computed as ``(dt * v).add_(x)``.

    Always for ``x`` and ``v`` of the compute dtype (the same addition, operands swapped). For
    bf16 / float16 ``x`` and ``v`` on the CPU too: ATen adds two reduced-precision tensors in
    float32 and rounds the float32 sum to the dtype once, which is what the upcast sum followed by
    ``.to(v.dtype)`` does (checked bit for bit over every bf16 value, tests/test_step_parity.py);
    it saves two full-size float32 temporaries per step (autograd is fine: ``dt * v`` does not
    keep its output for the backward pass).
    """
    if x.dtype != v.dtype:
        return False
    return x.dtype == cd or (x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16))


def _check_indices(i: int | float, j: int | float, num_steps: int) -> None:
    if not 0 <= i < j <= num_steps:
        raise ValueError(f"step from grid index {i} to {j} is invalid: need 0 <= i < j <= {num_steps}")


def _check_precision(precision: str) -> None:
    problem = step_precision_problem(precision)
    if problem:
        raise ValueError(problem.removeprefix("model.step_"))


@dataclass(frozen=True)
class EulerStep:
    """Euler on a flow-matching sigma grid: ``x + (sigma_j - sigma_i) * v``.

    ``sigmas`` has ``num_steps + 1`` entries, from ``sigmas[0]`` (noise, usually 1) to
    ``sigmas[num_steps]`` (data, usually 0), as ``FlowMatchEulerDiscreteScheduler.sigmas``
    (float32; a float64 grid stays float64). ``precision``: ``"model"`` computes as the
    scheduler's ``step`` and returns the velocity's dtype; ``"float32"`` computes in float32 and
    returns the state's dtype (module docstring).
    """

    sigmas: Tensor
    noise_floor: float = 0.0
    precision: str = "model"
    _by_dtype: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        _check_precision(self.precision)
        s = torch.as_tensor(self.sigmas).detach().cpu()
        object.__setattr__(self, "sigmas", s.to(torch.float64) if s.dtype == torch.float64 else s.to(torch.float32))
        if s.ndim != 1 or len(s) < 2:
            raise ValueError(f"sigmas must be a 1-D grid of num_steps + 1 >= 2 values, got shape {tuple(s.shape)}")

    @property
    def num_steps(self) -> int:
        return len(self.sigmas) - 1

    def _grid(self, dtype: torch.dtype, device: torch.device = torch.device("cpu")) -> Tensor:
        key = (dtype, device)
        g = self._by_dtype.get(key)
        if g is None:
            g = self._by_dtype[key] = self.sigmas.to(device=device, dtype=dtype)
        return g

    def sigma(self, position: int | float, dtype: torch.dtype, device: torch.device = torch.device("cpu")) -> Tensor:
        """sigma at a grid position as a 0-d tensor of ``dtype``: the grid's entry for an integer,
        linear interpolation in the grid index (:mod:`chords.positions`) of the stored grid for a
        float, rounded to ``dtype`` once (a float equal to an integer gives that entry exactly)."""
        if not is_fractional(position):
            return self._grid(dtype, device)[position]
        return scalar_at(self.sigmas, position).to(device=device, dtype=dtype)

    def delta(self, i: int | float, j: int | float, dtype: torch.dtype = torch.float32) -> float:
        return (self.sigma(j, dtype) - self.sigma(i, dtype)).item()

    def __call__(self, x: Tensor, v: Tensor, i: int | float, j: int | float) -> Tensor:
        _check_indices(i, j, self.num_steps)
        cd = _compute_dtype(x, v)
        if self.precision == "model":
            dt = self.sigma(j, cd, x.device) - self.sigma(i, cd, x.device)  # 0-d: the scheduler's sigma_next - sigma
            if _same_bits_in_place(x, v, cd):
                # the same operations without a float32 copy of x: p = dt * v, then p + x in place
                out = dt * v
                return out.add_(x)
            return (x.to(cd) + dt * v).to(v.dtype)
        dt = self.delta(i, j, cd)
        if x.dtype == cd and v.dtype == cd:
            out = dt * v
            return out.add_(x)
        return (x.to(cd) + dt * v.to(cd)).to(x.dtype)

    @property
    def noise_variance(self) -> Tensor:
        """ParaDIGMS' scale at grid index ``j`` on a flow-matching grid (which has no posterior
        variance): ``sigma_j^2``, the noise variance of the state at ``j``, floored (default floor:
        the smallest non-zero sigma^2, so data at sigma = 0 is not judged on an infinite scale)."""
        var = self.sigmas.double() ** 2
        floor = self.noise_floor
        if not floor:
            positive = var[var > 0]
            floor = float(positive.min()) if len(positive) else 1.0
        return var.clamp_min(floor)


@dataclass(frozen=True)
class DDIMStep:
    """Deterministic DDIM (eta = 0) on an ``alphas_cumprod`` / ``timesteps`` grid.

    ``timesteps[i]`` is the training timestep at grid index ``i`` (``num_steps`` values, as the
    scheduler lists them, e.g. CogVideoX's trailing spacing); the state at grid index
    ``num_steps`` is data, with ``final_alpha_cumprod`` (1.0 when the scheduler sets alpha to
    one, else ``alphas_cumprod[0]``). ``prediction_type`` is ``"epsilon"`` or ``"v_prediction"``.
    ``precision``: ``"model"`` computes as ``CogVideoXDDIMScheduler.step`` (alphas as 0-d CPU
    tensors in ``alphas_cumprod``'s own dtype, PyTorch's promotion for each operation), ``"float32"`` upcasts
    everything to float32 first; both return the state's dtype (module docstring).

    ``variance_final_alpha_cumprod``: the alpha-bar that ParaDIGMS' error scale
    (:attr:`noise_variance`) takes past the last timestep; None = ``final_alpha_cumprod``.
    diffusers' ParaDIGMS pipeline differs from its own sequential step there: its
    ``batch_step_no_noise`` always steps onto alpha-bar 1, while ``_get_variance`` uses the
    scheduler's ``final_alpha_cumprod`` (``alphas_cumprod[0]`` with ``set_alpha_to_one=False``, SD
    1.x's setting). :meth:`for_paradigms_pipeline` builds that pair from a scheduler.
    """

    alphas_cumprod: Tensor
    timesteps: Tensor
    prediction_type: str = "epsilon"
    final_alpha_cumprod: float = 1.0
    precision: str = "model"
    variance_final_alpha_cumprod: float | None = None
    _by_dtype: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def for_paradigms_pipeline(cls, scheduler, **kwargs) -> "DDIMStep":
        """The grid of diffusers' ``StableDiffusionParadigmsPipeline`` with this
        ``DDIMParallelScheduler``: steps onto alpha-bar 1 after the last timestep
        (``batch_step_no_noise``), the error scale there from ``scheduler.final_alpha_cumprod``."""
        return cls(scheduler.alphas_cumprod, scheduler.timesteps, scheduler.config.prediction_type,
                   final_alpha_cumprod=1.0, variance_final_alpha_cumprod=float(scheduler.final_alpha_cumprod), **kwargs)

    def __post_init__(self):
        _check_precision(self.precision)
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(
                f"prediction_type {self.prediction_type!r} is not supported: use 'epsilon' or 'v_prediction'"
            )
        ac = torch.as_tensor(self.alphas_cumprod).detach().cpu()
        # "model" arithmetic uses the scheduler's own dtype (float64 for CogVideoX's zero-SNR rescale)
        object.__setattr__(self, "_model_dtype", torch.float64 if ac.dtype == torch.float64 else torch.float32)
        ac = ac.to(torch.float64)
        ts = torch.as_tensor(self.timesteps).detach().cpu().long()
        object.__setattr__(self, "alphas_cumprod", ac)
        object.__setattr__(self, "timesteps", ts)
        # alpha-bar at every grid index 0..num_steps
        final = torch.tensor([float(self.final_alpha_cumprod)], dtype=torch.float64)
        grid = torch.cat([ac[ts], final])
        object.__setattr__(self, "_alpha_grid", grid)
        # for fractional positions: the timestep at every grid index (data at timestep -1, where
        # DDIM's "previous timestep" of the last step lands), and alpha-bar at timesteps -1..T-1
        object.__setattr__(self, "_timestep_grid", torch.cat([ts.to(torch.float64), final.new_tensor([-1.0])]))
        object.__setattr__(self, "_alpha_by_timestep", torch.cat([final, ac]))

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def _grid(self, dtype: torch.dtype) -> Tensor:
        g = self._by_dtype.get(dtype)
        if g is None:
            g = self._by_dtype[dtype] = self._alpha_grid.to(dtype)
        return g

    def timestep(self, position: int | float) -> float:
        """The (continuous) training timestep at a grid position: ``timesteps[i]`` at an integer,
        -1 at ``num_steps`` (data), linear in the grid index in between (:mod:`chords.positions`)."""
        return float(scalar_at(self._timestep_grid, position))

    def alpha_bar(self, position: int | float, dtype: torch.dtype) -> Tensor:
        """alpha-bar at a grid position as a 0-d CPU tensor of ``dtype``.

        Integer positions: the scheduler's ``alphas_cumprod[timesteps[i]]`` (``final_alpha_cumprod``
        at ``num_steps``), as always. Fractional positions (a documented choice; no scheduler
        defines them): the continuous timestep ``t`` of :meth:`timestep`, then ``alphas_cumprod``
        read at ``t`` by linear interpolation between its integer timesteps, with
        ``final_alpha_cumprod`` standing at timestep -1. Interpolating in the timestep, not in the
        grid index, keeps the noise schedule's own shape between two widely spaced grid entries
        (CogVideoX's alpha-bar is far from linear over 20 timesteps near t = 999). A float equal to
        an integer position gives the integer result bit for bit."""
        if not is_fractional(position):
            return self._grid(dtype)[position]
        t = torch.tensor([self.timestep(position) + 1.0], dtype=torch.float64)
        return at_positions(self._alpha_by_timestep, t)[0].to(dtype)

    def __call__(self, x: Tensor, v: Tensor, i: int | float, j: int | float) -> Tensor:
        _check_indices(i, j, self.num_steps)
        cd = _compute_dtype(x, v)
        if self.precision == "model":
            gd = torch.float64 if cd == torch.float64 else self._model_dtype
            a_i, a_j = self.alpha_bar(i, gd), self.alpha_bar(j, gd)  # 0-d CPU tensors, as alphas_cumprod[t]
            # the scheduler's operations, in its order, on the tensors as they come
            beta_i = 1 - a_i
            if self.prediction_type == "epsilon":
                x0 = (x - beta_i ** 0.5 * v) / a_i ** 0.5
            else:
                x0 = (a_i ** 0.5) * x - (beta_i ** 0.5) * v
            coef_x = ((1 - a_j) / (1 - a_i)) ** 0.5
            coef_x0 = a_j ** 0.5 - a_i ** 0.5 * coef_x
            return (coef_x * x + coef_x0 * x0).to(x.dtype)
        a_i, a_j = self.alpha_bar(i, cd), self.alpha_bar(j, cd)
        xs, out = x.to(cd), v.to(cd)
        sa_i, sb_i = a_i.sqrt(), (1 - a_i).sqrt()
        if self.prediction_type == "epsilon":
            eps = out
            x0 = (xs - sb_i * eps) / sa_i
        else:  # v-prediction: v = sqrt(a) eps - sqrt(1-a) x0
            x0 = sa_i * xs - sb_i * out
            eps = sa_i * out + sb_i * xs
        return (a_j.sqrt() * x0 + (1 - a_j).sqrt() * eps).to(x.dtype)

    @property
    def noise_variance(self) -> Tensor:
        """ParaDIGMS' scale at grid index ``j``: the DDPM posterior variance of the step *out of*
        ``j`` (to ``j + 1``), as diffusers' ``DDIMParallelScheduler._get_variance(timesteps[j])``;
        0 at ``num_steps`` (data), and 0 at ``num_steps - 1`` when the final alpha-bar is 1 (the
        final alpha-bar here is ``variance_final_alpha_cumprod`` when it is set).
        ParaDIGMS reads 0 as an infinite scale (the position must not change)."""
        a = self._alpha_grid  # increases from noise (index 0) to data (index num_steps)
        if self.variance_final_alpha_cumprod is not None:
            a = a.clone()
            a[-1] = float(self.variance_final_alpha_cumprod)
        var = torch.zeros_like(a)
        # leaving index j for j + 1: (1 - a_{j+1}) / (1 - a_j) * (1 - a_j / a_{j+1})
        var[:-1] = (1 - a[1:]) / (1 - a[:-1]) * (1 - a[:-1] / a[1:])
        return var
