"""Error reporting shared by the operators."""

from __future__ import annotations

from collections.abc import Callable

from ..addon.connection import BackendUnavailable
from ..addon.driving import DrivingInputError
from ..addon.identities import IdentityError
from ..addon.importing import ImportError_
from ..addon.masks import MaskPreviewError
from ..addon.render import RenderInputError
from ..addon.spec import SpecError
from ..addon.workflow import WorkflowError

USER_ERRORS = (BackendUnavailable, DrivingInputError, IdentityError, ImportError_, MaskPreviewError,
               RenderInputError, SpecError, WorkflowError, OSError)


def report_errors(operator, action: Callable[[], set[str]]) -> set[str]:
    """Run ``action``; turn errors a user can fix into an operator error report instead of a traceback."""
    try:
        return action()
    except USER_ERRORS as error:
        operator.report({"ERROR"}, str(error))
        return {"CANCELLED"}


def register_factory(classes):
    import bpy

    return bpy.utils.register_classes_factory(classes)
