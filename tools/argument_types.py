"""argument_types.py - argparse types shared by the Python tools (train.py,
eval.py): a value out of range is a usage error ("--steps: 0 is less than
1", exit 2) at parse time, before any data is read."""
import argparse
import math


def int_at_least(minimum):
    """An argparse type: an integer, at least minimum."""
    def parse(text):
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is less than {minimum}")
        return value
    parse.__name__ = "int"  # argparse names the type in "invalid int value"
    return parse


def float_in(low, high, what, high_included=True):
    """An argparse type: a finite float in [low, high] (or [low, high)),
    refused as "TEXT is not WHAT"."""
    def parse(text):
        value = float(text)
        if not (math.isfinite(value) and low <= value and (value <= high if high_included else value < high)):
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value
    parse.__name__ = "float"
    return parse
