"""Stable Diffusion 3 / 3.5 (Large, Medium, ...) as a CHORDS adapter, on ``StableDiffusion3Pipeline``'s sub-steps.

* State: the pipeline's latents ``[n, C, h, w]`` in the prompt embeddings' dtype.
* Grid: ``retrieve_timesteps`` with the checkpoint's static shift (or ``calculate_shift`` when
  its scheduler uses dynamic shifting); Euler on ``scheduler.sigmas`` (trailing 0 included).
* Velocity: classifier-free guidance as the pipeline does it, the unconditional and
  conditional halves batched in one transformer call (``[uncond x B, cond x B]``), then
  ``uncond + g * (cond - uncond)``; guidance is off for ``guidance_scale <= 1``. Skip-layer
  guidance (an optional extra of the pipeline, off by default) is not supported.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from chords.models.base import Encoded
from chords.models.diffusers_common import (
    DiffusersAdapter,
    cfg_get,
    save_images,
    seeded,
    tiny_clip_text,
    tiny_clip_tokenizer,
    tiny_t5_encoder,
    tiny_t5_tokenizer,
)
from chords.steps import EulerStep

Tensor = torch.Tensor


class SD3Adapter(DiffusersAdapter):
    media = "image"
    pipeline_class = "StableDiffusion3Pipeline"
    transformer_class = "SD3Transformer2DModel"

    def build_tiny_transformer(self, cfg: Mapping[str, Any]):
        from diffusers import SD3Transformer2DModel

        with seeded(self.tiny_seed(cfg)):
            return SD3Transformer2DModel(
                sample_size=32, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
                num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
                pooled_projection_dim=64, out_channels=4,
            )

    def build_tiny_pipeline(self, cfg: Mapping[str, Any]):
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

        seed = self.tiny_seed(cfg)
        with seeded(seed + 10):
            vae = AutoencoderKL(
                sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                latent_channels=4, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                shift_factor=0.0609, scaling_factor=1.5035,
            )
        tok3 = tiny_t5_tokenizer()
        return StableDiffusion3Pipeline(
            transformer=self.build_tiny_transformer(cfg),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=vae.eval(),
            text_encoder=tiny_clip_text(32, projection=32, seed=seed + 11),
            tokenizer=tiny_clip_tokenizer(),
            text_encoder_2=tiny_clip_text(32, projection=32, seed=seed + 12),
            tokenizer_2=tiny_clip_tokenizer(),
            text_encoder_3=tiny_t5_encoder(len(tok3), 32, seed=seed + 13),
            tokenizer_3=tok3,
        )

    @torch.no_grad()
    def encode(self, prompt: str, seed: int) -> Encoded:
        self.ensure_full("encode")
        pipe, cfg, device = self.pipe, self.cfg, self.device
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
            calculate_shift,
            retrieve_timesteps,
        )

        n = self.per_prompt
        height, width = int(cfg_get(cfg, "height")), int(cfg_get(cfg, "width"))
        num_steps = int(cfg_get(cfg, "num_inference_steps"))
        g = float(cfg_get(cfg, "guidance_scale"))
        do_cfg = g > 1
        pe, npe, pooled, npooled = pipe.encode_prompt(
            prompt=prompt, prompt_2=None, prompt_3=None, device=device, num_images_per_prompt=n,
            do_classifier_free_guidance=do_cfg, negative_prompt=cfg_get(cfg, "negative_prompt"),
            max_sequence_length=int(cfg_get(cfg, "max_sequence_length", 256)),
        )
        latents = pipe.prepare_latents(
            n, self.transformer.config.in_channels, height, width, pe.dtype, device, self.generator(seed)
        )
        sched = pipe.scheduler
        kwargs = {}
        if sched.config.get("use_dynamic_shifting", None):
            p = self.transformer.config.patch_size
            kwargs["mu"] = calculate_shift(
                (latents.shape[2] // p) * (latents.shape[3] // p),
                sched.config.get("base_image_seq_len", 256),
                sched.config.get("max_image_seq_len", 4096),
                sched.config.get("base_shift", 0.5),
                sched.config.get("max_shift", 1.16),
            )
        timesteps, num_steps = retrieve_timesteps(sched, num_steps, device, sigmas=None, **kwargs)
        cond: dict[str, Tensor] = {
            "timesteps": timesteps.clone(), "prompt_embeds": pe, "pooled_prompt_embeds": pooled,
            "guidance_scale": torch.tensor(g, dtype=torch.float64),
        }
        if do_cfg:
            cond.update(negative_prompt_embeds=npe, negative_pooled_prompt_embeds=npooled)
        grid = sched.sigmas.detach().cpu().clone()
        meta = {"sigmas": grid.tolist(), "timesteps": timesteps.tolist(), "height": height, "width": width,
                "cfg": do_cfg, **({"mu": float(kwargs["mu"])} if "mu" in kwargs else {})}
        step = EulerStep(grid, precision=self.step_precision)
        return Encoded(x0=latents, cond=cond, step=step, num_steps=num_steps, meta=meta)

    @torch.no_grad()
    def velocity(self, xs: Tensor, steps: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        c = self.to_device(cond)
        x, b, n = self.flatten_states(xs.to(self.device))
        timestep = self.per_state(c["timesteps"], steps, n)
        pe, pooled = self.repeat(c["prompt_embeds"], b), self.repeat(c["pooled_prompt_embeds"], b)
        do_cfg = "negative_prompt_embeds" in c
        if do_cfg:  # the pipeline's order: [uncond, cond]
            x = torch.cat([x, x])
            timestep = torch.cat([timestep, timestep])
            pe = torch.cat([self.repeat(c["negative_prompt_embeds"], b), pe])
            pooled = torch.cat([self.repeat(c["negative_pooled_prompt_embeds"], b), pooled])
        out = self.transformer(
            hidden_states=x, timestep=timestep, encoder_hidden_states=pe, pooled_projections=pooled,
            return_dict=False,
        )[0]
        if do_cfg:
            uncond, text = out.chunk(2)
            out = uncond + float(c["guidance_scale"]) * (text - uncond)
        return out.reshape(xs.shape).to(xs.device)

    @torch.no_grad()
    def decode(self, x: Tensor, out_dir: Path, stem: str) -> list[str]:
        self.ensure_full("decode")
        vae = self.pipe.vae
        latents = (x.to(self.device) / vae.config.scaling_factor) + vae.config.shift_factor
        image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        return save_images(self.pipe.image_processor.postprocess(image, output_type="pil"), out_dir, stem)
