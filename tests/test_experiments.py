"""test_experiments.py - tests of tools/experiments.py's handling of a saved
results JSON: its default options are those of the committed
docs/experiments/results.json, and results that a run's options or model
files do not match are kept (and the file left alone) unless --discard-stale
says to drop them.

    /usr/bin/python3 tests/test_experiments.py BUILD_DIR      (run from the repository root)

Exits 77 (skipped) without torch/numpy; prints "N passed, M failed".
"""
import json
import os
import subprocess
import sys
import tempfile

from harness import run_tests, test  # skips without numpy/torch; tools/ on the path

import experiments  # noqa: E402

COMMITTED = "docs/experiments/results.json"
HASHES = {"fpdm": "f" * 64, "dit": "d" * 64}


def saved_results(per_class=20):
    _, args = experiments.parse_arguments(["--per-class", str(per_class)])
    results = {name: {"spec": {"model": model}, "model_sha256": HASHES[model]}
               for name, model in (("fpdm-20x1", "fpdm"), ("fpdm-20x2", "fpdm"), ("dit-3", "dit"))}
    return {"config": experiments.run_config(args), "results": results}


def expect_refusal(saved, config, hashes, *words):
    try:
        experiments.kept_results(saved, config, hashes, discard_stale=False)
    except ValueError as error:
        assert all(word in str(error) for word in words), error
        return
    raise AssertionError("stale results were dropped without --discard-stale")


@test
def default_options_are_the_committed_results_options():
    """The docstring's real-run command (no options) resumes the committed results."""
    _, args = experiments.parse_arguments(["--build", "build"])
    with open(COMMITTED) as source:
        committed = json.load(source)
    assert experiments.run_config(args) == committed["config"], (experiments.run_config(args), committed["config"])


@test
def matching_results_are_kept():
    saved = saved_results()
    kept = experiments.kept_results(saved, saved["config"], HASHES, discard_stale=False)
    assert kept == saved["results"], kept
    # --full only adds settings: the others stay valid.
    assert experiments.kept_results(saved, dict(saved["config"], full=True), HASHES, False) == saved["results"]


@test
def other_options_are_refused_unless_discarding():
    saved = saved_results(per_class=20)
    config = saved_results(per_class=30)["config"]
    expect_refusal(saved, config, HASHES, "3 of its 3 results", "per_class 20 (this run: 30)", "--discard-stale")
    assert experiments.kept_results(saved, config, HASHES, discard_stale=True) == {}


@test
def a_changed_model_file_is_refused_unless_discarding():
    saved = saved_results()
    hashes = dict(HASHES, fpdm="0" * 64)
    expect_refusal(saved, saved["config"], hashes, "2 of its 3 results", "fpdm model file")
    kept = experiments.kept_results(saved, saved["config"], hashes, discard_stale=True)
    assert list(kept) == ["dit-3"], kept


@test
def the_command_refuses_before_writing():
    """A run with other options exits 2 before any sampling and leaves the
    results file as it was."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "results.json")
        with open(COMMITTED) as source:
            committed = source.read()
        with open(path, "w") as sink:
            sink.write(committed)
        command = [sys.executable, "tools/experiments.py", "--build", os.path.join(folder, "no-build"),
                   "--work", os.path.join(folder, "work"), "--results", path, "--per-class", "30"]
        run = subprocess.run(command, capture_output=True, text=True)
        assert run.returncode == 2, (run.returncode, run.stderr)
        assert "per_class 20 (this run: 30)" in run.stderr and "Traceback" not in run.stderr, run.stderr
        with open(path) as source:
            assert source.read() == committed
        assert not os.path.exists(os.path.join(folder, "tables.md"))


@test
def plot_only_without_results_says_so():
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "none.json")
        run = subprocess.run([sys.executable, "tools/experiments.py", "--plot-only", "--results", path],
                             capture_output=True, text=True)
        assert run.returncode == 2 and f"no results in {path}" in run.stderr, (run.returncode, run.stderr)


@test
def paths_are_read_from_the_callers_folder():
    """Relative paths name files where the command ran, not in the repository
    (whose folder the tool works from): a results file there is the one read,
    and refused here, untouched; bad counts and unknown settings are usage
    errors."""
    tools = os.path.abspath("tools/experiments.py")
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "mine.json"), "w") as sink:
            sink.write("{broken")
        run = subprocess.run([sys.executable, tools, "--plot-only", "--results", "mine.json"], cwd=folder,
                             capture_output=True, text=True)
        assert run.returncode == 1 and "mine.json: not a readable results JSON" in run.stderr, run.stderr
        assert not os.path.exists("mine.json") and not os.path.exists("tables.md")
        run = subprocess.run([sys.executable, tools, "--quick", "--build", "nosuch", "--work", folder], cwd=folder,
                             capture_output=True, text=True)
        assert run.returncode == 1 and f"{folder}/nosuch/fpdm-sample: no such program" in run.stderr, run.stderr
        run = subprocess.run([sys.executable, tools, "--build", "build-lead", "--fpdm", "nosuch.safetensors",
                              "--work", folder, "--results", os.path.join(folder, "r.json")], cwd=folder,
                             capture_output=True, text=True)
        assert run.returncode == 1 and "--fpdm" in run.stderr and "no such model file" in run.stderr, run.stderr
        for flags, message in ((["--per-class", "0"], "--per-class: 0 is less than 1"),
                               (["--only", "nosuch"], "--only: no setting named nosuch")):
            run = subprocess.run([sys.executable, tools, "--results", os.path.join(folder, "x.json"),
                                  "--work", folder, *flags], capture_output=True, text=True)
            assert run.returncode == 2 and message in run.stderr, (flags, run.returncode, run.stderr)


if __name__ == "__main__":
    sys.exit(run_tests())
