"""``python -m eval``: see eval/cli.py and docs/eval.md."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
