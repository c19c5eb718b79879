"""Splitting the DiT's forwards across several processes: sequence parallelism, CFG parallelism, their runtime.

Whoever launches the ranks applies the plan to the model it loaded (`parallelize_transformer`, or
`parallelize_from_environment` under torchrun); `pipelines.multi_process` is the launcher the worker uses.
"""

from .apply import ParallelTransformer, parallelize_from_environment, parallelize_transformer
from .cfg import CfgParallel, enable_cfg_parallel
from .runtime import (
    NVLINK_MULTICAST_OFF,
    ParallelRuntime,
    current_runtime,
    disable_nvlink_multicast,
    init_parallel,
    launched_distributed,
    single_process_runtime,
)
from .sequence import SequenceParallel, SequenceShard, UlyssesAttnProcessor, enable_sequence_parallel

__all__ = [
    "NVLINK_MULTICAST_OFF",
    "CfgParallel",
    "ParallelRuntime",
    "ParallelTransformer",
    "SequenceParallel",
    "SequenceShard",
    "UlyssesAttnProcessor",
    "current_runtime",
    "disable_nvlink_multicast",
    "enable_cfg_parallel",
    "enable_sequence_parallel",
    "init_parallel",
    "launched_distributed",
    "parallelize_from_environment",
    "parallelize_transformer",
    "single_process_runtime",
]
