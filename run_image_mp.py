"""Sample images: `python run_image_mp.py [hydra overrides]` (see README)."""
from chords.cli import main

if __name__ == "__main__":
    main()
