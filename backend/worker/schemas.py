"""Pydantic models of every request and response body of HTTP API v1 (documented in docs/API.md).

``JobSpec`` is the JSON ``spec`` field of ``POST /v1/jobs``; the rest describe what the server returns. The same
names appear in the OpenAPI schema FastAPI serves at ``/openapi.json``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from backend.masks.options import MaskOptions

PRESETS = ("fast", "balanced", "quality")
SAMPLERS = ("unipc", "dpm++", "euler")
NAMED_SIZES = ("512p", "704p")
SIZE_PATTERN = re.compile(r"^(\d+)x(\d+)$")
SIZE_MULTIPLE = 32
MIN_SIDE = 64
MAX_EXTRA_REFERENCES = 8

JobStatusName = Literal["queued", "running", "succeeded", "failed", "canceled"]
MaskSource = Literal["alpha", "file", "auto"]


class JobSpec(MaskOptions):
    """What to generate. Unknown keys are refused so that a typo never silently falls back to a default.

    The ``mask_*`` fields (from ``MaskOptions``) steer the masks of ``"auto"`` mask sources (``--sam3`` workers).
    """

    model_config = ConfigDict(extra="forbid")

    mode: Literal["animation", "replacement"] = "animation"
    prompt: str = Field("", max_length=4000)
    negative_prompt: str = Field("", max_length=4000)
    preset: Literal["fast", "balanced", "quality"] = "fast"
    steps: int | None = Field(None, ge=1, le=200, description="overrides the preset's step count")
    guidance: float | None = Field(None, ge=0.0, le=30.0, description="text CFG scale; <= 1 skips the uncond pass")
    shift: float | None = Field(None, gt=0.0, le=50.0)
    sampler: Literal["unipc", "dpm++", "euler"] | None = None
    step_cache: Literal["auto", "off", "taylorseer", "first_block"] | None = Field(
        None, description="advanced: skip DiT forwards of many-step sampling. 'auto' (the default): TaylorSeer "
        "when a window has >= 20 steps (the quality preset), off below; 'off'; 'taylorseer'; 'first_block'",
    )
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    size: str = Field("512p", description="'512p', '704p' or '<W>x<H>' with sides multiples of 32")
    frame_range: tuple[int, int] | None = Field(
        None, description="[start, end) of the driving clip's frames to use; end may exceed the clip (clamped)"
    )
    fps: float | None = Field(None, gt=0.0, le=240.0, description="required when 'driving' is a zip of frames")
    loras: dict[str, float] | None = Field(None, description="LoRA name -> strength; replaces the preset's LoRAs")
    segment_len: int | None = Field(
        None, ge=9, le=161,
        description="advanced: frames per denoising window (4k+1; default 81, what the model was trained on). "
        "Shorter windows need less GPU memory but give the model less temporal context",
    )
    color_anchor: bool | None = Field(
        None, description="match each later window's colour statistics to the first window's, against the colour "
        "drift of long clips; default: on when the clip needs more than one window",
    )
    reference_mask: MaskSource | None = Field(
        None, description="'alpha', 'file' or 'auto' (SAM3, on --sam3 workers); default: 'file' when a "
        "reference_mask file is sent, else 'alpha'"
    )
    driving_mask: MaskSource | None = Field(
        None, description="'alpha', 'file' or 'auto' (SAM3, on --sam3 workers); default: 'file' when a "
        "driving_mask file is sent, else 'alpha'"
    )

    @field_validator("size")
    @classmethod
    def _check_size(cls, value: str) -> str:
        value = value.strip().lower()
        if value in NAMED_SIZES:
            return value
        match = SIZE_PATTERN.match(value)
        if not match:
            raise ValueError(f"size must be '512p', '704p' or '<W>x<H>' (e.g. '832x480'), got {value!r}")
        width, height = int(match.group(1)), int(match.group(2))
        for name, side in (("width", width), ("height", height)):
            if side % SIZE_MULTIPLE or side < MIN_SIDE:
                raise ValueError(
                    f"{name} {side} must be a multiple of {SIZE_MULTIPLE} and at least {MIN_SIDE} "
                    f"(nearest: {max(MIN_SIDE, round(side / SIZE_MULTIPLE) * SIZE_MULTIPLE)})"
                )
        return value

    @field_validator("segment_len")
    @classmethod
    def _check_segment_len(cls, value: int | None) -> int | None:
        if value is not None and (value - 1) % 4:
            lower = (value - 1) // 4 * 4 + 1
            raise ValueError(f"segment_len must be 4k+1 (e.g. {lower} or {lower + 4}), got {value}")
        return value

    @field_validator("frame_range")
    @classmethod
    def _check_frame_range(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None:
            start, end = value
            if start < 0 or end <= start:
                raise ValueError(f"frame_range must be [start, end) with 0 <= start < end, got [{start}, {end}]")
        return value

    @field_validator("loras")
    @classmethod
    def _check_loras(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is not None:
            for name, strength in value.items():
                if not -4.0 <= strength <= 4.0:
                    raise ValueError(f"LoRA {name!r} strength {strength} is outside [-4, 4]")
        return value

    @model_validator(mode="after")
    def _check_prompt(self) -> JobSpec:
        if "\x00" in self.prompt or "\x00" in self.negative_prompt:
            raise ValueError("prompts must not contain NUL characters")
        return self

    def explicit_size(self) -> tuple[int, int] | None:
        """(height, width) for a '<W>x<H>' size, None for the named sizes."""
        match = SIZE_PATTERN.match(self.size)
        return (int(match.group(2)), int(match.group(1))) if match else None


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable reason, e.g. 'invalid_field', 'unauthorized'")
    field: str | None = Field(description="'spec.<key>', a file field name, a header name, or null")
    message: str = Field(description="what is wrong and what to do about it")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class JobCreated(BaseModel):
    id: str
    status: JobStatusName
    created: bool = Field(description="false when an Idempotency-Key matched an earlier submission")
    links: dict[str, str]


class ResultInfo(BaseModel):
    frames: int
    fps: float
    width: int
    height: int
    manifest_url: str


class JobError(BaseModel):
    type: str = Field(description="'input', 'checkpoint', 'internal', 'crashed' or 'disk_full'")
    field: str | None = None
    message: str


class JobProgress(BaseModel):
    fraction: float = Field(ge=0.0, le=1.0)
    phase: str | None = Field(description="e.g. 'queued', 'decoding', 'encoding', 'denoising', 'writing'")
    window: int | None = Field(description="1-based index of the window being processed")
    num_windows: int | None
    step: int | None = Field(description="1-based denoising step within the window")
    num_steps: int | None
    eta_seconds: float | None


class JobStatus(BaseModel):
    id: str
    status: JobStatusName
    created_at: float
    started_at: float | None
    finished_at: float | None
    queue_position: int | None = Field(description="0 = next to run; only while queued")
    progress: float = Field(ge=0.0, le=1.0)
    detail: JobProgress
    cancel_requested: bool
    attempts: int = Field(description="how many times the runner started this job (>1 after a restart)")
    windows_done: int = Field(description="windows finished and stored; a restarted job resumes after them")
    error: JobError | None
    result: ResultInfo | None
    timings: dict[str, Any] | None = Field(description="once finished: seconds per phase, run_s, queued_s, "
                                           "peak_gpu_mb, resumed_windows, compiled_graphs, warmup_paid")
    spec: JobSpec
    links: dict[str, str]


class JobList(BaseModel):
    jobs: list[JobStatus]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last page")


class ResultFile(BaseModel):
    name: str
    kind: Literal["frame", "zip", "mp4"]
    size: int
    sha256: str
    url: str


class ResultManifest(BaseModel):
    job_id: str
    frames: int
    fps: float
    width: int
    height: int
    files: list[ResultFile]


class GpuInfo(BaseModel):
    name: str
    memory_total_mb: int
    memory_allocated_mb: int
    memory_reserved_mb: int


class ModelInfo(BaseModel):
    loaded: bool
    checkpoint: str
    dtype: str
    loras: list[str]


class WarmupInfo(BaseModel):
    sizes: list[str] = Field(description="'<W>x<H>:<frames>' of each warmed-up window")
    seconds: dict[str, float] = Field(description="warm-up time per --warmup entry; paid once per worker start "
                                      "and size, never per job")
    dynamic_tokens_s: float | None = Field(
        default=None, description="time to compile the block graph with a dynamic token count, which serves every "
        "token count the sizes did not warm up (a clip's shorter last window, another segment_len, extra "
        "references); null when the blocks are not compiled")
    total_s: float
    compiled_graphs: int = Field(description="graphs torch.compile built during the warm-up")


class PerformanceInfo(BaseModel):
    """The engine's performance settings as resolved at start (flags over the GPU memory class defaults)."""

    attention_backend: str = Field(description="as requested: 'auto' or a backend name")
    cross_attention_backend: str
    strided_attention: bool
    fp8_linear: bool
    compile_blocks: bool
    low_vram: bool
    offload_encoders: bool
    vae_tiling: bool
    attention_backend_resolved: str = Field(description="the self-attention kernel actually in use")
    cross_attention_backend_resolved: str
    fp8_linears: int = Field(description="linears running in fp8")
    compiled_blocks: int
    streamed_host_gib: float = Field(description="transformer weights streamed from pinned host memory")
    pinned_loras: dict[str, float] | None = Field(
        description="with fp8: the LoRA strengths fused before the conversion; jobs must ask for exactly these "
        "(422 loras_pinned otherwise). null when jobs may choose their LoRAs")
    warmup: WarmupInfo | None = Field(description="null when no warm-up ran (--warmup none, CPU default)")


