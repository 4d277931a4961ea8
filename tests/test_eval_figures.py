"""Eval's new figures on synthetic run folders: quality against speedup, wall-clock against K,
and the methods side by side (image grid, video frame strip)."""
from __future__ import annotations

import numpy as np
from PIL import Image

from eval.cli import run_eval
from tests.test_eval import eval_cfg, image_sweep, shifted, write_run


def _video(path, shade: int) -> None:
    import imageio.v2 as imageio

    frames = [np.full((32, 32, 3), (shade + 20 * i) % 255, dtype=np.uint8) for i in range(6)]
    imageio.mimwrite(path, frames, fps=8, codec="libx264", macro_block_size=16)


def test_tradeoff_wallclock_and_image_grid(tmp_path):
    image_sweep(tmp_path / "out")
    res = run_eval(eval_cfg(tmp_path, [tmp_path / "out"], "figures=[tradeoff,wallclock,grids]", "tables=[]"))
    out = tmp_path / "eval_out"
    for name in ("tradeoff_tiny-img.png", "tradeoff_tiny-img.pdf", "wallclock_tiny-img.png", "grid_tiny_img_K4.png",
                 "grid_tiny_img_K8.png"):
        assert (out / name).is_file(), name
    with Image.open(out / "grid_tiny_img_K4.png") as im:  # 2 prompts x 4 methods: a wide grid
        assert im.width > im.height
    assert not [p for p in res.problems if "grids" in p]


def test_video_frame_strip(tmp_path):
    root = tmp_path / "out"
    p = "a cat"
    for shade, kw in ((0, {}), (100, dict(algorithm="chords", num_cores=4, init_t=[0, 8, 16, 32],
                                            hits=[(4, 21, shifted(p, 0, 0.1))], rounds=50))):
        v = tmp_path / f"v{shade}.mp4"
        _video(v, shade)
        write_run(root, model="tiny-vid", media="video", prompt=p, video=v, **kw)
    res = run_eval(eval_cfg(tmp_path, [root], "figures=[grids]", "tables=[]", "grids.frames=3"))
    strips = list((tmp_path / "eval_out").glob("strip_tiny_vid_K4_a_cat_s0.png"))
    assert len(strips) == 1 and not [q for q in res.problems if "grids" in q]
    with Image.open(strips[0]) as im:  # 2 methods (rows) x 3 frames
        assert im.width > im.height
