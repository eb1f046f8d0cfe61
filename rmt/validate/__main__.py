"""``python -m rmt.validate ...``: the same app as the ``rmt-validate`` console script."""

from rmt.validate.cli import main

main()
