"""The command line's shared pieces: the user error reported as one line and exit status 2,
the parser, and argument types that refuse out-of-range values at parse time.

Only the standard library is imported, so that every script (grid.py and report.py included)
reports bad input the same way without loading torch or numpy."""
import argparse
import math
import sys

# np.random.seed and numpy's SeedSequence take seeds in [0, 2**32).
SEED_MAX = 2**32 - 1


class UserError(Exception):
    """A problem with what the user asked for: reported as one line, never a traceback."""


def one_line(message):
    """The message of a UserError as one line. A UserError raised inside a DataLoader worker
    comes back re-raised with the worker's whole traceback in its message: keep its last line,
    which is the original message."""
    text = str(message).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        return last.split("UserError: ", 1)[1] if "UserError: " in last else last
    return " ".join(text.split("\n"))


def exit_status(main, *args):
    """Run ``main(*args)``: its exit status (an int it returns, else 0), or 2 after printing a
    UserError as one line."""
    try:
        status = main(*args)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    return status if isinstance(status, int) else 0


def run_cli(main):
    """Run ``main()`` as a script: a UserError is one line and exit status 2, Ctrl-C exit 130."""
    try:
        status = exit_status(main)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    if status:
        sys.exit(status)


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) and defaults shown in the help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see -h)\n")


# ---- argparse types that refuse out-of-range values at parse time (one line, exit 2) -------

def int_in(lo, hi=None):
    """An argparse type: an integer in [lo, hi] (no upper bound when hi is None)."""
    span = f">= {lo}" if hi is None else f"in {lo}..{hi}"

    def parse(text):
        try:
            if not text.strip().lstrip("+-").isdigit() or not text.isascii():  # int() also reads '١' and '²'
                raise ValueError
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer {span}, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be an integer {span}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def float_above(lo, inclusive=False):
    """An argparse type: a finite float > lo (>= lo with ``inclusive``); nan and inf refused."""
    span = f"{'>=' if inclusive else '>'} {lo:g}"

    def parse(text):
        try:
            if not text.isascii():  # float() also reads other scripts' digits
                raise ValueError
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a finite number {span}, got {text!r}") from None
        if not math.isfinite(value) or value < lo or (value == lo and not inclusive):
            raise argparse.ArgumentTypeError(f"must be a finite number {span}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


seed_type = int_in(0, SEED_MAX)
