"""The documentation site (mkdocs.yml, docs/) keeps up with the code, without building it
(CI runs ``mkdocs build --strict``): every public name has an API reference entry, every
reference entry names something that exists, and the guides' Python comes from README.md's
blocks, which tests/test_readme.py runs.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"

#: The modules whose public names the reference must cover (their ``__all__``).
#: ``async_jobs.models`` is a package of two modules; its own ``__all__`` counts if it has one.
MODULES = (
    "async_jobs",
    "async_jobs.events",
    "async_jobs.zoo",
    "async_jobs.metafold",
    "async_jobs.models",
    "async_jobs.models.zoo",
    "async_jobs.models.metafold",
    "async_jobs.testing",
    "async_jobs.contrib.redis",
    "async_jobs.contrib.otel",
)

#: ``::: identifier`` and the indented YAML options under it.
_DIRECTIVE = re.compile(r"^::: *(\S+)[ \t]*\n((?:[ \t]+\S.*\n?)*)", re.MULTILINE)
#: A pymdownx.snippets include of a README.md section.
_SNIPPET = re.compile(r'^-{1,}8<-{1,}\s+"README\.md:([a-z][-_0-9a-z]*)"\s*$', re.MULTILINE)


def public_names(module: ModuleType) -> list[str]:
    return list(getattr(module, "__all__", ()))


def documented(pages: list[Path]) -> set[str]:
    """The dotted names the pages document: ``::: module.Name``, and ``::: module`` with a
    ``members: [...]`` list (each ``module.member``)."""
    names: set[str] = set()
    for page in pages:
        for match in _DIRECTIVE.finditer(page.read_text(encoding="utf-8")):
            identifier, block = match.group(1), match.group(2)
            names.add(identifier)
            options = (yaml.safe_load(block) or {}).get("options", {}) if block.strip() else {}
            members = options.get("members")
            if isinstance(members, list):
                names.update(f"{identifier}.{member}" for member in members)
    return names


def reference_pages() -> list[Path]:
    return sorted(REFERENCE.glob("*.md"))


def missing_entries(modules: tuple[str, ...], pages: list[Path]) -> list[str]:
    found = documented(pages)
    missing = []
    for name in modules:
        module = importlib.import_module(name)
        missing += [f"{name}.{public}" for public in public_names(module)]
    return [name for name in missing if name not in found]


def test_every_public_name_has_a_reference_entry() -> None:
    missing = missing_entries(MODULES, reference_pages())
    assert missing == [], (
        "public names without an API reference entry (add `::: <name>` to a page under "
        f"docs/reference/): {missing}"
    )


def test_the_check_sees_a_missing_entry(tmp_path: Path) -> None:
    """A reference without one entry is reported (the check above can fail)."""
    pages = []
    for page in reference_pages():
        copy = tmp_path / page.name
        text = page.read_text(encoding="utf-8")
        copy.write_text(text.replace("::: async_jobs.Watcher\n", "::: async_jobs._watcher\n"))
        pages.append(copy)
    assert missing_entries(MODULES, pages) == ["async_jobs.Watcher"]


def test_a_members_list_documents_its_members(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("::: async_jobs.contrib.otel\n    options:\n      members: [instrument]\n")
    assert missing_entries(("async_jobs.contrib.otel",), [page]) == [
        "async_jobs.contrib.otel.Instrumentation"
    ]


def test_every_reference_entry_exists() -> None:
    """Each ``::: name`` is a module, or an attribute of one (a renamed name fails here
    before the site build does)."""
    unknown = []
    for identifier in sorted(documented(reference_pages())):
        module_name, _, attribute = identifier.rpartition(".")
        try:
            importlib.import_module(identifier)
            continue
        except ImportError:
            pass
        module = importlib.import_module(module_name)
        if not hasattr(module, attribute):
            unknown.append(identifier)
    assert unknown == []


def nav_pages(nav: object) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [page for item in nav for page in nav_pages(item)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in nav_pages(value)]
    return []


def test_the_nav_lists_every_page() -> None:
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
    listed = nav_pages(config["nav"])
    on_disk = sorted(str(page.relative_to(DOCS)) for page in DOCS.rglob("*.md"))
    assert sorted(listed) == on_disk


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda page: page.name)
def test_guide_code_is_the_readmes_tested_code(page: Path) -> None:
    """A guide shows Python only by including a README.md block (``--8<-- "README.md:name"``,
    a section between ``<!-- --8<-- [start:name] -->`` markers there), so every example on
    the site is one tests/test_readme.py runs; and every section it includes exists."""
    text = page.read_text(encoding="utf-8")
    assert "```python" not in text, f"{page.name}: include the example from README.md instead"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in _SNIPPET.findall(text):
        assert f"<!-- --8<-- [start:{name}] -->" in readme, name
        assert f"<!-- --8<-- [end:{name}] -->" in readme, name


def test_the_readme_links_to_pages_that_exist() -> None:
    """README.md links to the guides by relative path (``docs/...md``), and to nothing
    outside the repository."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\((docs/[^)#]*)(?:#[^)]*)?\)", readme)
    assert links
    assert [link for link in links if not (ROOT / link).is_file()] == []
    assert "](../" not in readme and "shared/DESIGN.md" not in readme
