"""Gateway mode: the worker's HTTP API and job store in front of a Ray cluster (``scail-worker serve --ray``).

- ``scheduling``: which queued job an engine takes next (fair share across clients, what each engine can run).
- ``messages``: what an engine streams back while it runs a job.
- ``engine_actor``: the Ray actor that holds one pipeline on one GPU (or GPU group) of a node.
- ``dispatcher``: the gateway's side: places engines on the nodes, hands them jobs, persists what comes back.

Only ``scail-worker serve --ray`` imports this package; ``ray`` is the optional ``cluster`` extra and a
single-machine worker never imports it. See docs/CLUSTER.md.
"""
