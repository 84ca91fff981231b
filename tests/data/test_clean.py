"""Cleaning one document (cpt.data.clean): what becomes of Unicode forms, line ends, control characters, runs of
space characters and blank lines; cleaning twice changes nothing; the length filter."""

from __future__ import annotations

import random

from cpt.config.schema import CleanConfig, UnicodeForm
from cpt.data.clean import clean_text, length_problem


def test_what_cleaning_does():
    cfg = CleanConfig()
    assert clean_text("cafe\u0301", cfg) == "caf\u00e9"  # NFC
    assert clean_text("cafe\u0301", CleanConfig(unicode_form=UnicodeForm.none)) == "cafe\u0301"
    assert clean_text("a\r\nb\rc", cfg) == "a\nb\nc"
    assert clean_text("a\x00b\u200bc\ufeffd\x07e\tf", cfg) == "abcde f"  # controls gone, a tab is a space
    assert clean_text("one  two\t\tthree\u00a0 four \u2003\u3000five", cfg) == "one two three four five"
    assert clean_text("  indented\t\nline  \n\n\n\n\nnext\n\n", cfg) == "indented\nline\n\nnext"
    assert clean_text("\u00a0", cfg) == ""


def test_cleaning_twice_changes_nothing_and_leaves_no_run_of_spaces():
    rng = random.Random(0)
    alphabet = [" ", "\t", "\u00a0", "\u2003", "\u3000", "\n", "\r", "\r\n", "a", "b", "\x00", "\u200b", "\ufeff",
                "e\u0301"]
    cfg = CleanConfig()
    for _ in range(3000):
        once = clean_text("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))), cfg)
        assert clean_text(once, cfg) == once
        assert "  " not in once and "\n\n\n" not in once
        assert not set(once) & {"\t", "\u00a0", "\u2003", "\u3000", "\r", "\x00", "\u200b", "\ufeff"}
        assert all(line == line.strip() for line in once.split("\n"))


def test_length_filter():
    cfg = CleanConfig(min_chars=3, max_chars=5)
    assert [length_problem(t, cfg) for t in ("ab", "abc", "abcde", "abcdef")] == ["too_short", None, None, "too_long"]
