"""What a migration reads of the revisions before it: one that remakes or extends what an earlier
one made takes that one's statements from its module, as released, instead of a copy of them."""

import functools
import importlib.util
from pathlib import Path
from types import ModuleType

VERSIONS = Path(__file__).resolve().with_name("versions")


def revision(file_name: str) -> ModuleType:
    """An earlier revision's module, by its file name in `versions/` (which, starting with a digit,
    is no module name)."""
    spec = importlib.util.spec_from_file_location(f"_revision_{file_name[:4]}", VERSIONS / file_name)
    module = importlib.util.module_from_spec(spec)
    exec(_code(spec.origin), module.__dict__)
    return module


@functools.cache
def _code(path: str):
    """A revision's code, compiled once a process. Each call of `revision` runs it into a module of
    its own (a revision may change its copy: 0056 and 0057 do), but the revisions read each other
    hundreds of times over, and where Python writes no bytecode each read compiled the file anew."""
    with open(path, "rb") as source:
        return compile(source.read(), path, "exec")
