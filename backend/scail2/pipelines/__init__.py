"""Pipelines that run the models on a request: `Scail2Pipeline`, the official sampling loop over windows
(`pipeline_scail2`); `MultiProcessPipeline`, the same contract with each job split across the GPUs of a host
(`multi_process`, which launches the ranks and applies the parallel plan); and writing a result (`output`).
"""
