"""The attention monitor lives in `attnres.attention.monitor` (training uses it, so it sits
below training in the import order); this name is kept for existing imports."""

from ..attention.monitor import *  # noqa: F401,F403
from ..attention.monitor import __all__  # noqa: F401
