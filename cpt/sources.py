"""`python -m cpt.sources`: build every offline model source (cpt.assets.models) once and print where it is."""

from __future__ import annotations

import logging

from cpt.assets.models import SOURCES, source_path


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in SOURCES:
        print(f"{name:18s}", source_path(name))


if __name__ == "__main__":
    main()
