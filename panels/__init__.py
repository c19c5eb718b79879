"""The "SCAIL" tab in the 3D Viewport sidebar."""

from . import main

register, unregister = main.register, main.unregister
