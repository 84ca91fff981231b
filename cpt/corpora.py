"""`python -m cpt.corpora`: fetch the offline corpora (cpt.assets.corpora) into their cache and print where they are."""

from __future__ import annotations

import sys

from cpt.assets.corpora import cache_root, corpus_path, fetch_licenses, fetch_shakespeare


def main() -> None:
    cache_root().mkdir(parents=True, exist_ok=True)
    print("licenses   ", fetch_licenses())
    print("shakespeare", fetch_shakespeare())
    if corpus_path("r-manuals").is_dir():
        print("r-manuals  ", corpus_path("r-manuals"))
    else:
        print("r-manuals   missing: apt-get install r-doc-pdf", file=sys.stderr)
    if corpus_path("postgresql-html").is_dir():
        print("postgresql-html", corpus_path("postgresql-html"))
    else:
        print("postgresql-html missing: apt-get install postgresql-doc-15", file=sys.stderr)


if __name__ == "__main__":
    main()
