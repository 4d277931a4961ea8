"""Sample videos: `python run_video_mp.py model=hunyuan ...` (same harness; the model decides the media)."""
from chords.cli import main

if __name__ == "__main__":
    main()
