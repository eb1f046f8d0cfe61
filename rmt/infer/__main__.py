"""``python -m rmt.infer ...``: the same app as the ``rmt-infer`` console script."""

from rmt.infer.app import main

main()
