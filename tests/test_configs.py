"""Every YAML under conf/ composes, converts to typed options, and bad values are one line.

The list of cases is built from the files themselves, so a new config file is composed
without anyone remembering to add it here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

import conf
from curriculum import build_curriculum
from data import FastaError, Genome, bundled_genome
from rmt.data_config import make_genome
from rmt.encoder import EncoderConfig
from rmt.option_errors import qualify
from rmt.option_groups import DataOptions, ModelOptions
from rmt.options import TokenizerAppOptions, TrainOptions, option_section, train_options
from rmt.options import tokenizer_options as tokenizer_app_options

CONF = Path(conf.__file__).parent
ROOTS = sorted(p.stem for p in CONF.glob("*.yaml"))
TYPED = {"train": train_options, "tokenizer": tokenizer_app_options}
# Configs that only compose with a Hydra plugin (pip install 'rmt-dna[sweep]').
PLUGINS = {
    "joblib": "hydra_plugins.hydra_joblib_launcher",
    "submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
    "optuna": "hydra_plugins.hydra_optuna_sweeper",
}


def compose_config(root: str, overrides=(), hydra: bool = False):
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose(root, list(overrides), return_hydra_config=hydra)


def defaults(path: Path) -> list:
    return (yaml.safe_load(path.read_text()) or {}).get("defaults", [])


def groups_of(root: str) -> set[str]:
    """The config groups a root YAML selects in its defaults list (not Hydra's own)."""
    entries = [e for e in defaults(CONF / f"{root}.yaml") if isinstance(e, dict)]
    return {k for e in entries for k in e if not k.startswith(("override", "hydra/", "/"))}


def skip_without_plugin(path: Path) -> None:
    """Skip a config whose defaults name a plugin's config that is not installed."""
    entries = [e if isinstance(e, str) else next(iter(e.values())) for e in defaults(path)]
    for module in filter(None, map(PLUGINS.get, entries)):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            pytest.skip(f"{path.name} needs {module}: pip install 'rmt-dna[sweep]'")


def plain_overrides(root: str, tmp_path: Path) -> list[str]:
    """Values the other apps' roots leave `???` (infer, generate: a checkpoint and an
    output; finetune: a checkpoint, a task kind and a training file; score: + a VCF)."""
    if root == "finetune":
        return [f"checkpoint={tmp_path / 'ckpt'}", "task=sequence_classification",
                "data.train=train.csv"]  # fmt: skip
    if root == "score":
        out = tmp_path / "out"
        return [f"checkpoint={tmp_path / 'ckpt'}", "variants=calls.vcf", f"output={out}"]
    if root == "generate":
        return [f"checkpoint={tmp_path / 'ckpt'}", f"output={tmp_path / 'gen.fa'}"]
    if root != "infer":
        return []
    (tmp_path / "ckpt").mkdir(parents=True, exist_ok=True)
    return [f"checkpoint={tmp_path / 'ckpt'}", f"output={tmp_path / 'out'}"]


def compose_and_convert(root: str, overrides: list[str], tmp_path: Path) -> object:
    cfg = compose_config(root, [*plain_overrides(root, tmp_path), *overrides])
    if root in TYPED:
        return TYPED[root](cfg)
    if dataclasses.is_dataclass(OmegaConf.get_type(cfg)):  # another app's own schema
        return OmegaConf.to_object(cfg)
    return OmegaConf.to_container(cfg, resolve=True)


GROUP_FILES = sorted(p.relative_to(CONF) for p in CONF.rglob("*.yaml") if p.parent != CONF)


@pytest.mark.parametrize("root", ROOTS)
def test_every_root_config_composes(root, tmp_path):
    result = compose_and_convert(root, [], tmp_path)
    if root == "train":
        assert isinstance(result, TrainOptions)
    if root == "tokenizer":
        assert isinstance(result, TokenizerAppOptions)


def task_owners(relative: Path, users: list[str]) -> list[str]:
    """conf/task/ holds both apps' tasks: rmt-finetune's list its schema, the rest rmt-train's."""
    if relative.parts[0] != "task":
        return users
    finetune = "/schema/task/finetune@_here_" in defaults(CONF / relative)
    return [root for root in users if (root == "finetune") == finetune]


@pytest.mark.parametrize(
    ("root", "task", "message"),
    [
        ("train", "token_classification",
         "task=token_classification is a fine-tuning task: run it with rmt-finetune"),
        ("finetune", "mlm", "task=mlm is an rmt-train task; rmt-finetune's are task="),
    ],
)  # fmt: skip
def test_a_task_of_the_other_app_is_one_line_naming_the_right_app(root, task, message, tmp_path):
    with pytest.raises(ValueError) as error:
        compose_and_convert(root, [f"task={task}"], tmp_path)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize("relative", GROUP_FILES, ids=str)
def test_every_group_option_composes(relative, tmp_path):
    path = CONF / relative
    group, name = str(relative.parent), relative.stem
    skip_without_plugin(path)
    if group.startswith("hydra/"):  # Hydra's groups: launchers, sweepers
        cfg = compose_config("train", [f"{group}={name}"], hydra=True)
        assert OmegaConf.select(cfg, group.replace("/", ".") + "._target_")
        return
    users = task_owners(relative, [root for root in ROOTS if group in groups_of(root)])
    overrides = [f"{group}={name}"] if users else [f"+{group}={name}"]
    composed = []
    for root in users or ROOTS:
        try:
            composed.append(compose_and_convert(root, overrides, tmp_path / root))
        except ConfigCompositionException:
            if users:
                raise
    assert composed, f"{relative} composes with none of the root configs {ROOTS}"


def test_options_carry_the_names_engine_code_reads():
    o = train_options(compose_config("train", ["experiment=memorize", "trainer=ddp"]))
    assert (o.task.name, o.task.classes, o.task.report_segments[-1]) == ("memorize", 16, 32)
    assert (o.memory.memory_tokens, o.memory.segment_tokens, o.model.d_model) == (4, 64, 128)
    assert (o.trainer.strategy, o.trainer.zero_stage, o.trainer.lr) == ("ddp", 0, 1e-3)
    assert o.trainer.betas == [0.9, 0.98] and o.trainer.tensorboard is True
    assert (o.curriculum.policy, o.curriculum.target) == ("threshold", 0.99)
    assert o.data.fasta == ["bundled:ecoli"] and o.tokenizer.path is None
    assert (o.kernels, o.seed, o.objective) == ("auto", 0, None)
    # The curriculum options are exactly the library's keyword arguments.
    assert build_curriculum(dataclasses.asdict(o.curriculum)).max_segments == 8
    zero3 = train_options(compose_config("train", ["trainer=deepspeed_zero3"]))
    assert (zero3.trainer.strategy, zero3.trainer.zero_stage) == ("deepspeed", 3)


def test_genos_cpu_experiment_is_genos_small_over_128_tokens():
    o = train_options(compose_config("train", ["experiment=genos_cpu"]))
    assert o.tokenizer.vocab_size == 128
    assert (o.model.n_experts, o.model.moe_top_k, o.model.n_kv_heads) == (4, 2, 2)


def test_sweep_parameters_name_keys_of_the_schema():
    for path in sorted((CONF / "experiment").glob("*.yaml")):
        skip_without_plugin(path)
        cfg = compose_config("train", [f"experiment={path.stem}"], hydra=True)
        params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
        for key in params:
            assert OmegaConf.select(cfg, key) is not None, f"{path.name}: {key} is not a key"


def one_line_error(root: str, overrides: list[str]) -> str:
    with pytest.raises(ValueError) as error:
        TYPED[root](compose_config(root, overrides))
    assert "\n" not in str(error.value)
    return str(error.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.save_every=0"], "trainer.save_every=0 must be >= 1"),
        (["trainer.betas=[0.9]"], "trainer.betas=[0.9] must be two numbers in [0, 1)"),
        (["trainer.zero_stage=2"], "trainer.zero_stage=2 does not fit trainer.strategy=single"),
        (["trainer.device=gpu"], "trainer.device='gpu' is not a device; use auto, cpu"),
        (["trainer.precision=fp16"], "trainer.precision='fp16' is not a precision; choose"),
        (["memory.backprop=truncated"], "memory.backprop='truncated' needs a depth: set memory"),
        (["memory.memory_tokens=-1"], "memory.memory_tokens=-1 must be >= 0"),
        (["data.eval_fraction=1"], "data.eval_fraction=1.0 must be in [0, 1)"),
        (["kernels=cuda"], "kernels='cuda' is not a backend; choose one of auto, torch"),
        (["experiment=memorize", "task.classes=1"], "task.classes=1 must be >= 2"),
        (["trainer.lr=???"], "trainer.lr is not set: give it a value (trainer.lr=...)"),
        # The model's and the curriculum's own checks, in config keys.
        (["model.activation=relu"], "model.activation='relu'; choose one of"),
        (["model.n_heads=3"], "model.d_model=256 must split into model.n_heads=3 heads"),
        (["curriculum.mix_fraction=2"], "curriculum.mix_fraction=2.0 must be in [0, 1]"),
        (["curriculum.stages=[]"], "curriculum.stages=[] is empty"),
        (["curriculum.stages=[{segments: 0, steps: 5}]"], "curriculum.stages entry {segments: 0"),
        (["curriculum.policy=doubling"], "curriculum.policy='doubling' does not fit this"),
        (["curriculum=doubling", "curriculum.start=4", "curriculum.max_segments=2"],
         "curriculum.policy='doubling' needs 1 <= curriculum.start=4 <= curriculum.max_segments=2"),
        # Hydra advises `+key=...` for a key the schema lacks; the value would be dropped.
        (["+memory.num_tokens=8"], "unknown config key memory.num_tokens (allowed: backprop,"),
        (["+lr=1"], "unknown config key lr (allowed: curriculum, data, kernels, memory,"),
        (["+task.classes=3"], "unknown config key task.classes (allowed: name)"),
    ],
)  # fmt: skip
def test_a_bad_value_is_one_line_naming_the_key(overrides, message):
    assert one_line_error("train", overrides).startswith(message)


