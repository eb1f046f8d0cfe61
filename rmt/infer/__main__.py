"""``python -m rmt.infer ...``: the same app as the ``rmt-infer`` console script."""

from rmt.entry import run_app
from rmt.infer.app import main

run_app(main, "rmt-infer")
