"""``python -m rmt.score ...``: the same app as the ``rmt-score`` console script."""

from rmt.entry import run_app
from rmt.score.app import main

run_app(main, "rmt-score")