class QueueInfo(BaseModel):
    queued: int
    running: int


EngineState = Literal["placing", "loading", "idle", "busy", "failed", "releasing"]


class ClusterNode(BaseModel):
    """A node of the gateway's Ray cluster."""

    id: str = Field(description="Ray node id (hex)")
    address: str = Field(description="the node's IP address")
    alive: bool
    draining: bool = Field(description="being drained (ray drain-node): takes no new jobs, releases its engines")
    gpus: float = Field(description="the node's GPUs (the gateway's --gpu-resource; 0 on a CPU-only head)")
    labels: dict[str, str] = Field(description="the node's scail-* labels (ray start --labels)")
    engines: int = Field(description="engine actors the gateway keeps on this node")
    problem: str | None = Field(description="why an engine on this node failed to start (e.g. no checkpoint)")


class EngineInfo(BaseModel):
    """One engine actor: a pipeline loaded on one GPU (or one group of --gpus-per-job GPUs) of a node."""

    name: str
    node_id: str
    node_address: str
    state: EngineState = Field(description="placing (waiting for Ray to place it), loading, idle, busy, failed, "
                               "releasing (its node drains or it sat idle)")
    gpus: int
    gpu_name: str | None
    gpu_memory_gib: float | None
    fp8: bool
    pinned_loras: dict[str, float] | None
    max_size: str | None = Field(description="largest job size this engine takes (node label scail-max-size)")
    job_id: str | None = Field(description="the job it runs while busy")
    jobs_done: int
    since: float = Field(description="Unix time of its last state change")
    load_s: float | None = Field(description="seconds it took to load the pipeline and apply the settings")
    performance: PerformanceInfo | None
    error: str | None


