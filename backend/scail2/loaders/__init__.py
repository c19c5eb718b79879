"""Checkpoint reading: where each component lives in a folder (`layout`), safe lazy tensor reading and strict
loading onto ``meta``-built modules (`weights`), the DiT's three key spaces and their conversions (`dit_keys`), and
LoRAs fused into the DiT weights (`lora`). Knows file formats and key names, never a model class.
"""
