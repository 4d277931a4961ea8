"""Sample videos: `python run_video_mp.py [hydra overrides]` (same harness as run_image_mp.py; see README).

Without overrides it runs the embedded video model (model=moving-digits) on
prompts/moving_digits_demo.txt; `model=hunyuan ...` (etc.) and `prompt_file=...` replace them.
"""
import sys

from chords.cli import main

DEFAULT_MODEL = "moving-digits"
DEFAULT_PROMPTS = {"moving-digits": "prompts/moving_digits_demo.txt"}


def with_video_defaults(argv: list[str]) -> list[str]:
    """argv with model=moving-digits (and its demo prompts) unless the command line sets them."""
    keys = {a.split("=", 1)[0].lstrip("+~") for a in argv if "=" in a}
    extra = []
    model = next((a.split("=", 1)[1] for a in argv if a.split("=", 1)[0].lstrip("+") == "model"), None)
    if "model" not in keys:
        extra.append(f"model={DEFAULT_MODEL}")
        model = DEFAULT_MODEL
    if "prompt_file" not in keys and model in DEFAULT_PROMPTS:
        extra.append(f"prompt_file={DEFAULT_PROMPTS[model]}")
    return extra + list(argv)


if __name__ == "__main__":
    main(with_video_defaults(sys.argv[1:]))
