"""What a migration reads of the revisions before it: one that remakes or extends what an earlier
one made takes that one's statements from its module, as released, instead of a copy of them."""

import importlib.util
from pathlib import Path
from types import ModuleType

VERSIONS = Path(__file__).resolve().with_name("versions")


def revision(file_name: str) -> ModuleType:
    """An earlier revision's module, by its file name in `versions/` (which, starting with a digit,
    is no module name)."""
    spec = importlib.util.spec_from_file_location(f"_revision_{file_name[:4]}", VERSIONS / file_name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
