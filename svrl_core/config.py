"""Typed configuration for every stage, loaded from params.yaml.

One class per params.yaml section. Unknown keys and out-of-range values fail at load with
a `ConfigError` that names the key, the value and what is allowed, so a typo never turns
into a silent default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """params.yaml is missing, malformed, or holds a bad key or value."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(Section):
    """Where each stage writes; dvc.yaml reads the same keys."""

    demos: str = "data/demos/toy"
    sft_model: str = "models/sft"
    rl_model: str = "models/rl"
    rl_state: str = ".svrl/rl_state"
    metrics: str = "metrics"
    plots: str = "plots"
    videos: str = "videos"
    export: str = "exports/policy_bundle"
    report: str = "reports"


class EnvConfig(Section):
    """The simulated task family shared by every stage."""

    family: Literal["toy", "libero", "robotwin"] = "toy"
    tasks: list[str] = Field(default_factory=lambda: ["red", "green", "blue", "yellow"], min_length=1,
                             description="training tasks: toy colours, LIBERO task names / indices, or "
                                         "RoboTwin task names")
    image_size: int = Field(32, ge=16, le=512, description="camera image width (and height unless image_height)")
    image_height: int | None = Field(None, ge=16, le=512, description="RoboTwin: head camera height "
                                                                      "(RoboTwin: 320 x 240); None: square")
    max_steps: int | Literal["oft", "simplevla"] = Field(
        32, description="policy steps per episode; LIBERO and RoboTwin also take the presets 'oft' and 'simplevla' "
        "(RoboTwin: each task's own limit)")
    n_objects: int = Field(3, ge=2, le=6, description="toy: discs in the arena")
    suite: Literal["libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90"] = "libero_object"
    cameras: list[Literal["agentview", "robot0_eye_in_hand"]] = Field(
        default_factory=lambda: ["agentview"], min_length=1, description="LIBERO: the first one feeds the policy")
    render_mesh_faces: int = Field(2000, ge=0, description="LIBERO: visual meshes cut to this many "
                                                           "triangles for the cameras (0: stock meshes)")
    msaa: bool = Field(False, description="LIBERO: 4x multisampling, as the stock renderer (slower on CPU)")
    fast_substeps: bool = Field(True, description="LIBERO: each physics substep as MuJoCo's two-phase step and "
                                "the arm's controller without robosuite's Python overhead (bit-identical episodes)")
    cached_tasks: int = Field(2, ge=1, le=100, description="LIBERO: live task scenes kept per env slot")
    solvable_layouts_only: bool = Field(False, description="RoboTwin: evaluation and RL skip layouts the expert "
                                        "fails on (SimpleVLA-RL); the metrics list the skipped seeds")

    @model_validator(mode="after")
    def _consistent(self) -> "EnvConfig":
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks must be unique, got {self.tasks}")
        if isinstance(self.max_steps, int) and self.max_steps < 1:
            raise ValueError(f"max_steps must be positive, got {self.max_steps}")
        if self.family == "toy" and not isinstance(self.max_steps, int):
            raise ValueError(f"max_steps presets ({self.max_steps!r}) are for LIBERO and RoboTwin; the toy env "
                             "needs a number")
        if self.solvable_layouts_only and self.family != "robotwin":
            raise ValueError(f"solvable_layouts_only filters RoboTwin's seeded layouts; {self.family} has none to skip")
        if self.image_height is not None and self.family != "robotwin":
            raise ValueError(f"image_height is for RoboTwin's head camera; {self.family} images are square")
        return self


