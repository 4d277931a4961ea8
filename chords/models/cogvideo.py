"""CogVideoX (1.5-5B, and 1.0 checkpoints) as a CHORDS adapter, on ``diffusers.CogVideoXPipeline``'s sub-steps.

* Scheduler: ``CogVideoXDDIMScheduler.from_config(checkpoint config, timestep_spacing="trailing")``,
  as the official release does. Step: deterministic DDIM (:class:`chords.steps.DDIMStep`) on
  the scheduler's ``alphas_cumprod`` and its actual trailing ``timesteps``; the state after the
  last step uses ``final_alpha_cumprod`` as the scheduler sets it; ``prediction_type`` from the
  scheduler config (v-prediction for CogVideoX1.5). With ``step_precision: model`` (the default)
  the step computes as ``CogVideoXDDIMScheduler.step`` does (its ``a_t`` / ``b_t`` form, its
  alphas in their own dtype, a float32 velocity on a bf16 state) and casts the result to the
  state's dtype as the pipeline casts its latents to the prompt embeddings' dtype: bit for bit
  the pipeline's.

  Difference from ``CogVideoXDDIMScheduler.step``: diffusers derives the previous timestep by
  subtraction, ``t - num_train_timesteps // N``. With trailing spacing the listed timesteps are
  ``round(1000 - k * 1000 / N) - 1``; the two coincide when ``N`` divides ``num_train_timesteps``
  (N = 50, the paper's setting, and N = 8, 10, 20, 25, ... for 1000 training steps), and then
  our sequential sampler equals the pipeline's ``__call__``. For other N (e.g. 7, 30, 60) the
  pipeline steps to a timestep that is not on its own grid (e.g. N = 7: 999 -> 857, while the
  next listed timestep is 856); we always step to the listed one (a consistent grid, which
  CHORDS' jumps need).
* State: latents ``[n, f, C, h, w]`` (frames before channels, as the pipeline) in the prompt
  embeddings' dtype; CogVideoX1.5 pads the latent frames to a multiple of ``patch_size_t`` and
  drops the padding before decoding, as the pipeline does.
* Velocity: cond/uncond batched as the pipeline (``[uncond x B, cond x B]``), output upcast to
  float32, then ``uncond + g * (cond - uncond)`` with ``g`` per sample: with
  ``use_dynamic_cfg`` the pipeline's schedule ``1 + g * (1 - cos(pi * ((N - t) / N) ** 5)) / 2``
  evaluated at each sample's own timestep ``t`` (precomputed per grid index in ``encode``).
  Fractional grid positions (EPD) are fed the continuous timestep of
  :meth:`chords.steps.DDIMStep.timestep` (linear in the grid index, -1 at data) and the
  guidance rule evaluated there.
  Rotary embeddings (CogVideoX1.5) are computed once by the pipeline and travel in ``cond``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import torch

from chords.models.base import Encoded
from chords.models.diffusers_common import (
    DiffusersAdapter,
    cfg_get,
    frames_problem,
    save_videos,
    seeded,
    tiny_t5_encoder,
    tiny_t5_tokenizer,
)
from chords.steps import DDIMStep

Tensor = torch.Tensor


def dynamic_guidance(g: float, timesteps: list[int], num_steps: int) -> list[float]:
    """CogVideoXPipeline's dynamic CFG scale at each timestep (the pipeline's formula, verbatim)."""
    return [1 + g * ((1 - math.cos(math.pi * ((num_steps - t) / num_steps) ** 5.0)) / 2) for t in timesteps]


class CogVideoXAdapter(DiffusersAdapter):
    media = "video"
    pipeline_class = "CogVideoXPipeline"
    transformer_class = "CogVideoXTransformer3DModel"
    #: DDIM's data end: the "previous timestep" of the last step, where final_alpha_cumprod stands
    timestep_at_data = -1.0
    required_keys = DiffusersAdapter.required_keys + ("num_frames", "fps")
    tiny_multiple = 16

    def build_tiny_transformer(self, cfg: Mapping[str, Any]):
        from diffusers import CogVideoXTransformer3DModel

        with seeded(self.tiny_seed(cfg)):  # CogVideoX1.5-like: temporal patches, rotary embeddings
            return CogVideoXTransformer3DModel(
                num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=2,
                text_embed_dim=32, num_layers=1, sample_width=4, sample_height=4, sample_frames=9, patch_size=2,
                patch_size_t=2, temporal_compression_ratio=4, max_text_seq_length=16,
                use_rotary_positional_embeddings=True, patch_bias=False,
            )

    def build_tiny_pipeline(self, cfg: Mapping[str, Any]):
        from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline

        seed = self.tiny_seed(cfg)
        with seeded(seed + 10):
            vae = AutoencoderKLCogVideoX(
                in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
                up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
                layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
            )
        tok = tiny_t5_tokenizer(model_max_length=226)
        sched = CogVideoXDDIMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
            prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
            snr_shift_scale=1.0, timestep_spacing="trailing",
        )
        return CogVideoXPipeline(
            tokenizer=tok, text_encoder=tiny_t5_encoder(len(tok), 32, seed=seed + 11), vae=vae.eval(),
            transformer=self.build_tiny_transformer(cfg), scheduler=sched,
        )

    def configure_pipeline(self, pipe) -> None:
        super().configure_pipeline(pipe)
        from diffusers import CogVideoXDDIMScheduler

        spacing = str(cfg_get(self.cfg, "timestep_spacing", "trailing"))
        pipe.scheduler = CogVideoXDDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing=spacing)

    @classmethod
    def validate_family(cls, cfg: Mapping[str, Any]) -> list[str]:
        problem = frames_problem(cfg, "CogVideoX", "81, 49")
        problems = [problem] if problem else []
        n = cfg_get(cfg, "num_videos_per_prompt", 1)
        if n != 1:
            problems.append(f"model.num_videos_per_prompt {n!r} is invalid: CogVideoXPipeline makes one video per prompt")
        spacing = cfg_get(cfg, "timestep_spacing", "trailing")
        if spacing not in ("trailing", "leading", "linspace"):
            problems.append(f"model.timestep_spacing {spacing!r} is invalid: use trailing, leading or linspace")
        return problems

    def _additional_frames(self, num_frames: int) -> tuple[int, int]:
        """(num_frames padded as the pipeline pads them, number of padding latent frames)."""
        latent_frames = (num_frames - 1) // self.pipe.vae_scale_factor_temporal + 1
        p_t = self.transformer.config.patch_size_t
        extra = 0
        if p_t is not None and latent_frames % p_t != 0:
            extra = p_t - latent_frames % p_t
            num_frames += extra * self.pipe.vae_scale_factor_temporal
        return num_frames, extra

    @torch.no_grad()
    def encode(self, prompt: str, seed: int) -> Encoded:
        self.ensure_full("encode")
        pipe, cfg, device = self.pipe, self.cfg, self.device
        from diffusers.pipelines.cogvideo.pipeline_cogvideox import retrieve_timesteps

        n = self.per_prompt
        height, width = int(cfg_get(cfg, "height")), int(cfg_get(cfg, "width"))
        num_steps = int(cfg_get(cfg, "num_inference_steps"))
        g = float(cfg_get(cfg, "guidance_scale"))
        do_cfg = g > 1.0
        pe, npe = pipe.encode_prompt(
            prompt, cfg_get(cfg, "negative_prompt"), do_cfg, num_videos_per_prompt=n,
            max_sequence_length=int(cfg_get(cfg, "max_sequence_length", 226)), device=device,
        )
        sched = pipe.scheduler
        timesteps, num_steps = retrieve_timesteps(sched, num_steps, device, None)
        num_frames, extra = self._additional_frames(int(cfg_get(cfg, "num_frames")))
        latents = pipe.prepare_latents(
            n, self.transformer.config.in_channels, num_frames, height, width, pe.dtype, device, self.generator(seed)
        )
        ts = [int(t) for t in timesteps.tolist()]
        if bool(cfg_get(cfg, "use_dynamic_cfg", False)):
            scales = dynamic_guidance(g, ts, num_steps)
        else:
            scales = [g] * len(ts)
        cond: dict[str, Tensor] = {
            "timesteps": timesteps.clone(), "prompt_embeds": pe,
            "guidance_per_step": torch.tensor(scales, dtype=torch.float64),
        }
        if do_cfg:
            cond["negative_prompt_embeds"] = npe
        if self.transformer.config.use_rotary_positional_embeddings:
            cos, sin = pipe._prepare_rotary_positional_embeddings(height, width, latents.size(1), device)
            cond.update(rotary_cos=cos, rotary_sin=sin)
        step = DDIMStep(
            alphas_cumprod=sched.alphas_cumprod, timesteps=timesteps,
            prediction_type=sched.config.prediction_type, final_alpha_cumprod=float(sched.final_alpha_cumprod),
            precision=self.step_precision,
        )
        meta = {"timesteps": ts, "guidance_per_step": scales, "height": height, "width": width,
                "num_frames": int(cfg_get(cfg, "num_frames")), "latent_padding_frames": extra,
                "fps": int(cfg_get(cfg, "fps")), "cfg": do_cfg, "prediction_type": sched.config.prediction_type}
        return Encoded(x0=latents, cond=cond, step=step, num_steps=num_steps, meta=meta)

    @torch.no_grad()
    def velocity(self, xs: Tensor, steps: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        c = self.to_device(cond)
        x, b, n = self.flatten_states(xs.to(self.device))
        timestep = self.per_state(c["timesteps"], steps, n)
        pe = self.repeat(c["prompt_embeds"], b)
        do_cfg = "negative_prompt_embeds" in c
        if do_cfg:
            x = torch.cat([x, x])
            timestep = torch.cat([timestep, timestep])
            pe = torch.cat([self.repeat(c["negative_prompt_embeds"], b), pe])
        rotary = (c["rotary_cos"], c["rotary_sin"]) if "rotary_cos" in c else None
        out = self.transformer(
            hidden_states=x, encoder_hidden_states=pe, timestep=timestep, image_rotary_emb=rotary, return_dict=False
        )[0].float()
        if do_cfg:
            uncond, text = out.chunk(2)
            g = self.guidance_at(c["guidance_per_step"], c["timesteps"], steps, n)
            g = g.view(-1, *([1] * (uncond.ndim - 1)))
            out = uncond + g * (text - uncond)
        return out.reshape(xs.shape).to(xs.device)

    def guidance_at(self, table: Tensor, timesteps: Tensor, steps: Tensor, n: int) -> Tensor:
        """The CFG scale of each state (float32, repeated for the latent batch ``n``).

        Integer grid indices read the per-step table made in ``encode``. Fractional positions
        evaluate the pipeline's rule at the continuous timestep: the dynamic schedule's formula
        there with ``use_dynamic_cfg``, else the constant scale."""
        if not steps.is_floating_point():
            return self.per_state(table, steps, n).to(torch.float32)
        if bool(cfg_get(self.cfg, "use_dynamic_cfg", False)):
            t = self.per_state(timesteps, steps, 1).tolist()
            scales = dynamic_guidance(float(cfg_get(self.cfg, "guidance_scale")), t, len(timesteps))
        else:
            scales = [float(table[0])] * len(steps)
        return torch.tensor(scales, dtype=torch.float64, device=table.device).repeat_interleave(n).to(torch.float32)

    @torch.no_grad()
    def decode(self, x: Tensor, out_dir: Path, stem: str) -> list[str]:
        self.ensure_full("decode")
        pipe = self.pipe
        _, extra = self._additional_frames(int(cfg_get(self.cfg, "num_frames")))
        latents = x.to(self.device, pipe.vae.dtype)[:, extra:]
        video = pipe.decode_latents(latents)
        frames = pipe.video_processor.postprocess_video(video=video, output_type="np")
        return save_videos(list(frames), out_dir, stem, int(cfg_get(self.cfg, "fps")))
