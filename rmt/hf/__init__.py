"""This project's models the Hugging Face way: `RMTConfig` and the `RMT*` model classes.

Importing `rmt.hf` registers them with the Auto classes (model_type "rmt-dna"), so a
directory `rmt-export` wrote loads with `AutoModelForSequenceClassification.from_pretrained`
and the like. Registering again (a second import, a reload) is harmless. `import rmt`
does not import this package: transformers is slow to import.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from rmt.hf.configuration import RMTConfig
from rmt.hf.modeling import (
    RMTForMaskedLM,
    RMTForSequenceClassification,
    RMTForTokenClassification,
    RMTModel,
    RMTModelOutput,
    RMTPreTrainedModel,
)

AUTO_CLASSES = {
    AutoModel: RMTModel,
    AutoModelForMaskedLM: RMTForMaskedLM,
    AutoModelForSequenceClassification: RMTForSequenceClassification,
    AutoModelForTokenClassification: RMTForTokenClassification,
}

AutoConfig.register(RMTConfig.model_type, RMTConfig, exist_ok=True)
for auto, model_class in AUTO_CLASSES.items():
    auto.register(RMTConfig, model_class, exist_ok=True)

__all__ = [
    "AUTO_CLASSES",
    "RMTConfig",
    "RMTForMaskedLM",
    "RMTForSequenceClassification",
    "RMTForTokenClassification",
    "RMTModel",
    "RMTModelOutput",
    "RMTPreTrainedModel",
]
