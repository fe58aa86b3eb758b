"""cli.py: the one-line user error, and argument types that take ASCII digits in range."""
import argparse

import pytest

import cli
from cli import SEED_MAX, UserError, float_above, int_in, seed_type


@pytest.mark.parametrize("text", ["١", "²", "٣٤", "1٢", "x", "", "1.0"])
def test_an_integer_flag_refuses_what_is_not_ascii_digits(text):
    with pytest.raises(argparse.ArgumentTypeError, match="expected an integer"):
        int_in(0)(text)


@pytest.mark.parametrize("text, value", [("5", 5), ("+5", 5), (" 7 ", 7), ("0", 0)])
def test_an_integer_flag_reads_ascii_digits(text, value):
    assert int_in(0)(text) == value


def test_an_integer_flag_refuses_values_out_of_range():
    with pytest.raises(argparse.ArgumentTypeError, match="in 1..3"):
        int_in(1, 3)("4")
    assert seed_type(str(SEED_MAX)) == SEED_MAX
    with pytest.raises(argparse.ArgumentTypeError):
        seed_type(str(SEED_MAX + 1))


@pytest.mark.parametrize("text", ["١.٥", "nan", "inf", "0", "-1"])
def test_a_number_flag_refuses_other_digits_and_non_finite_or_low_values(text):
    with pytest.raises(argparse.ArgumentTypeError):
        float_above(0)(text)


def test_a_number_flag_reads_plain_numbers():
    assert float_above(0)("1e-3") == 0.001 and float_above(0, inclusive=True)("0") == 0.0


def test_cli_gives_one_line_for_a_worker_wrapped_user_error():
    wrapped = UserError("Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                        '  File "x.py", line 1, in f\n    raise UserError("bad")\ncli.UserError: cannot decode image a.jpg')
    assert cli.one_line(wrapped) == "cannot decode image a.jpg"
    assert cli.one_line(UserError("two\nlines")) == "two lines"