class OftPolicyConfig(Section):
    """OpenVLA-OFT (policy.family: openvla-oft): where it starts and how it runs."""

    size: Literal["tiny", "7b"] = Field("tiny", description="fresh layout when no checkpoint: tiny for CPU; 7b "
                                        "needs a checkpoint")
    checkpoint: str | None = Field(None, description="a local OpenVLA / OpenVLA-OFT / svrl checkpoint directory "
                                   "(config.json, safetensors, dataset_statistics.json, tokenizer.json)")
    unnorm_key: str | None = Field(None, description="with sft.steps 0 (the checkpoint as it is): act with this "
                                   "dataset's statistics from it (e.g. libero_10, also found as libero_10_no_noops); "
                                   "fine-tuning always acts with the demonstrations' own")
    cameras: list[str] | None = Field(None, min_length=1, max_length=2, description="input cameras (OFT: third "
                                      "person, then wrist); None: the demonstrations' first")
    use_proprio: bool = Field(False, description="one proprio token after the image patches (OFT on RoboTwin)")
    image_size: int | None = Field(None, ge=16, le=1024, description="tiny: tower input size (None: the env's); "
                                   "a checkpoint fixes its own (224)")
    max_prompt_tokens: int | None = Field(None, ge=8, le=1024, description="prompt tokens per instruction, "
                                          "padded; None: 48 with a checkpoint's Llama tokenizer, 160 with tiny's "
                                          "byte tokenizer")
    center_crop: float = Field(1.0, gt=0.0, le=1.0, description="image area kept, centred (OFT's LIBERO: 0.9)")
    conventions: Literal["svrl", "openvla-oft-libero", "simplevla-rl-libero"] = Field(
        "svrl", description="image and gripper conventions of the checkpoint (policies/openvla_oft/conventions.py): "
        "svrl: upright images, the env's gripper as it is; the LIBERO releases of OpenVLA-OFT and SimpleVLA-RL: "
        "mirrored images, JPEG + lanczos3 to 224, gripper in [0, 1] with 1 = open. Saved with the checkpoint")
    dtype: Literal["float32", "bfloat16"] = "float32"
    device: Literal["cpu", "cuda"] = Field("cpu", description="where the network runs; envs, sampling and the "
                                           "loss stay on the CPU (only (B, K * D, n_bins) logits come back)")
    gradient_checkpointing: bool = False
    lora_rank: int = Field(0, ge=0, le=1024, description="LoRA (peft) on every linear layer but the LM head; "
                           "0: full fine-tuning. Checkpoints hold the merged weights")
    lora_alpha: float = Field(16.0, gt=0.0)


class PolicyConfig(Section):
    """The policy family, its architecture and the action tokenization."""

    family: Literal["tiny-vla", "openvla-oft"] = Field("tiny-vla", description="see svrl_core/policies/registry.py")
    oft: OftPolicyConfig = Field(default_factory=OftPolicyConfig)
    chunk_size: int = Field(4, ge=1, le=64, description="K actions predicted per forward pass")
    n_bins: int = Field(256, ge=2, le=1024)
    conv_channels: int = Field(32, ge=4, le=512)
    n_keypoints: int = Field(16, ge=1, le=256)
    instruction_dim: int = Field(64, ge=8, le=1024)
    hidden_dim: int = Field(256, ge=16, le=4096)
    max_instruction_bytes: int = Field(64, ge=8, le=1024)
    unnormalized_action_dims: list[int] = Field(default_factory=list, description="gripper dims, kept in [-1, 1]")
    binary_action_dims: list[int] = Field(default_factory=list, description="dims whose labels take two values "
        "(grippers): actions snap to the nearer (OpenVLA binarizes its gripper); TinyVLA only")
    action_bounds: Literal["q01_q99", "min_max"] = Field("q01_q99", description="what maps to [-1, 1] before "
        "binning: q01/q99 (OpenVLA, LIBERO's deltas) clips the extreme 1% of labels; min/max (OFT on ALOHA's "
        "absolute joints) clips none; TinyVLA only")
    relative_action_dims: list[int] = Field(default_factory=list, description="dims binned as the change from "
        "the proprio at the chunk's first frame (delta joints; needs proprio in the action's layout); TinyVLA only")
    trunk: Literal["mlp", "oft-transformer"] = Field("mlp", description="fusion trunk, see policies/trunks.py")
    keypoint_gain: float = Field(1.0, gt=0, le=100, description="keypoint coordinates ([-1, 1]) are multiplied "
        "by this before the trunk: a block spread of +-0.09 units needs large first-layer weights; TinyVLA only")
    transformer_width: int = Field(64, ge=8, le=8192)
    transformer_layers: int = Field(2, ge=1, le=64)
    transformer_heads: int = Field(4, ge=1, le=128)

    @model_validator(mode="after")
    def _bounds_supported(self) -> "PolicyConfig":
        if self.family == "openvla-oft" and self.action_bounds != "q01_q99":
            raise ValueError("action_bounds: min_max is implemented for TinyVLA; OpenVLA-OFT checkpoints carry "
                             "q01/q99 statistics: use q01_q99")
        if self.family == "openvla-oft" and self.binary_action_dims:
            raise ValueError("binary_action_dims is implemented for TinyVLA; for OpenVLA-OFT leave it empty")
        if self.family == "openvla-oft" and self.keypoint_gain != 1.0:
            raise ValueError("keypoint_gain is implemented for TinyVLA; for OpenVLA-OFT leave it at 1")
        if self.family == "openvla-oft" and self.relative_action_dims:
            raise ValueError("relative_action_dims is implemented for TinyVLA; for OpenVLA-OFT leave it empty")
        if set(self.relative_action_dims) & set(self.unnormalized_action_dims):
            raise ValueError(f"relative_action_dims {self.relative_action_dims} and unnormalized_action_dims "
                             f"{self.unnormalized_action_dims} overlap: grippers stay absolute")
        return self