def test_rmt_tokenizer_options_reject_bad_values_by_key():
    assert tokenizer_app_options(compose_config("tokenizer")).tokenizer.out == "tokenizer.json"
    message = one_line_error("tokenizer", ["tokenizer.vocab_size=0"])
    assert message == "tokenizer.vocab_size=0 must be >= 1"
    message = one_line_error("tokenizer", ["+tokenizer.path=tok.json"])
    assert message.startswith("unknown config key tokenizer.path (allowed: max_bp, out,")


@pytest.mark.parametrize(
    ("override", "key"),
    [("memory.memory_tokens=abc", "memory.memory_tokens"), ("data.fasta=x.fa", "data.fasta"),
     ("trainer.progress=maybe", "trainer.progress"), ("memory.num_tokens=8", "memory.num_tokens")],
)  # fmt: skip
def test_a_wrong_type_or_unknown_key_fails_while_composing(override, key):
    # Hydra reports these itself, before the app runs: its first line names the override.
    with pytest.raises(ConfigCompositionException) as error:
        compose_config("train", [override])
    assert override in str(error.value) and f"full_key: {key}" in str(error.value.__cause__)


def test_option_section_qualifies_a_library_error_and_keeps_its_type(tmp_path):
    lam = str(bundled_genome("lambda"))
    with pytest.raises(FastaError) as error, option_section("data", DataOptions):
        Genome(lam, weights=[1, 2], cache_dir=tmp_path)
    assert str(error.value).startswith("`data.weights` has 2 entries but `data.fasta` has 1")
    norm = pytest.raises(ValueError, match=r"^model\.norm='batch'; choose one of")
    with norm, option_section("model", ModelOptions):
        EncoderConfig(norm="batch")
    # The app boundary (rmt/data_config.py) does it for every data call.
    data = train_options(compose_config("train", ["data=lambda"])).data
    data = dataclasses.replace(data, record_weights={"chrZ": 1.0}, cache_dir=str(tmp_path))
    with pytest.raises(FastaError, match=r"^data\.record_weights names unknown records"):
        make_genome(data, [])


def test_qualify_rewrites_parameter_names_not_words():
    keys = ["fasta", "exclude", "max_n_fraction", "path"]
    cases = {
        "max_n_fraction=2 must be in [0, 1]": "data.max_n_fraction=2 must be in [0, 1]",
        "raise `exclude`; see fasta[0]": "raise `data.exclude`; see data.fasta[0]",
        "a max_n_fraction above 1": "a data.max_n_fraction above 1",
        "exclude is empty": "data.exclude is empty",
        # Plain words, other names and names already qualified are left as they are.
        "the path to exclude does not exist": "the path to exclude does not exist",
        "data.fasta is empty; set path_x=1": "data.fasta is empty; set path_x=1",
        "xfasta=2 or max_n_fractions": "xfasta=2 or max_n_fractions",
    }
    assert {m: qualify(m, "data", keys) for m in cases} == cases
