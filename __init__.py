"""SCAIL Motion: SCAIL-2 motion transfer in Blender's 3D Viewport sidebar (tab "SCAIL").

A Blender extension (see ``blender_manifest.toml``); registration only. The logic is in ``addon/``, the
operators in ``operators/`` and the panels in ``panels/``. Blender-side code uses the standard library and
``requests`` only; the model runs in a separate worker process.
"""

from . import operators, panels
from .addon import jobs, preferences, properties, servers, shots

_modules = (properties, servers, preferences, shots, operators, panels, jobs)


def register() -> None:
    for module in _modules:
        module.register()


def unregister() -> None:
    from .addon.connection import LOCAL_WORKER

    for module in reversed(_modules):
        module.unregister()
    LOCAL_WORKER.stop()