class ComputeConfig(Section):
    """Where rollouts and training run."""

    n_workers: int = Field(2, ge=1, le=1024, description="Dask env workers (LocalCluster)")
    envs_per_worker: int = Field(64, ge=1, le=4096)
    scheduler_address: str | None = Field(None, description="tcp://host:port (or tls://) of a running Dask "
                                          "scheduler")
    tls_ca_file: str | None = Field(None, description="with a tls:// scheduler_address: the CA (PEM) that signed "
                                    "the cluster's certificates; the driver then shows tls_cert_file / tls_key_file")
    tls_cert_file: str | None = Field(None, description="this driver's TLS certificate (PEM), signed by tls_ca_file")
    tls_key_file: str | None = Field(None, description="the private key (PEM) of tls_cert_file")
    dashboard_address: str | None = Field(None, description="serve the local Dask cluster's dashboard here, e.g. "
                                          "':8787' or '127.0.0.1:8787' (null: off); a running scheduler serves "
                                          "its own (`dask scheduler --dashboard-address`)")
    connect_timeout_s: float = Field(90.0, gt=0, le=3600, description="give up on an unreachable scheduler, or one "
                                     "with fewer than min_workers workers, after this")
    min_workers: int = Field(1, ge=1, le=100_000, description="with scheduler_address: workers that must have "
                             "joined (per rank) before a stage starts")
    max_workers: int | None = Field(None, ge=1, le=100_000, description="the most env workers one rank uses; "
                                    "with scheduler_address, workers that join mid-run are taken at the next "
                                    "rollout up to it (null: all)")
    max_worker_failures: int = Field(3, ge=0, le=1000, description="env worker losses tolerated within "
                                     "worker_loss_window_s; one more ends the stage")
    worker_loss_window_s: float = Field(600.0, gt=0, le=604_800, description="losses older than this no longer "
                                        "count, so losses spread over a long run do not add up to its end")
    env_call_timeout_s: float = Field(600.0, gt=0, le=86_400, description="an env reset/step call on a worker "
                                      "that takes longer counts as a lost worker: restarted, its episodes re-run")
    actor_start_timeout_s: float = Field(900.0, gt=0, le=86_400, description="give up on building a worker's "
                                         "envs after this")
    pipeline_stages: int = Field(1, ge=1, le=64, description="rollout envs split into stages: one stage steps "
                                                             "while the model infers for another (1: off)")
    torch_threads: int = Field(1, ge=1, le=256)
    ranks: int | Literal["gpus"] = Field(1, description="data-parallel processes for sft and rl (torchrun, gloo "
                                         "on CPU, NCCL on GPUs), each with its own env workers; 'gpus': one per "
                                         "visible GPU. How the work is spread, not what is computed: not a DVC "
                                         "param of any stage")
    deepspeed_config: str | None = Field(None, description="JSON merged into the engine config, e.g. "
                                                           "infra/deepspeed/zero2_bf16.json on GPUs")


    @model_validator(mode="after")
    def _positive_ranks(self) -> "ComputeConfig":
        if isinstance(self.ranks, int) and not 1 <= self.ranks <= 1024:
            raise ValueError(f"ranks must be 1-1024 or 'gpus', got {self.ranks}")
        tls = (self.tls_ca_file, self.tls_cert_file, self.tls_key_file)
        if any(tls) and not all(tls):
            raise ValueError("TLS to the Dask scheduler needs tls_ca_file, tls_cert_file and tls_key_file together")
        if all(tls) and not (self.scheduler_address or "").startswith("tls://"):
            raise ValueError(f"TLS files are set but scheduler_address {self.scheduler_address!r} is not tls://")
        return self

    def rank_count(self) -> int:
        """The number of ranks `ranks` asks for on this machine."""
        if self.ranks != "gpus":
            return self.ranks
        import torch

        return max(torch.cuda.device_count(), 1)


