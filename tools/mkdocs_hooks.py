"""mkdocs hooks: the README is the site's front page; the API reference lists the public names.

The reference is generated from each public module's ``__all__``, so a name added to
``plait.__all__`` appears on the site without anyone editing a page.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

#: Public modules, in the order the reference shows them; a name is listed under the first.
REFERENCE_MODULES = ("plait", "plait.callbacks")

_DOCS_LINK = re.compile(r"\]\(docs/")


def front_page(readme: str) -> str:
    """The README with its links into ``docs/`` made relative to the site's root."""
    return _DOCS_LINK.sub("](", readme)


def reference() -> str:
    """A page of mkdocstrings directives, one per public name."""
    lines = [
        "# API reference",
        "",
        "Generated from the docstrings of every name in `plait.__all__` "
        "(and the callbacks in `plait.callbacks`).",
    ]
    seen: set[int] = set()
    for module_name in REFERENCE_MODULES:
        module = importlib.import_module(module_name)
        names = [name for name in module.__all__ if not name.startswith("_")]
        entries = []
        for name in sorted(names, key=lambda name: (not name[0].isupper(), name.lower())):
            value = getattr(module, name)
            if id(value) in seen or not (isinstance(value, type) or callable(value)):
                continue
            seen.add(id(value))
            entries.append(f"::: {module_name}.{name}")
        if entries:
            lines += ["", f"## `{module_name}`", ""]
            lines += [line for entry in entries for line in (entry, "")]
    return "\n".join(lines)


def on_files(files: Files, config: Any) -> Files:
    root = Path(config.config_file_path).parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    files.append(File.generated(config, "index.md", content=front_page(readme)))
    files.append(File.generated(config, "reference.md", content=reference()))
    return files
