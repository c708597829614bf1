# mypy: disable-error-code="no-any-return"
# (bareosfd is typed as Any for mypy: its constants are Any here.)
"""fdsim's rendition of Bareos' ``BareosFdWrapper`` pyfile.

Module-level callbacks that the fd looks up by name, each forwarding to the one plugin object
that ``load_bareos_plugin`` creates from the class registered with ``@BareosPlugin``.  Plugins
do ``from BareosFdWrapper import *`` (which brings ``bareos_fd_plugin_object`` and every
callback into the plugin module's namespace) and decorate their class.
"""

from __future__ import annotations

from typing import Any, Callable, List, TypeVar

from bareosfd import bRC_OK

T = TypeVar("T")

bareos_fd_plugin_object: Any = None
PLUGIN_CLASS: Callable[[str], Any] | None = None

__all__: List[str] = ["bareos_fd_plugin_object"]


def _export(thing: T) -> T:
    __all__.append(thing.__name__)  # type: ignore[attr-defined]
    return thing


@_export
def BareosPlugin(plugin_class: T) -> T:
    """Class decorator: the class ``load_bareos_plugin`` instantiates."""
    global PLUGIN_CLASS  # noqa: PLW0603  # module-global in the real wrapper too
    PLUGIN_CLASS = plugin_class  # type: ignore[assignment]
    return plugin_class


@_export
def load_bareos_plugin(plugindef: str) -> int:
    """Create the plugin object (called once, at module load)."""
    global bareos_fd_plugin_object  # noqa: PLW0603
    if PLUGIN_CLASS is None:
        raise RuntimeError("no plugin class registered with @BareosPlugin")
    bareos_fd_plugin_object = PLUGIN_CLASS(plugindef)
    return bRC_OK


def _forward(name: str) -> Callable[..., Any]:
    def callback(*args: Any) -> Any:
        return getattr(bareos_fd_plugin_object, name)(*args)

    callback.__name__ = name
    callback.__qualname__ = name
    return _export(callback)


parse_plugin_definition = _forward("parse_plugin_definition")
handle_plugin_event = _forward("handle_plugin_event")
start_backup_file = _forward("start_backup_file")
end_backup_file = _forward("end_backup_file")
start_restore_file = _forward("start_restore_file")
end_restore_file = _forward("end_restore_file")
restore_object_data = _forward("restore_object_data")
plugin_io = _forward("plugin_io")
create_file = _forward("create_file")
set_file_attributes = _forward("set_file_attributes")
check_file = _forward("check_file")
get_acl = _forward("get_acl")
set_acl = _forward("set_acl")
get_xattr = _forward("get_xattr")
set_xattr = _forward("set_xattr")
handle_backup_file = _forward("handle_backup_file")
