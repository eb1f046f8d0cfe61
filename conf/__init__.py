"""Hydra configs, installed as a package so `pkg://conf` finds them from any directory.

Hydra imports this package to read the YAML files, so importing the apps' typed schemas
here registers them (`train_schema`, `finetune_schema`, `infer_schema`, `score_schema`,
`bench_schema`,
`/schema/task/*`, ...) for every consumer of these configs: the apps, the tests, the
benchmarks, a user's own `compose`. Each root YAML lists its schema first in its defaults.
"""

from importlib import import_module

# rmt-train and rmt-tokenizer, rmt-finetune, rmt-infer, rmt-score, rmt-bench: each registers
# its schemas on import.
SCHEMA_MODULES = (
    "rmt.options",
    "rmt.finetune_options",
    "rmt.infer.options",
    "rmt.score.options",
    "rmt.generate.options",
    "benchmarks.options",
)
for _module in SCHEMA_MODULES:
    import_module(_module)
