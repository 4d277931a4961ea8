"""Wan2.1 text-to-video (14B, 1.3B) as a CHORDS adapter, on ``diffusers.WanPipeline``'s sub-steps.

* State: latents ``[n, 16, f, h, w]``. The initial noise is float32 (the pipeline prepares it in
  float32 and feeds the transformer a copy cast to its dtype); with ``step_precision: model``
  (the default) each step returns the transformer's output dtype, as the pipeline's
  ``scheduler.step`` does, so states are bf16 after the first step. With
  ``step_precision: float32`` states stay float32 between steps.
* Grid: ``scheduler.set_timesteps(N)`` exactly as the pipeline calls it, then Euler on
  ``scheduler.sigmas`` (trailing 0 included) with the transformer fed ``scheduler.timesteps``.
  The Diffusers checkpoints ship ``UniPCMultistepScheduler`` (flow sigmas with the checkpoint's
  ``flow_shift``); CHORDS needs a one-step solver that can jump, so, like the official CHORDS
  release, we run Euler on that scheduler's sigma grid (the paper: "Euler for flow matching").
  Sequential here is therefore Euler, not the pipeline's default UniPC multistep; with a
  ``FlowMatchEulerDiscreteScheduler`` (the tiny model, or ``scheduler: euler``) it equals the
  pipeline's own ``__call__``. ``flow_shift`` (null = the checkpoint's) overrides the shift.
* Velocity: classifier-free guidance ``uncond + g * (cond - uncond)`` (off for ``g <= 1``), the
  two branches in two transformer calls as the pipeline makes them (one batched call would sum
  in another order and lose bitwise equality with the pipeline). ``negative_prompt`` null is the pipeline's
  default (the empty string), as in the official release.
* Decode: the VAE runs in float32 (loaded with ``torch_dtype=float32`` as the official release
  does), latents de-normalised with the VAE's ``latents_mean`` / ``latents_std``.
* Wan2.2 (two experts, ``boundary_ratio``; ``expand_timesteps``) is not supported.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from chords.models.base import Encoded
from chords.models.diffusers_common import (
    DTYPE_KWARG,
    DiffusersAdapter,
    cfg_get,
    frames_problem,
    save_videos,
    seeded,
    tiny_t5_encoder,
    tiny_t5_tokenizer,
)
from chords.steps import EulerStep

Tensor = torch.Tensor


class WanAdapter(DiffusersAdapter):
    media = "video"
    pipeline_class = "WanPipeline"
    transformer_class = "WanTransformer3DModel"
    required_keys = DiffusersAdapter.required_keys + ("num_frames", "fps")
    tiny_multiple = 16

    def build_tiny_transformer(self, cfg: Mapping[str, Any]):
        from diffusers import WanTransformer3DModel

        with seeded(self.tiny_seed(cfg)):
            return WanTransformer3DModel(
                patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
            )

    def build_tiny_pipeline(self, cfg: Mapping[str, Any]):
        from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

        seed = self.tiny_seed(cfg)
        with seeded(seed + 10):
            vae = AutoencoderKLWan(
                base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
            )
        tok = tiny_t5_tokenizer()
        return WanPipeline(
            tokenizer=tok,
            text_encoder=tiny_t5_encoder(len(tok), 32, seed=seed + 11, umt5=True),
            vae=vae.eval(),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
            transformer=self.build_tiny_transformer(cfg),
        )

    def cast_tiny(self, module) -> None:
        vae = getattr(module, "vae", None)
        module.to(dtype=self.dtype)
        if vae is not None:
            vae.to(dtype=torch.float32)  # Wan's VAE stays float32

    def pipeline_overrides(self, cfg: Mapping[str, Any], common: dict[str, Any]) -> dict[str, Any]:
        from diffusers import AutoencoderKLWan

        vae = AutoencoderKLWan.from_pretrained(str(cfg_get(cfg, "model_path")), subfolder="vae",
                                               **{DTYPE_KWARG: torch.float32}, **common)
        return {"vae": vae}

    def configure_pipeline(self, pipe) -> None:
        super().configure_pipeline(pipe)
        if getattr(pipe.config, "boundary_ratio", None) is not None or getattr(pipe, "transformer_2", None) is not None:
            raise ValueError("Wan2.2 two-expert checkpoints (boundary_ratio / transformer_2) are not supported")
        if getattr(pipe.config, "expand_timesteps", False):
            raise ValueError("Wan2.2 expand_timesteps checkpoints are not supported")
        shift = cfg_get(self.cfg, "flow_shift")
        kind = str(cfg_get(self.cfg, "scheduler", "") or "").lower()
        sched = pipe.scheduler
        if kind == "euler":
            from diffusers import FlowMatchEulerDiscreteScheduler

            s = float(shift) if shift is not None else float(sched.config.get("flow_shift", sched.config.get("shift", 1.0)))
            pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=s)
        elif shift is not None:
            key = "flow_shift" if "flow_shift" in sched.config else "shift"
            pipe.scheduler = type(sched).from_config(sched.config, **{key: float(shift)})

    @classmethod
    def validate_family(cls, cfg: Mapping[str, Any]) -> list[str]:
        problem = frames_problem(cfg, "Wan", "81")
        if problem:
            return [problem]
        kind = cfg_get(cfg, "scheduler")
        if kind not in (None, "", "euler", "checkpoint"):
            return [f"model.scheduler {kind!r} is invalid: use null/'checkpoint' (Euler on its sigmas) or 'euler'"]
        return []

    @torch.no_grad()
    def encode(self, prompt: str, seed: int) -> Encoded:
        self.ensure_full("encode")
        pipe, cfg, device = self.pipe, self.cfg, self.device
        n = self.per_prompt
        height, width = int(cfg_get(cfg, "height")), int(cfg_get(cfg, "width"))
        num_frames = int(cfg_get(cfg, "num_frames"))
        num_steps = int(cfg_get(cfg, "num_inference_steps"))
        g = float(cfg_get(cfg, "guidance_scale"))
        do_cfg = g > 1.0
        pe, npe = pipe.encode_prompt(
            prompt=prompt, negative_prompt=cfg_get(cfg, "negative_prompt"), do_classifier_free_guidance=do_cfg,
            num_videos_per_prompt=n, max_sequence_length=int(cfg_get(cfg, "max_sequence_length", 512)),
            device=device,
        )
        tdtype = self.transformer.dtype
        cond: dict[str, Tensor] = {"prompt_embeds": pe.to(tdtype), "guidance_scale": torch.tensor(g, dtype=torch.float64)}
        if do_cfg:
            cond["negative_prompt_embeds"] = npe.to(tdtype)
        pipe.scheduler.set_timesteps(num_steps, device=device)
        timesteps = pipe.scheduler.timesteps
        cond["timesteps"] = timesteps.clone()
        latents = pipe.prepare_latents(
            n, self.transformer.config.in_channels, height, width, num_frames, torch.float32, device,
            self.generator(seed),
        )
        grid = pipe.scheduler.sigmas.detach().cpu().clone().to(torch.float32)
        if len(grid) != len(timesteps) + 1:
            raise RuntimeError(f"{type(pipe.scheduler).__name__} gave {len(grid)} sigmas for {len(timesteps)} timesteps")
        meta = {"sigmas": grid.tolist(), "timesteps": timesteps.tolist(), "height": height, "width": width,
                "num_frames": num_frames, "fps": int(cfg_get(cfg, "fps")), "cfg": do_cfg,
                "scheduler": type(pipe.scheduler).__name__}
        step = EulerStep(grid, precision=self.step_precision)
        return Encoded(x0=latents, cond=cond, step=step, num_steps=len(timesteps), meta=meta)

    @torch.no_grad()
    def velocity(self, xs: Tensor, steps: Tensor, cond: Mapping[str, Tensor]) -> Tensor:
        c = self.to_device(cond)
        x, b, n = self.flatten_states(xs.to(self.device))
        model_in = x.to(self.transformer.dtype)
        timestep = self.per_state(c["timesteps"], steps, n)
        pe = self.repeat(c["prompt_embeds"], b)
        out = self.transformer(hidden_states=model_in, timestep=timestep, encoder_hidden_states=pe, return_dict=False)[0]
        if "negative_prompt_embeds" in c:  # the unconditional branch: a second call, as the pipeline
            uncond = self.transformer(
                hidden_states=model_in, timestep=timestep,
                encoder_hidden_states=self.repeat(c["negative_prompt_embeds"], b), return_dict=False,
            )[0]
            out = uncond + float(c["guidance_scale"]) * (out - uncond)
        return out.reshape(xs.shape).to(xs.device)

    @torch.no_grad()
    def decode(self, x: Tensor, out_dir: Path, stem: str) -> list[str]:
        self.ensure_full("decode")
        pipe, vae = self.pipe, self.pipe.vae
        latents = x.to(self.device, vae.dtype)
        z = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
        video = vae.decode(latents / inv_std + mean, return_dict=False)[0]
        frames = pipe.video_processor.postprocess_video(video, output_type="np")
        return save_videos(list(frames), out_dir, stem, int(cfg_get(self.cfg, "fps")))