class ClusterQueue(BaseModel):
    queued: int
    running: int
    clients: int = Field(description="client namespaces (X-Client-Id) with queued or running jobs")
    unplaceable: int = Field(description="queued jobs no current engine can run (size or pinned LoRAs): they "
                             "wait for a node that can")


class ClusterInfo(BaseModel):
    """The gateway's view of its Ray cluster (``scail-worker serve --ray``), refreshed every few seconds."""

    address: str = Field(description="the Ray address the gateway joined")
    namespace: str = Field(description="Ray namespace of the engine actors")
    connected: bool
    gpu_resource: str = Field(description="the Ray resource one engine takes gpus_per_job of")
    gpus_per_job: int
    gpus: float = Field(description="GPUs on alive nodes")
    engines_idle: int
    engines_busy: int
    engines_loading: int
    nodes: list[ClusterNode]
    engines: list[EngineInfo]
    queue: ClusterQueue


class StorageInfo(BaseModel):
    free_mb: float = Field(description="free disk space under --data")
    min_free_mb: float = Field(description="--min-free-mb: below it submissions get 507 and no job starts")
    accepting_jobs: bool = Field(description="free_mb >= min_free_mb")
    runner_paused: str | None = Field(description="why the runner starts no job now (a full disk, a job store "
                                      "that refuses writes), or null")


class HealthPublic(BaseModel):
    status: Literal["ok"]
    version: str
    api: str
    authenticated: bool


class Health(HealthPublic):
    device: str
    gpu: GpuInfo | None
    model: ModelInfo
    queue: QueueInfo
    limits: dict[str, float]
    features: dict[str, bool]
    performance: PerformanceInfo | None = Field(
        description="resolved performance settings (docs/PERFORMANCE.md); on --gpus N workers those of rank 0")
    cluster: ClusterInfo | None = Field(
        None, description="gateway mode (--ray): nodes, GPUs, engines and the fair-share queue; null on a single "
        "machine. performance and gpu are then null: each engine reports its own")
    storage: StorageInfo | None = Field(None, description="the job store's disk and whether jobs can start")
