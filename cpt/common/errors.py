"""How cpt's commands end on a user error: one `error: <message>` line on stderr and exit status 2, no traceback.

User errors are UserError and its subclasses, raised where the user has to fix something: a setting
(cpt.config.schema.ConfigError), an input file (PrepareError), data to prepare, a model or checkpoint path.
Anything else keeps its full traceback.

    @hydra.main(...)
    @user_errors          # below @hydra.main, or Hydra prints its traceback first
    def main(cfg): ...
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import NoReturn

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem the user fixes; the message says what is wrong and what to do. No cpt imports here, so any
    module can raise it."""


def fail(error: BaseException) -> NoReturn:
    message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    print(f"error: {message or type(error).__name__}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def user_errors(main: Callable) -> Callable:
    """`@user_errors` on a command's main: a user error ends the process with `error: <message>` and exit status 2.
    In a submitit job (a sweep's job) it is raised as is, for submitit to report it to the sweep. A plain wrapper
    (no generator, no context manager object): submitit pickles the decorated task function."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            if "SUBMITIT_EXECUTOR" in os.environ:
                raise
            fail(e)

    return wrapper
