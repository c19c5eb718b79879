"""SCAIL Motion backend.

Importing this package must stay cheap and free of torch: Blender imports ``backend.client`` and
``backend.launcher`` (standard library + requests only). The engine lives in ``backend.scail2`` and the
GPU worker service in ``backend.worker``; only those import torch and the server stack.
"""

__version__ = "0.1.0"
