"""Sampling: the flow-matching samplers with the official sigma schedules (`samplers`) and the sampling settings
with their presets (`presets`).
"""
