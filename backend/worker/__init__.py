"""The SCAIL-2 worker service: FastAPI app, durable job store, GPU job runner and the ``scail-worker`` CLI.

Blender never imports this package; it talks to it over HTTP through ``backend.client``.
"""

API_VERSION = "v1"
