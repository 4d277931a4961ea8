"""ParaDIGMS side by side with diffusers' own pipeline, on a tiny random Stable Diffusion.

Shared by ``tests/test_baselines.py`` and ``bench/bench_core.py``. The reference is diffusers'
``StableDiffusionParadigmsPipeline`` (``diffusers.pipelines.deprecated``) with
``DDIMParallelScheduler``; ours is :class:`baselines.ParaDIGMS` through :func:`chords.sample`
with a velocity that calls the same UNet with the same classifier-free guidance, and
:class:`chords.steps.DDIMStep` on the scheduler's grid. Nothing is downloaded: the UNet, VAE
and CLIP text encoder are random-initialised from tiny configs.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from baselines import ParaDIGMS
from chords.core import SampleResult, sample
from chords.models.diffusers_common import seeded, tiny_clip_text, tiny_clip_tokenizer
from chords.steps import DDIMStep

Tensor = torch.Tensor
PROMPTS = ("a cat", "a dog on the beach")  # two latents: every sample must be within tolerance
GUIDANCE = 3.0
SIZE = 8  # pixels; the one-block VAE keeps latents 8 x 8


@lru_cache(maxsize=1)
def tiny_modules():
    """(unet, vae, text_encoder, tokenizer), random-initialised once per process."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with seeded(0):
        unet = UNet2DConditionModel(
            sample_size=SIZE, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32, norm_num_groups=4, attention_head_dim=4,
        ).eval()
        vae = AutoencoderKL(
            block_out_channels=(4,), latent_channels=4, norm_num_groups=1, layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        ).eval()
    return unet, vae, tiny_clip_text(32), tiny_clip_tokenizer()


@dataclass
class SideBySide:
    ref_rounds: int  # diffusers' loop iterations (one UNet call each)
    ref_nfe: int  # window positions evaluated (UNet batch / (2 guidance halves x latents))
    ref: Tensor  # diffusers' output latents
    ours: SampleResult

    @property
    def max_diff(self) -> float:
        return (self.ours.output - self.ref).abs().max().item()


def side_by_side(num_steps: int, parallel: int, tolerance: float, prediction_type: str = "epsilon",
                 set_alpha_to_one: bool = True) -> SideBySide:
    """Run diffusers' ParaDIGMS pipeline and ours on the same latents, prompts and UNet."""
    from diffusers import DDIMParallelScheduler, StableDiffusionParadigmsPipeline

    unet, vae, text_encoder, tokenizer = tiny_modules()
    # clip_sample=False: DDIMStep does not clip x0 (this scheduler's default clips to [-1, 1]).
    # batch_step_no_noise always steps onto alpha-bar 1, while _get_variance uses
    # final_alpha_cumprod: with set_alpha_to_one=False (SD 1.x) the two differ (the step goes to 1,
    # the error scale to alphas_cumprod[0]); DDIMStep.for_paradigms_pipeline keeps both.
    scheduler = DDIMParallelScheduler(clip_sample=False, set_alpha_to_one=set_alpha_to_one,
                                      prediction_type=prediction_type)
    pipe = StableDiffusionParadigmsPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    latents = torch.randn((len(PROMPTS), 4, SIZE, SIZE), generator=torch.Generator().manual_seed(1))

    calls: list[int] = []
    hook = unet.register_forward_pre_hook(lambda module, args, kwargs: calls.append(args[0].shape[0]), with_kwargs=True)
    try:
        with torch.no_grad():
            cond, uncond = pipe.encode_prompt(list(PROMPTS), "cpu", 1, True)
            ref = pipe(
                prompt_embeds=cond, negative_prompt_embeds=uncond, height=SIZE, width=SIZE,
                num_inference_steps=num_steps, parallel=parallel, tolerance=tolerance, guidance_scale=GUIDANCE,
                eta=0.0, latents=latents, output_type="latent",
            ).images
    finally:
        hook.remove()
    per_state = 2 * len(PROMPTS)
    ref_rounds, ref_nfe = len(calls), sum(calls) // per_state

    timesteps = scheduler.timesteps.clone()
    embeds = torch.cat([uncond, cond])

    def velocity(xs: Tensor, steps: Tensor) -> Tensor:
        # xs: [window, latents, C, H, W]; the UNet batch is laid out as the pipeline does:
        # for each window position, the unconditional halves then the conditional ones
        w, b = xs.shape[:2]
        t = timesteps[steps][:, None].repeat(1, 2 * b).flatten()
        out = unet(torch.cat([xs, xs], dim=1).flatten(0, 1), t,
                   encoder_hidden_states=torch.stack([embeds] * w).flatten(0, 1), return_dict=False)[0]
        out = out.reshape(w, 2, b, *xs.shape[2:])
        return out[:, 0] + GUIDANCE * (out[:, 1] - out[:, 0])

    step = DDIMStep.for_paradigms_pipeline(scheduler)
    with torch.no_grad():
        ours = sample(ParaDIGMS(parallel, tolerance), velocity, latents, step, num_steps)
    return SideBySide(ref_rounds, ref_nfe, ref, ours)
