"""Thin operators over ``addon/``: each catches the errors a user can fix and reports them."""

from . import backend, batch, driving, generate, jobs, masks, reference

modules = (reference, driving, masks, generate, jobs, backend, batch)


def register() -> None:
    for module in modules:
        module.register()


def unregister() -> None:
    for module in reversed(modules):
        module.unregister()