class TrackingConfig(Section):
    """Experiment tracking (wandb)."""

    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "svrl"


class IngestConfig(Section):
    """Demonstration generation with the scripted expert."""

    episodes_per_task: int = Field(5, ge=1, le=100_000)
    seed_start: int = Field(0, ge=0)
    expert_noise: float = Field(0.1, ge=0.0, le=1.0, description="std of Gaussian action noise")
    execution_noise: float = Field(0.0, ge=0.0, le=10.0, description="RoboTwin, DART: the env runs the expert's "
                                   "targets off by a drifting offset of this scale, the demos keep the clean ones")
    hdf5_files: list[str] = Field(default_factory=list, description="LIBERO: import these official "
                                  "`<task>_demo.hdf5` files instead of running the expert")


class SftConfig(Section):
    """Supervised fine-tuning on the demonstrations."""

    steps: int = Field(400, ge=0, le=10_000_000, description="0: no training, the SFT output is "
                       "policy.oft.checkpoint as it is (a brought discrete-token checkpoint, e.g. SimpleVLA-RL's)")
    batch_size: int = Field(64, ge=1, le=65_536, description="demo chunks per step, split over the ranks")
    micro_batch_size: int | None = Field(None, ge=1, le=65_536, description="chunks per forward/backward, "
                                         "gradients accumulated to the batch's; None: the whole batch at once")
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    lr_schedule: Literal["constant", "cosine"] = Field("constant", description="cosine: from lr down to 0 at "
                                                        "the last step")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    grad_clip: float = Field(1.0, gt=0.0)
    mean_l1_weight: float = Field(0.0, ge=0.0, le=1000.0, description="weight of an L1 loss on each token's "
                                  "expected bin (what mean decoding acts on) beside the cross-entropy")
    state_noise: float = Field(0.0, ge=0.0, le=10.0, description="std of Gaussian noise on the proprio input, "
                               "as a fraction of each state dim's dataset std (against copying the state forward)")
    seed: int = Field(0, ge=0)
    log_every: int = Field(25, ge=1)


