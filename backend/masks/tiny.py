"""A tiny, randomly initialised SAM3 folder in the ``facebook/sam3`` layout, for tests and the CPU demo.

Same files as the real download (``config.json``, ``model.safetensors``, ``processor_config.json``, CLIP
tokenizer files), only small: 112-pixel input, 128-wide layers, a byte-level tokenizer without merges. Its
detection thresholds are 0 so the untrained model still reports objects and every post-processing step runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

IMAGE_SIZE = 112
PATCH_SIZE = 14
HIDDEN = 128  # the tracker splits object pointers into 64-wide memory tokens, so this must exceed 64
FFN = 128


def _tiny_tokenizer():
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for symbol in sorted(ByteLevel.alphabet()):
            vocab[symbol + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def _tiny_config(vocab_size: int):
    from transformers import Sam3VideoConfig

    grid = IMAGE_SIZE // PATCH_SIZE
    vision = {
        "model_type": "sam3_vision_model",
        "backbone_config": {
            "model_type": "sam3_vit_model",
            "hidden_size": HIDDEN,
            "intermediate_size": FFN,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
            "window_size": grid // 2,
            "global_attn_indexes": [1],
            "pretrain_image_size": IMAGE_SIZE,
        },
        "fpn_hidden_size": HIDDEN,
        "backbone_feature_sizes": [[4 * grid, 4 * grid], [2 * grid, 2 * grid], [grid, grid]],
    }
    small = {"hidden_size": HIDDEN, "num_layers": 1, "num_attention_heads": 2, "intermediate_size": FFN}
    detector = {
        "model_type": "sam3",
        "vision_config": vision,
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": vocab_size,
            "hidden_size": HIDDEN,
            "intermediate_size": FFN,
            "projection_dim": HIDDEN,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        "geometry_encoder_config": dict(small),
        "detr_encoder_config": dict(small),
        "detr_decoder_config": {**small, "num_queries": 2},
        "mask_decoder_config": {"hidden_size": HIDDEN, "num_attention_heads": 2},
    }
    tracker = {
        "model_type": "sam3_tracker_video",
        "vision_config": vision,
        "prompt_encoder_config": {"hidden_size": HIDDEN, "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE},
        "mask_decoder_config": {
            "hidden_size": HIDDEN,
            "mlp_dim": FFN,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": HIDDEN,
        },
        "memory_attention_hidden_size": HIDDEN,
        "memory_attention_num_layers": 1,
        "memory_attention_feed_forward_hidden_size": FFN,
        "memory_attention_rope_feat_sizes": [grid, grid],
        "memory_encoder_hidden_size": HIDDEN,
        "memory_encoder_output_channels": 64,
        "mask_downsampler_embed_dim": HIDDEN,
        "memory_fuser_embed_dim": HIDDEN,
        "memory_fuser_intermediate_dim": FFN,
        "image_size": IMAGE_SIZE,
    }
    return Sam3VideoConfig(
        detector_config=detector,
        tracker_config=tracker,
        low_res_mask_size=4 * grid,
        score_threshold_detection=0.0,
        new_det_thresh=0.0,
        max_num_objects=3,
    )


def _processor_config() -> dict:
    preprocessing = {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "resample": 2,
        "rescale_factor": 1 / 255,
        "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    }
    return {
        "processor_class": "Sam3VideoProcessor",
        "target_size": IMAGE_SIZE,
        "image_processor": {
            **preprocessing,
            "image_processor_type": "Sam3ImageProcessor",
            "mask_size": {"height": 4 * IMAGE_SIZE // PATCH_SIZE, "width": 4 * IMAGE_SIZE // PATCH_SIZE},
        },
        "video_processor": {**preprocessing, "video_processor_type": "Sam2VideoVideoProcessor"},
    }


def write_tiny_sam3(folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny SAM3 folder (weights from ``seed``) and return its path."""
    from transformers import Sam3VideoModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _tiny_tokenizer()
    torch.manual_seed(seed)
    model = Sam3VideoModel(_tiny_config(vocab_size=len(tokenizer)))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "processor_config.json").write_text(json.dumps(_processor_config(), indent=2))
    return folder
