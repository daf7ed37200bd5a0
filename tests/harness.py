"""harness.py - what the Python tests share: a @test registry and a runner
that runs every registered test, reports each failure with its traceback
and prints "N passed, M failed".

    from harness import test, run_tests
    @test
    def something(): assert ...
    if __name__ == "__main__": sys.exit(run_tests())
"""
import traceback

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