class EvalConfig(Section):
    """Greedy evaluation on a fixed list of initial states per task (shared by eval_sft and eval_rl)."""

    decoding: Literal["argmax", "mean"] = Field("mean", description="the deterministic (greedy) action of each "
                                                "token, in evaluation and in the exported bundle: the expected "
                                                "bin (mean) or the most likely bin (argmax, OpenVLA's rule); "
                                                "see docs/results/libero.md")
    episodes_per_task: int = Field(50, ge=1, le=100_000)
    seed_start: int = Field(1_000_000, ge=0, description="first evaluated initial state; the report says "
                                                          "whether ingest or rl used these states")
    n_videos: int = Field(4, ge=0, le=100)
    tasks: list[str] | None = Field(None, min_length=1, description="tasks to evaluate (default env.tasks); "
                                                                    "set to unseen tasks for generalization runs")
    sampled_temperature: float | None = Field(1.0, gt=0.0, le=10.0, description="also roll out the same states "
                                              "sampling at this temperature, reported beside greedy (the official "
                                              "protocol); None: greedy only")


class RlConfig(Section):
    """GRPO with a binary success reward (SimpleVLA-RL)."""

    iterations: int = Field(200, ge=1, le=1_000_000)
    prompts_per_batch: int = Field(16, ge=1, description="initial states sampled per rollout batch")
    group_size: int = Field(8, ge=2, le=1024, description="G trajectories per initial state")
    dynamic_sampling: bool = Field(True, description="train only on groups with mixed rewards, refilling")
    train_groups: int | None = Field(None, ge=1, description="SimpleVLA-RL's batch: refill until exactly this many "
                                     "kept groups, drop the surplus, skip the update if max_rollouts runs out first; "
                                     "None: the earlier batch (min_valid_groups, max_refills)")
    max_rollouts: int = Field(1024, ge=1, description="with train_groups: trajectories per iteration at most")
    min_valid_groups: int = Field(8, ge=1, description="without train_groups: refill until this many kept groups")
    max_refills: int = Field(3, ge=0, le=100)
    keep_success_range: tuple[float, float] = Field((0.1, 0.9), description="dynamic sampling keeps mixed groups "
                                                    "whose success rate lies in [low, high] (SimpleVLA-RL)")
    prompt_order: Literal["cycle", "shuffle"] = Field("cycle", description="cycle: tasks x states in order; "
                                                      "shuffle: a fresh seeded permutation every pass (needs "
                                                      "initial_states)")
    rest_uniform_prompts: bool = Field(False, description="a prompt whose group had one outcome sits out the "
                                       "next pass (needs initial_states): fewer env steps per mixed group")
    max_steps: int | Literal["oft", "simplevla"] | None = Field(None, description="step limit of RL rollouts, a "
                                                                "preset or a number; None: env.max_steps (eval's)")
    temperature: float = Field(1.6, gt=0.0, le=10.0)
    clip_low: float = Field(0.2, gt=0.0, lt=1.0)
    clip_high: float = Field(0.28, gt=0.0, le=10.0)
    loss_agg: Literal["seq-mean-token-mean", "token-mean"] = "seq-mean-token-mean"
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    grad_clip: float = Field(1.0, gt=0.0)
    mini_batch_trajectories: int = Field(64, ge=1, description="trajectories (whole groups) per optimizer step, "
                                         "over all ranks")
    micro_batch_chunks: int = Field(512, ge=1, le=65_536, description="chunk queries per forward/backward on "
                                    "one rank, gradients accumulated to the mini-batch's: bounds activation "
                                    "memory (OpenVLA-OFT 7B: a few)")
    epochs: int = Field(1, ge=1, le=100)
    seed_start: int = Field(10_000, ge=0, description="first initial state for RL")
    initial_states: int | None = Field(None, ge=1, description="cycle over this many initial states per "
                                                               "task (LIBERO: at most 50); None: never repeat")
    seed: int = Field(0, ge=0)
    max_idle_iterations: int = Field(5, ge=1, description="stop after this many iterations without a mixed group")
    checkpoint_every: int = Field(10, ge=1, description="iterations between resumable state saves")
    curve_every: int | None = Field(None, ge=1, description="iterations between learning-curve points: the policy "
                                    "on curve_states initial states per task, greedy (eval.decoding) and sampled "
                                    "at rl.temperature; the best point's policy is kept (null: off)")
    curve_states: int = Field(2, ge=1, le=10_000, description="initial states per task of each curve point, "
                              "from seed_start")
    max_wall_s: float | None = Field(None, gt=0, description="a segment's time budget: the stage saves its state "
                                     "and stops unfinished (exit code 75) before an iteration that would not fit, "
                                     "and a rerun continues the run (null: run to the end)")


    @model_validator(mode="after")
    def _whole_groups(self) -> "RlConfig":
        if self.mini_batch_trajectories % self.group_size:
            raise ValueError(f"mini_batch_trajectories={self.mini_batch_trajectories} must be a multiple of "
                             f"group_size={self.group_size} so that mini-batches hold whole groups")
        low, high = self.keep_success_range
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"keep_success_range must be [low, high] with 0 <= low <= high <= 1, got {[low, high]}")
        if self.train_groups is not None and self.max_rollouts < self.prompts_per_batch * self.group_size:
            raise ValueError(f"max_rollouts={self.max_rollouts} is less than one batch (prompts_per_batch x group_size"
                             f" = {self.prompts_per_batch * self.group_size})")
        if self.rest_uniform_prompts and self.initial_states is None:
            raise ValueError("rest_uniform_prompts rests prompts that come back each pass; set rl.initial_states")
        if self.prompt_order == "shuffle" and self.initial_states is None:
            raise ValueError("prompt_order: shuffle permutes tasks x initial_states; set rl.initial_states")
        if isinstance(self.max_steps, int) and self.max_steps < 1:
            raise ValueError(f"rl.max_steps must be positive, got {self.max_steps}")
        return self


