"""Running one SCAIL-2 job across several processes: sequence parallelism, CFG parallelism and the launcher."""

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
