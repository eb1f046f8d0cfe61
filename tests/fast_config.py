"""Overrides for a training run of seconds on 2 cores (phage lambda, a narrow model),
shared by the tests that train in-process and those that launch rmt-train."""

FAST_TRAIN = [
    "data=lambda",
    "tokenizer.vocab_size=256",
    "model.d_model=64",
    "model.n_layers=2",
    "model.n_heads=2",
    "memory.memory_tokens=4",
    "memory.segment_tokens=32",
    "curriculum.stages=[{segments: 1, steps: 3}, {segments: 2, steps: 3}]",
    "trainer.tokens_per_step=256",
    "trainer.micro_batch_tokens=128",
    "trainer.warmup_steps=2",
    "trainer.log_every=1",
    "trainer.eval_every=3",
    "trainer.save_every=3",
    "trainer.eval_max_tokens=2048",
    "trainer.progress=false",
]
