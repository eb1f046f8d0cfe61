"""``python -m rmt.generate ...``: the same app as the ``rmt-generate`` console script."""

from rmt.entry import run_app
from rmt.generate.app import main

run_app(main, "rmt-generate")
