"""Labelled data for fine-tuning: every format users keep labels in, one loader.

CSV/TSV (`sequence,label`, regression targets, or per-base digit strings), BED intervals
over a FASTA, FASTA records with a side table, and per-base labels painted from GenBank,
GFF3 or BED features. Splits come by file, by a column, or by record; classes map to
indices once the train split is known. Bad input fails with one line naming the file and
line (or record) and the fix.

    data = load_dataset(DatasetOptions(train="train.csv", test="test.csv"),
                        "sequence_classification")
    data.train[0].sequence, data.train[0].target, data.classes
"""

from data.labelled.loader import Example, LabelledData, load_dataset
from data.labelled.options import FORMATS, TASK_KINDS, DatasetOptions

__all__ = ["FORMATS", "TASK_KINDS", "DatasetOptions", "Example", "LabelledData", "load_dataset"]
