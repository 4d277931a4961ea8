"""FLUX.1 (dev, schnell, ...) as a CHORDS adapter, built on ``diffusers.FluxPipeline``'s own sub-steps.

* State: the pipeline's packed latents ``[n, seq, C]`` (``n = num_images_per_prompt``), in the
  pipeline's latent dtype (the prompt embeddings' dtype, as ``FluxPipeline`` does).
* Grid: ``sigmas = linspace(1, 1/N, N)`` shifted by ``calculate_shift(seq)`` through
  ``retrieve_timesteps``; Euler on ``scheduler.sigmas`` (trailing 0 included).
* Velocity: one transformer call for ``B`` states at ``B`` grid indices; ``timestep / 1000`` in
  the latent dtype, the distilled guidance embedding (``guidance_scale``, when the checkpoint has
  ``guidance_embeds``), and, with ``true_cfg_scale > 1`` and a ``negative_prompt``, true CFG
  ``neg + s * (pos - neg)`` with the negative branch in a second call, as the pipeline makes it
  (one batched call would sum in another order and lose bitwise equality with the pipeline).
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
    save_images,
    seeded,
    tiny_clip_text,
    tiny_clip_tokenizer,
    tiny_t5_encoder,
    tiny_t5_tokenizer,
)
from chords.steps import EulerStep

Tensor = torch.Tensor


class FluxAdapter(DiffusersAdapter):
    media = "image"
    pipeline_class = "FluxPipeline"
    transformer_class = "FluxTransformer2DModel"

    # ---- tiny models (tests and configs/model/tiny-flux.yaml)
    def build_tiny_transformer(self, cfg: Mapping[str, Any]):
        from diffusers import FluxTransformer2DModel

        with seeded(self.tiny_seed(cfg)):
            return FluxTransformer2DModel(
                patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
                num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                axes_dims_rope=[4, 4, 8], guidance_embeds=bool(cfg_get(cfg, "tiny_guidance_embeds", True)),
            )

    def build_tiny_pipeline(self, cfg: Mapping[str, Any]):
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline

        seed = self.tiny_seed(cfg)
        with seeded(seed + 10):
            vae = AutoencoderKL(
                sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                shift_factor=0.0609, scaling_factor=1.5035,
            )
        tok2 = tiny_t5_tokenizer()
        # FLUX.1-dev's scheduler: resolution-dependent shift; FLUX.1-schnell-like tiny (no guidance
        # embedding) gets schnell's static shift 1.0
        dev = bool(cfg_get(cfg, "tiny_guidance_embeds", True))
        sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True) if dev else FlowMatchEulerDiscreteScheduler(shift=1.0)
        return FluxPipeline(
            scheduler=sched,
            vae=vae.eval(),
            text_encoder=tiny_clip_text(32, seed=seed + 11),
            tokenizer=tiny_clip_tokenizer(),
            text_encoder_2=tiny_t5_encoder(len(tok2), 32, seed=seed + 12),
            tokenizer_2=tok2,
            transformer=self.build_tiny_transformer(cfg),
        )

    @classmethod
    def validate_family(cls, cfg: Mapping[str, Any]) -> list[str]:
        s = cfg_get(cfg, "true_cfg_scale", 1.0)
        if isinstance(s, bool) or not isinstance(s, (int, float)) or s < 0:
            return [f"model.true_cfg_scale {s!r} is invalid: it must be a number >= 0"]
        return []

    # ---- the four operations
    @torch.no_grad()
    def encode(self, prompt: str, seed: int) -> Encoded:
        self.ensure_full("encode")
        pipe, cfg = self.pipe, self.cfg
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

        n = self.per_prompt
        height, width = int(cfg_get(cfg, "height")), int(cfg_get(cfg, "width"))
        num_steps = int(cfg_get(cfg, "num_inference_steps"))
        msl = int(cfg_get(cfg, "max_sequence_length", 512))
        device = self.device

        pe, pooled, text_ids = pipe.encode_prompt(
            prompt=prompt, prompt_2=cfg_get(cfg, "prompt_2"), device=device,
            num_images_per_prompt=n, max_sequence_length=msl,
        )
        cond: dict[str, Tensor] = {"prompt_embeds": pe, "pooled_prompt_embeds": pooled, "text_ids": text_ids}
        true_cfg = float(cfg_get(cfg, "true_cfg_scale", 1.0))
        negative = cfg_get(cfg, "negative_prompt")
        if true_cfg > 1 and negative is not None:
            npe, npooled, ntext_ids = pipe.encode_prompt(
                prompt=negative, prompt_2=cfg_get(cfg, "negative_prompt_2"), device=device,
                num_images_per_prompt=n, max_sequence_length=msl,
            )
            cond.update(negative_prompt_embeds=npe, negative_pooled_prompt_embeds=npooled,
                        negative_text_ids=ntext_ids, true_cfg_scale=torch.tensor(true_cfg, dtype=torch.float64))

        latents, img_ids = pipe.prepare_latents(
            n, self.transformer.config.in_channels // 4, height, width, pe.dtype, device, self.generator(seed)
        )
        cond["img_ids"] = img_ids

        sched = pipe.scheduler
        sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
        if getattr(sched.config, "use_flow_sigmas", False):
            sigmas = None
        mu = calculate_shift(
            latents.shape[1],
            sched.config.get("base_image_seq_len", 256),
            sched.config.get("max_image_seq_len", 4096),
            sched.config.get("base_shift", 0.5),
            sched.config.get("max_shift", 1.15),
        )
        timesteps, num_steps = retrieve_timesteps(sched, num_steps, device, sigmas=sigmas, mu=mu)
        cond["timesteps"] = timesteps.clone()
        if self.transformer.config.guidance_embeds:
            cond["guidance"] = torch.full([1], float(cfg_get(cfg, "guidance_scale")), device=device, dtype=torch.float32)
        grid = sched.sigmas.detach().cpu().clone()
        meta = {"sigmas": grid.tolist(), "timesteps": timesteps.tolist(), "mu": float(mu),
                "height": height, "width": width, "true_cfg": "true_cfg_scale" in cond}
        step = EulerStep(grid, precision=self.step_precision)
        return Encoded(x0=latents, cond=cond, step=step, num_steps=num_steps, meta=meta)

    @torch.no_grad()
    def velocity(self, xs: Tensor, steps: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        c = self.to_device(cond)
        x, b, n = self.flatten_states(xs.to(self.device))
        timestep = self.per_state(c["timesteps"], steps, n).to(x.dtype) / 1000
        guidance = c["guidance"].expand(b * n) if "guidance" in c else None
        pe, pooled = self.repeat(c["prompt_embeds"], b), self.repeat(c["pooled_prompt_embeds"], b)
        out = self._forward(x, timestep, guidance, pe, pooled, c["text_ids"], c["img_ids"])
        if "true_cfg_scale" in c:  # the negative branch: a second call, as the pipeline
            neg = self._forward(
                x, timestep, guidance, self.repeat(c["negative_prompt_embeds"], b),
                self.repeat(c["negative_pooled_prompt_embeds"], b), c["negative_text_ids"], c["img_ids"],
            )
            out = neg + float(c["true_cfg_scale"]) * (out - neg)
        return out.reshape(xs.shape).to(xs.device)

    def _forward(self, x, timestep, guidance, pe, pooled, text_ids, img_ids) -> Tensor:
        return self.transformer(
            hidden_states=x, timestep=timestep, guidance=guidance, pooled_projections=pooled,
            encoder_hidden_states=pe, txt_ids=text_ids, img_ids=img_ids, return_dict=False,
        )[0]

    @torch.no_grad()
    def decode(self, x: Tensor, out_dir: Path, stem: str) -> list[str]:
        self.ensure_full("decode")
        pipe, vae = self.pipe, self.pipe.vae
        height, width = int(cfg_get(self.cfg, "height")), int(cfg_get(self.cfg, "width"))
        latents = pipe._unpack_latents(x.to(self.device), height, width, pipe.vae_scale_factor)
        latents = (latents / vae.config.scaling_factor) + vae.config.shift_factor
        image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        images = pipe.image_processor.postprocess(image, output_type="pil")
        return save_images(images, out_dir, stem)
