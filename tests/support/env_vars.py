"""The environment variables the worker's code reads, found in its source (the entry points and ``f5worker/``)."""

from __future__ import annotations

import re

from tests.support.paths import ROOT

# os.environ.get("X"), env.get("X"), getenv("X"), env.setdefault("X", ...), os.environ["X"], and
# helper(env, "X", ...): every way the code reads a variable, including the local ``get("X")`` helper in
# storage.BucketSettings and the parsers in settings.py, which take the environment, then the name.
READ = re.compile(r"""(?:\bget|\bgetenv|\bsetdefault)\(\s*["']([A-Z][A-Z0-9_]*)["']"""
                  r"""|environ\[\s*["']([A-Z][A-Z0-9_]*)["']\]"""
                  r"""|\(\s*env\s*,\s*["']([A-Z][A-Z0-9_]*)["']""")


def env_vars_read_by_code() -> set[str]:
    names = set()
    for path in [*ROOT.glob("*.py"), *ROOT.glob("f5worker/*.py")]:
        for match in READ.finditer(path.read_text()):
            names.add(match[1] or match[2] or match[3])
    return names
