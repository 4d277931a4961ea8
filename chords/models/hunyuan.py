"""HunyuanVideo as a CHORDS adapter, on ``diffusers.HunyuanVideoPipeline``'s sub-steps.

* State: latents ``[n, C, f, h, w]``. The initial noise is float32 (the pipeline prepares it in
  float32 and feeds the transformer a copy cast to its dtype); with ``step_precision: model``
  (the default) each step returns the transformer's output dtype, as the pipeline's
  ``scheduler.step`` does, so states are bf16 after the first step and sequential sampling
  equals the pipeline bit for bit. The timestep is rounded to each state's dtype as the
  pipeline rounds it (:meth:`HunyuanAdapter.timestep_as_pipeline`). With
  ``step_precision: float32`` states stay float32 between steps.
* Grid: ``sigmas = linspace(1, 0, N + 1)[:-1]`` through ``retrieve_timesteps`` with the
  checkpoint's flow shift; Euler on ``scheduler.sigmas`` (trailing 0 included).
* Velocity: the guidance embedding ``guidance_scale * 1000`` (in the transformer dtype), per
  sample timesteps; with ``true_cfg_scale > 1`` and a ``negative_prompt``, true CFG
  ``neg + s * (pos - neg)`` with the negative branch in a second call, as the pipeline makes it
  (one batched call would sum in another order and lose bitwise equality with the pipeline).
* ``prompt_template``: null uses the pipeline's default Llama template; a tiny text encoder
  needs ``{"template": "{}", "crop_start": 0}``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from chords.models.base import Encoded
from chords.models.diffusers_common import (
    DiffusersAdapter,
    cfg_get,
    frames_problem,
    save_videos,
    seeded,
    tiny_clip_text,
    tiny_clip_tokenizer,
    tiny_llama_encoder,
    tiny_llama_tokenizer,
)
from chords.steps import EulerStep

Tensor = torch.Tensor


def _template(cfg: Mapping[str, Any]):
    t = cfg_get(cfg, "prompt_template")
    if t is None:
        from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

        return DEFAULT_PROMPT_TEMPLATE
    return {"template": str(t["template"]), "crop_start": int(t["crop_start"])}


class HunyuanAdapter(DiffusersAdapter):
    media = "video"
    pipeline_class = "HunyuanVideoPipeline"
    transformer_class = "HunyuanVideoTransformer3DModel"
    required_keys = DiffusersAdapter.required_keys + ("num_frames", "fps")
    tiny_multiple = 8

    def build_tiny_transformer(self, cfg: Mapping[str, Any]):
        from diffusers import HunyuanVideoTransformer3DModel

        with seeded(self.tiny_seed(cfg)):
            return HunyuanVideoTransformer3DModel(
                in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
                num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
                text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
            )

    def build_tiny_pipeline(self, cfg: Mapping[str, Any]):
        from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline

        seed = self.tiny_seed(cfg)
        with seeded(seed + 10):
            vae = AutoencoderKLHunyuanVideo(
                in_channels=3, out_channels=3, latent_channels=4,
                down_block_types=("HunyuanVideoDownBlock3D",) * 4, up_block_types=("HunyuanVideoUpBlock3D",) * 4,
                block_out_channels=(8, 8, 8, 8), layers_per_block=1, act_fn="silu", norm_num_groups=4,
                scaling_factor=0.476986, spatial_compression_ratio=8, temporal_compression_ratio=4,
                mid_block_add_attention=True,
            )
        tok = tiny_llama_tokenizer()
        return HunyuanVideoPipeline(
            text_encoder=tiny_llama_encoder(len(tok), 16, seed=seed + 11),
            tokenizer=tok,
            transformer=self.build_tiny_transformer(cfg),
            vae=vae.eval(),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
            text_encoder_2=tiny_clip_text(8, seed=seed + 12),
            tokenizer_2=tiny_clip_tokenizer(),
        )

    @classmethod
    def validate_family(cls, cfg: Mapping[str, Any]) -> list[str]:
        problem = frames_problem(cfg, "HunyuanVideo", "129, 61")
        return [problem] if problem else []

    @torch.no_grad()
    def encode(self, prompt: str, seed: int) -> Encoded:
        self.ensure_full("encode")
        pipe, cfg, device = self.pipe, self.cfg, self.device
        from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import retrieve_timesteps

        n = self.per_prompt
        height, width = int(cfg_get(cfg, "height")), int(cfg_get(cfg, "width"))
        num_frames = int(cfg_get(cfg, "num_frames"))
        num_steps = int(cfg_get(cfg, "num_inference_steps"))
        msl = int(cfg_get(cfg, "max_sequence_length", 256))
        tdtype = self.transformer.dtype
        template = _template(cfg)

        pe, pooled, mask = pipe.encode_prompt(
            prompt=prompt, prompt_2=None, prompt_template=template, num_videos_per_prompt=n,
            device=device, max_sequence_length=msl,
        )
        cond: dict[str, Tensor] = {
            "prompt_embeds": pe.to(tdtype), "pooled_prompt_embeds": pooled.to(tdtype),
            "prompt_attention_mask": mask.to(tdtype),
            "guidance_scale": torch.tensor(float(cfg_get(cfg, "guidance_scale")), dtype=torch.float64),
        }
        true_cfg = float(cfg_get(cfg, "true_cfg_scale", 1.0))
        negative = cfg_get(cfg, "negative_prompt")
        if true_cfg > 1 and negative is not None:
            npe, npooled, nmask = pipe.encode_prompt(
                prompt=negative, prompt_2=None, prompt_template=template, num_videos_per_prompt=n,
                device=device, max_sequence_length=msl,
            )
            cond.update(negative_prompt_embeds=npe.to(tdtype), negative_pooled_prompt_embeds=npooled.to(tdtype),
                        negative_prompt_attention_mask=nmask.to(tdtype),
                        true_cfg_scale=torch.tensor(true_cfg, dtype=torch.float64))

        sigmas = np.linspace(1.0, 0.0, num_steps + 1)[:-1]
        timesteps, num_steps = retrieve_timesteps(pipe.scheduler, num_steps, device, sigmas=sigmas)
        cond["timesteps"] = timesteps.clone()
        latents = pipe.prepare_latents(
            n, self.transformer.config.in_channels, height, width, num_frames, torch.float32, device,
            self.generator(seed),
        )
        grid = pipe.scheduler.sigmas.detach().cpu().clone()
        meta = {"sigmas": grid.tolist(), "timesteps": timesteps.tolist(), "height": height, "width": width,
                "num_frames": num_frames, "fps": int(cfg_get(cfg, "fps")), "true_cfg": "true_cfg_scale" in cond}
        step = EulerStep(grid, precision=self.step_precision)
        return Encoded(x0=latents, cond=cond, step=step, num_steps=num_steps, meta=meta)

    @torch.no_grad()
    def velocity(self, xs: Tensor, steps: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        c = self.to_device(cond)
        x, b, n = self.flatten_states(xs.to(self.device))
        tdtype = self.transformer.dtype
        timestep = self.timestep_as_pipeline(c["timesteps"], steps, n, x.dtype)
        rows = b * n
        guidance = torch.tensor([float(c["guidance_scale"])] * rows, dtype=tdtype, device=self.device) * 1000.0
        model_in = x.to(tdtype)
        pe, pooled, mask = (self.repeat(c[k], b) for k in ("prompt_embeds", "pooled_prompt_embeds", "prompt_attention_mask"))
        out = self._forward(model_in, timestep, guidance, pe, mask, pooled)
        if "true_cfg_scale" in c:  # the negative branch: a second call, as the pipeline
            neg = self._forward(
                model_in, timestep, guidance, self.repeat(c["negative_prompt_embeds"], b),
                self.repeat(c["negative_prompt_attention_mask"], b), self.repeat(c["negative_pooled_prompt_embeds"], b),
            )
            out = neg + float(c["true_cfg_scale"]) * (out - neg)
        return out.reshape(xs.shape).to(xs.device)

    def timestep_as_pipeline(self, table: Tensor, steps: Tensor, n: int, state_dtype: torch.dtype) -> Tensor:
        """Each state's timestep rounded as the pipeline rounds it: to its latents' dtype.

        The pipeline casts the timestep to the latents' dtype, which is float32 for the initial
        noise and, with ``step_precision: model``, the transformer's output dtype after the first
        step. States of one round are stacked in one tensor (float32 when the noise is among bf16
        states), so the rounding follows each state's grid index, not the stack's dtype. The
        transformer reads timesteps as ``t.float()``, so a float32 tensor of bf16-rounded values
        gives the same embedding as the pipeline's bf16 tensor.
        """
        t = self.per_state(table, steps, n)
        if self.step_precision != "model":
            return t.to(state_dtype)  # states keep the noise's dtype
        stepped = (steps > 0).to(t.device).repeat_interleave(n)
        return torch.where(stepped, t.to(self.transformer.dtype).to(t.dtype), t)

    def _forward(self, x, timestep, guidance, pe, mask, pooled) -> Tensor:
        return self.transformer(
            hidden_states=x, timestep=timestep, encoder_hidden_states=pe, encoder_attention_mask=mask,
            pooled_projections=pooled, guidance=guidance, return_dict=False,
        )[0]

    @torch.no_grad()
    def decode(self, x: Tensor, out_dir: Path, stem: str) -> list[str]:
        self.ensure_full("decode")
        pipe, vae = self.pipe, self.pipe.vae
        latents = x.to(self.device, vae.dtype) / vae.config.scaling_factor
        video = vae.decode(latents, return_dict=False)[0]
        frames = pipe.video_processor.postprocess_video(video, output_type="np")
        return save_videos(list(frames), out_dir, stem, int(cfg_get(self.cfg, "fps")))
