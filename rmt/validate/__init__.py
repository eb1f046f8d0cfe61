"""rmt-validate: how real a generated DNA sequence looks, next to an order-k Markov sample
and to stretches of a real reference genome.

    rmt-validate generated.fa --reference genome.fa --output validation/

``metrics`` holds the measurements (pure functions of sequences), ``report`` draws the
comparison samples and writes report.json / .md / .png, ``cli`` is the command line.
"""

from rmt.validate.report import ValidateOptions, Validation, validate, write

__all__ = ["ValidateOptions", "Validation", "validate", "write"]
