"""harness.py - what the Python tests share: importing it skips the test
(exit 77, CTest's SKIPPED) where numpy or torch is missing and puts tools/ on
the import path; a @test registry; and a runner that runs every registered
test, reports each failure with its traceback and prints "N passed, M failed".

    from harness import run_tests, test      (before the numpy, torch and tools imports)
    @test
    def something(): assert ...
    if __name__ == "__main__": sys.exit(run_tests())
"""
import os
import sys
import traceback

try:
    import numpy  # noqa: F401
    import torch  # noqa: F401
except ImportError:
    print("torch or numpy missing: skipped")
    sys.exit(77)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))

TESTS = []


def test(function):
    TESTS.append(function)
    return function


def run_tests():
    """0 when every test passed, else 1."""
    passed = failed = 0
    for function in TESTS:
        try:
            function()
            passed += 1
        except Exception:  # noqa: BLE001 - report every failure, keep going
            failed += 1
            print(f"FAIL {function.__name__}")
            traceback.print_exc()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0