class ExportConfig(Section):
    """The deployable policy bundle."""

    name: str = Field("svrl-tiny-vla", min_length=1)


class ReportConfig(Section):
    """The final SFT-vs-RL report."""

    title: str = Field("svrl: SFT vs GRPO on the toy reach task", min_length=1)
    baselines: dict[str, str] = Field(default_factory=dict, description=(
        "label -> another run's eval metrics json (e.g. many-demo SFT), shown beside SFT and RL; not a DVC "
        "dependency (its path varies), so `dvc repro -f report` after that file changes"))


class Params(Section):
    """Every section of params.yaml."""

    paths: PathsConfig = PathsConfig()
    env: EnvConfig = EnvConfig()
    policy: PolicyConfig = PolicyConfig()
    compute: ComputeConfig = ComputeConfig()
    tracking: TrackingConfig = TrackingConfig()
    ingest: IngestConfig = IngestConfig()
    sft: SftConfig = SftConfig()
    eval: EvalConfig = EvalConfig()
    rl: RlConfig = RlConfig()
    export: ExportConfig = ExportConfig()
    report: ReportConfig = ReportConfig()

    @model_validator(mode="after")
    def _across_sections(self) -> "Params":
        if self.sft.steps == 0 and not (self.policy.family == "openvla-oft" and self.policy.oft.checkpoint):
            raise ValueError("sft.steps: 0 takes policy.oft.checkpoint as the SFT output: set policy.family: "
                             "openvla-oft and policy.oft.checkpoint, or train (sft.steps > 0)")
        if self.ingest.execution_noise and self.env.family != "robotwin":
            raise ValueError(f"ingest.execution_noise (DART) is implemented for RoboTwin's expert only; env.family is "
                             f"{self.env.family!r}: set it to 0")
        return self


def _describe(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key (check the spelling against params.yaml's documented sections)"
    if isinstance(error["input"], dict):  # a check across keys of one section
        return f"{key}: {error['msg'].removeprefix('Value error, ')}"
    return f"{key} = {error['input']!r}: {error['msg']}"


def parse_params(raw: object, source: str = "params") -> Params:
    """Validate a parsed params mapping; raise ConfigError listing every bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        problems = "\n  ".join(_describe(e) for e in err.errors())
        raise ConfigError(f"{source} is invalid:\n  {problems}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found; run from the repository root or pass --params PATH")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_params(raw, str(path))
