"""Plain-Python add-on logic behind the SCAIL panel and operators (imports ``bpy``, never torch).

The extension's package is the repository root, so this package is ``<root>.addon`` and the add-on id used
for preferences is its parent package.
"""

ADDON_PACKAGE = __package__.rpartition(".")[0]
