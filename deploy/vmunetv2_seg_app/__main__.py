"""Entry point of the app folder (``python deploy/vmunetv2_seg_app ...``; a MAP runs its app folder this way)."""

import sys

from app import main

if __name__ == "__main__":
    sys.exit(main())
