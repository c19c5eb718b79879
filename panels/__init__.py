"""The "SCAIL" tab in the 3D Viewport sidebar."""

from . import main, shots

_modules = (main, shots)  # shots' panel is a child of main's


def register() -> None:
    for module in _modules:
        module.register()


def unregister() -> None:
    for module in reversed(_modules):
        module.unregister()
