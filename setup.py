"""Package mapping: the repository's fixed top-level folders become one `scillm` package.

    gen/scillm  -> scillm              (generated: scillm.<domain>.v1)
    server/     -> scillm.server
    clients/    -> scillm.clients
    bridges/    -> scillm.bridges

Everything else is in pyproject.toml. The package list is derived from the folders so
that a new sub-package is never left out of the wheel (tests/packaging checks a wheel).
"""

from pathlib import Path

from setuptools import setup

ROOTS = {
    "scillm": "gen/scillm",
    "scillm.server": "server",
    "scillm.clients": "clients",
    "scillm.bridges": "bridges",
}


#: Folders of package data (no Python in them) that ship inside the package beside them.
DATA_FOLDERS = ("templates", "static")


def _packages() -> list[str]:
    found: list[str] = []
    for name, root in ROOTS.items():
        base = Path(root)
        for folder in sorted([base, *base.rglob("*")]):
            if not folder.is_dir() or "__pycache__" in folder.parts:
                continue
            if (folder == base or any(folder.glob("*.py")) or any(folder.glob("*.pyi"))
                    or folder.name in DATA_FOLDERS):
                found.append(".".join([name, *folder.relative_to(base).parts]))
    return found


setup(
    package_dir=ROOTS,
    packages=_packages(),
    package_data={"": ["py.typed", "*.pyi", "*.proto", "*.json", "*.yaml", "*.html", "*.css",
                      "*.js"]},
)
