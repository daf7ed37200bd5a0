"""test_eval.py - tests of tools/mnist.py (IDX reading, model-space digits) and
tools/eval.py (Frechet distance, nearest-neighbour distances, PNG folders,
labels, the score report) on tiny made-up data; and its command line: the
files `sample` writes, what `score` refuses, --data after the command, and
the bad values and files each command refuses (one line, exit 2 or 1) before
any work (most run eval.main in this process: a subprocess costs a second).

    /usr/bin/python3 tests/test_eval.py BUILD_DIR      (run from the repository root)

Exits 77 (skipped) without torch/numpy; prints "N passed, M failed".
"""
import contextlib
import gzip
import io
import os
import struct
import subprocess
import sys
import tempfile

from harness import run_tests, test  # skips without numpy/torch; tools/ on the path

import numpy as np  # noqa: E402
import torch  # noqa: E402

import eval as evaluation  # noqa: E402
import mnist  # noqa: E402



def idx_bytes(array, type_code):
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write(path, data):
    with open(path, "wb") as out:
        out.write(data)


def expect_error(function, *args):
    try:
        function(*args)
    except (ValueError, FileNotFoundError):
        return
    raise AssertionError(f"{function.__name__}{args!r:.80} did not fail")


@test
def idx_plain_and_gzipped_read_the_same():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    with tempfile.TemporaryDirectory() as folder:
        write(os.path.join(folder, "plain"), idx_bytes(images, 0x08))
        write(os.path.join(folder, "packed"), gzip.compress(idx_bytes(images, 0x08)))
        for name in ("plain", "packed"):
            got = mnist.read_idx(os.path.join(folder, name))
            assert got.shape == (2, 3, 4) and got.dtype == np.uint8, (got.shape, got.dtype)
            assert (got == images).all()


@test
def idx_big_endian_int32_is_converted():
    values = np.array([1, -2, 70000], dtype=">i4")
    got = mnist.parse_idx(idx_bytes(values, 0x0C))
    assert got.tolist() == [1, -2, 70000], got


@test
def idx_rejects_bad_files():
    good = idx_bytes(np.zeros((2, 2), dtype=np.uint8), 0x08)
    expect_error(mnist.parse_idx, b"\x01" + good[1:])          # magic
    expect_error(mnist.parse_idx, good[:2] + b"\x07" + good[3:])  # type code
    expect_error(mnist.parse_idx, good[:-1])                    # body too short
    expect_error(mnist.parse_idx, good + b"\x00")               # body too long
    expect_error(mnist.parse_idx, good[:6])                     # header cut


@test
def load_split_pairs_files_and_checks_labels():
    images = np.full((3, 28, 28), 255, dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        write(os.path.join(folder, "t10k-images-idx3-ubyte"), idx_bytes(images, 0x08))
        write(os.path.join(folder, "t10k-labels-idx1-ubyte.gz"),
              gzip.compress(idx_bytes(np.array([0, 9, 4], dtype=np.uint8), 0x08)))
        got_images, got_labels, paths = mnist.load_split(folder, "t10k")
        assert got_images.shape == (3, 28, 28) and got_labels.tolist() == [0, 9, 4]
        assert paths[1].endswith(".gz")
        write(os.path.join(folder, "t10k-labels-idx1-ubyte.gz"),
              gzip.compress(idx_bytes(np.array([0, 9], dtype=np.uint8), 0x08)))
        expect_error(mnist.load_split, folder, "t10k")
        expect_error(mnist.load_split, folder, "train")


@test
def model_space_pads_with_background_and_scales():
    images = np.zeros((1, 28, 28), dtype=np.uint8)
    images[0, 0, 0] = 255
    images[0, 27, 27] = 51
    x = mnist.to_model_space(images)
    assert x.shape == (1, 1, 32, 32) and x.dtype == np.float32
    assert x[0, 0, 2, 2] == 1.0 and abs(x[0, 0, 29, 29] - (51 / 127.5 - 1)) < 1e-6
    assert x[0, 0, 0, 0] == -1.0 and x[0, 0, 31, 31] == -1.0 and x[0, 0, 3, 3] == -1.0


@test
def frechet_of_identical_sets_is_zero_and_of_shifted_sets_is_the_shift():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(400, 5))
    assert abs(evaluation.frechet_distance(a, a)) < 1e-8
    shift = np.array([3.0, 0.0, -1.0, 0.0, 0.5])
    # Same covariance: only the squared mean difference remains.
    assert abs(evaluation.frechet_distance(a, a + shift) - (shift ** 2).sum()) < 1e-8


@test
def frechet_of_scaled_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(20000, 3))
    a = (a - a.mean(0)) @ np.linalg.inv(np.linalg.cholesky(np.cov(a, rowvar=False))).T  # covariance exactly I
    # Covariances I and 4I, equal means: 3 * (1 + 4 - 2 * 2) = 3.
    assert abs(evaluation.frechet_distance(a, 2.0 * a) - 3.0) < 1e-6


@test
def nearest_distances_find_copies_and_exact_distances():
    references = np.zeros((3, 1, 2, 2), dtype=np.float32)
    references[1] += 1.0
    references[2] -= 2.0
    queries = np.stack([references[1], references[0] + 0.5])
    got = evaluation.nearest_distances(queries, references, chunk=1)
    assert np.allclose(got, [0.0, 1.0]), got  # sqrt(4 * 0.25) = 1


@test
def labels_come_from_lists_and_files():
    assert evaluation.parse_labels("3,1,4", 3).tolist() == [3, 1, 4]
    with tempfile.TemporaryDirectory() as folder:
        text = os.path.join(folder, "labels.txt")
        write(text, b"1 5\n9")
        assert evaluation.parse_labels(text, 3).tolist() == [1, 5, 9]
        npy = os.path.join(folder, "labels.npy")
        np.save(npy, np.array([2, 7]))
        assert evaluation.parse_labels(npy, 2).tolist() == [2, 7]
        archive = os.path.join(folder, "archive.npy")
        with open(archive, "wb") as sink:
            np.savez(sink, labels=np.array([2, 7]))
        expect_error(evaluation.parse_labels, archive, 2)
    expect_error(evaluation.parse_labels, "1,2", 3)


@test
def png_folder_reads_in_index_order_with_classes():
    from PIL import Image
    with tempfile.TemporaryDirectory() as folder:
        for index, label, value in ((1, 7, 255), (0, 3, 0)):
            Image.fromarray(np.full((32, 32), value, dtype=np.uint8)).save(
                os.path.join(folder, f"{index:05d}-{label}.png"))
        write(os.path.join(folder, "notes.txt"), b"not an image")
        images, labels = evaluation.load_png_folder(folder)
        assert labels.tolist() == [3, 7], labels
        assert images.shape == (2, 1, 32, 32)
        assert (images[0] == -1.0).all() and (images[1] == 1.0).all()


@test
def score_reports_accuracy_and_memorisation():
    torch.manual_seed(0)
    classifier = evaluation.DigitClassifier().eval()
    rng = np.random.default_rng(3)
    train = rng.uniform(-1, 1, size=(12, 1, 32, 32)).astype(np.float32)
    t10k = rng.uniform(-1, 1, size=(6, 1, 32, 32)).astype(np.float32)
    generated = train[:4].copy()
    predicted = evaluation.predict(classifier, generated)[0].argmax(1)
    labels = predicted.copy()
    labels[0] = (labels[0] + 1) % 10  # one of four asked for another class
    report = evaluation.score(generated, labels, classifier, train, t10k)
    assert report["count"] == 4
    assert abs(report["class_accuracy"] - 0.75) < 1e-12, report
    assert report["nearest_train_l2_generated_mean"] < 1e-3, report  # exact copies
    assert report["nearest_train_l2_t10k_mean"] > 1.0 and report["nearest_train_l2_ratio"] < 1e-3
    assert np.isfinite(report["frechet_distance"]) and report["frechet_distance"] >= -1e-6


@test
def classifier_file_round_trips():
    torch.manual_seed(0)
    net = evaluation.DigitClassifier().eval()
    x = torch.randn(3, 1, 32, 32)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "c.safetensors")
        evaluation.save_classifier(net, path, {"classifier.seed": "0"})
        loaded, metadata = evaluation.load_classifier(path)
    assert metadata["classifier.seed"] == "0"
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))


def run_eval(*argv):
    return subprocess.run([sys.executable, "tools/eval.py", *argv], capture_output=True, text=True)


def write_pngs(folder, count):
    from PIL import Image
    for index in range(count):
        Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(os.path.join(folder, f"{index:05d}-{index % 10}.png"))


@test
def score_refuses_too_few_images_before_reading_the_data():
    with tempfile.TemporaryDirectory() as folder:
        write_pngs(folder, 1)
        run = run_eval("score", folder, "--data", os.path.join(folder, "no-data"))
        assert run.returncode == 1 and "Traceback" not in run.stderr, (run.returncode, run.stderr)
        assert "1 image(s) to score; the Frechet distance needs at least 2" in run.stderr, run.stderr


@test
def data_is_taken_before_and_after_the_command():
    """The MNIST folder is read from --data wherever it stands (a missing one says so)."""
    with tempfile.TemporaryDirectory() as folder:
        write_pngs(folder, 2)
        missing = os.path.join(folder, "no-data")
        for argv in (("--data", missing, "score", folder), ("score", folder, "--data", missing)):
            run = run_eval(*argv)
            expected = f"eval.py: no train-images-idx3-ubyte[.gz] in {missing}"
            assert run.returncode == 1 and run.stderr.strip() == expected, (argv, run.returncode, run.stderr)


@test
def sample_names_the_files_it_writes():
    """np.save adds .npy to a name without it: the message and the labels
    file follow the images file, also for a name with dots."""
    assert evaluation.npy_paths("/x/run.npy") == ("/x/run.npy", "/x/run-labels.npy")
    assert evaluation.npy_paths("/x/run.v2") == ("/x/run.v2.npy", "/x/run.v2-labels.npy")
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "digits")
        run = run_eval("sample", "models/dit-mnist.safetensors", "--out", out, "--steps", "1", "--per-class", "1")
        assert run.returncode == 0, run.stderr
        assert f"wrote {out}.npy and {out}-labels.npy" in run.stdout, run.stdout
        assert sorted(os.listdir(folder)) == ["digits-labels.npy", "digits.npy"], os.listdir(folder)
        assert np.load(out + ".npy").shape == (10, 1, 32, 32)
        assert np.load(out + "-labels.npy").tolist() == list(range(10))
        # A folder of the --out name (fpdm-sample's, say) is no obstacle: the
        # files are NAME.npy and NAME-labels.npy beside it.
        os.remove(out + ".npy")
        os.mkdir(out)
        run = run_eval("sample", "models/dit-mnist.safetensors", "--out", out, "--steps", "1", "--per-class", "1")
        assert run.returncode == 0 and os.path.isfile(out + ".npy"), run.stderr


def run_main(*argv):
    """eval.main(argv) in this process (a subprocess costs a second of torch
    import each), as the interpreter would end it: (returncode, stderr)."""
    stderr = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            evaluation.main(list(argv))
        except SystemExit as error:
            if isinstance(error.code, str):
                print(error.code, file=sys.stderr)
                code = 1
            else:
                code = error.code or 0
    return subprocess.CompletedProcess(argv, code, "", stderr.getvalue())


def assert_refused(run, code, text):
    """Exit `code`, no traceback, `text` in stderr; a file problem (1) says so in one line."""
    assert run.returncode == code and "Traceback" not in run.stderr, (code, run.returncode, run.stderr)
    assert text in run.stderr, (text, run.stderr)
    if code == 1:
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr


MODEL = "models/dit-mnist.safetensors"


@test
def sample_refuses_bad_values_before_sampling():
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "digits")
        cases = (
            (("--out", os.path.join(folder, "no-folder", "x"), "--steps", "1", "--per-class", "1"),
             f"folder {os.path.join(folder, 'no-folder')} does not exist"),
            (("--out", folder + os.sep, "--steps", "1", "--per-class", "1"), "names a folder"),
            (("--out", out, "--steps", "0"), "argument --steps: 0 is less than 1"),
            (("--out", out, "--steps", "-1"), "argument --steps: -1 is less than 1"),
            (("--out", out, "--steps", "2000", "--per-class", "1"),
             "argument --steps: 2000 is more than the model's 1000 training timesteps"),
            (("--out", out, "--per-class", "0"), "argument --per-class: 0 is less than 1"),
            (("--out", out, "--cfg", "nan"), "argument --cfg: nan is not a guidance scale"),
            (("--out", out, "--cfg", "inf"), "argument --cfg: inf is not a guidance scale"),
            (("--out", out, "--cfg", "0.5"), "argument --cfg: 0.5 is not a guidance scale"),
            (("--out", out, "--threads", "0"), "argument --threads: 0 is less than 1"),
        )
        for argv, text in cases:
            assert_refused(run_main("sample", MODEL, *argv), 2, text)
        assert os.listdir(folder) == [], os.listdir(folder)


@test
def sample_names_a_model_file_it_cannot_use():
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = os.path.join(folder, "model.pt")
        torch.save({"model": {"w": torch.zeros(2)}}, checkpoint)
        missing = os.path.join(folder, "missing.safetensors")
        out = os.path.join(folder, "digits")
        cases = ((missing, f"eval.py: {missing}: No such file or directory"),
                 (checkpoint, f"eval.py: {checkpoint}: not a DiT/FPDM safetensors model"),
                 ("models/digit-classifier.safetensors",
                  "eval.py: models/digit-classifier.safetensors: not a DiT/FPDM safetensors model"))
        for model, text in cases:
            assert_refused(run_main("sample", model, "--out", out, "--steps", "1", "--per-class", "1"), 1, text)
        assert sorted(os.listdir(folder)) == ["model.pt"], os.listdir(folder)


@test
def train_classifier_refuses_bad_values_before_training():
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "c.safetensors")
        cases = ((("--out", os.path.join(folder, "no-folder", "c.safetensors")), "does not exist"),
                 (("--out", folder), "is a folder"),
                 (("--out", out, "--epochs", "0"), "argument --epochs: 0 is less than 1"),
                 (("--out", out, "--epochs", "-3"), "argument --epochs: -3 is less than 1"))
        for argv, text in cases:
            assert_refused(run_main("train-classifier", *argv), 2, text)
        missing = os.path.join(folder, "no-data")
        assert_refused(run_main("train-classifier", "--out", out, "--epochs", "1", "--data", missing), 1,
                       f"eval.py: no train-images-idx3-ubyte[.gz] in {missing}")
        assert os.listdir(folder) == [], os.listdir(folder)


@test
def outputs_are_written_whole():
    """A writer that fails leaves the old file and no temporary; one that
    works replaces the file, with the mode a plainly created one gets."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "c.safetensors")
        write(path, b"old")

        def fail(temp):
            write(temp, b"half")
            raise OSError(28, "No space left on device")
        try:
            evaluation.write_whole([(path, fail)])
            raise AssertionError("write_whole did not fail")
        except OSError:
            pass
        assert sorted(os.listdir(folder)) == ["c.safetensors"], os.listdir(folder)
        assert open(path, "rb").read() == b"old"
        evaluation.save_classifier(evaluation.DigitClassifier(), path, {})
        assert sorted(os.listdir(folder)) == ["c.safetensors"], os.listdir(folder)
        evaluation.load_classifier(path)
        umask = os.umask(0)
        os.umask(umask)
        assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask, oct(os.stat(path).st_mode)
        # A link is written through: it keeps naming the file, which is new.
        link = os.path.join(folder, "link.safetensors")
        os.symlink("c.safetensors", link)
        evaluation.write_whole([(link, lambda temp: write(temp, b"through"))])
        assert os.path.islink(link) and open(path, "rb").read() == b"through"


@test
def score_names_a_classifier_it_cannot_use():
    with tempfile.TemporaryDirectory() as folder:
        write_pngs(folder, 2)
        checkpoint = os.path.join(folder, "c.pt")
        torch.save({"w": torch.zeros(2)}, checkpoint)
        cases = (("models/fpdm-mnist.safetensors",
                  "eval.py: models/fpdm-mnist.safetensors: not a digit classifier (10 of its 10 tensors missing"),
                 (checkpoint, f"eval.py: {checkpoint}: not a safetensors classifier"))
        for classifier, text in cases:
            assert_refused(run_main("score", folder, "--classifier", classifier), 1, text)


@test
def score_refuses_non_finite_images():
    with tempfile.TemporaryDirectory() as folder:
        images = np.zeros((20, 1, 32, 32), dtype=np.float32)
        images[3, 0, 5, 5] = np.nan
        images[7, 0, 0, 0] = np.inf
        path = os.path.join(folder, "x.npy")
        np.save(path, images)
        labels = ",".join(str(i % 10) for i in range(20))
        assert_refused(run_eval("score", path, "--labels", labels), 1,  # the command itself, once
                       f"eval.py: {path}: 2 of 20 images hold non-finite values "
                       "(NaN or infinity; the first is image 3)")


@test
def score_refuses_pngs_it_would_misread():
    from PIL import Image
    cases = (("16x16", np.zeros((16, 16), dtype=np.uint8), "00001-1.png", "16x16 pixels; accepted: 28x28 or 32x32"),
             ("16-bit", np.zeros((32, 32), dtype=np.uint16), "00001-1.png", "a 16-bit grayscale PNG"),
             ("mixed", np.zeros((28, 28), dtype=np.uint8), "00001-1.png", "28x28 pixels, but"),
             ("class", np.zeros((32, 32), dtype=np.uint8), "00001-19.png", "class 19 in the name is outside 0..9"))
    for what, pixels, name, text in cases:
        with tempfile.TemporaryDirectory() as folder:
            write_pngs(folder, 1)
            Image.fromarray(pixels).save(os.path.join(folder, name))
            Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(os.path.join(folder, "00002-2.png"))
            assert_refused(run_main("score", folder), 1, f"eval.py: {os.path.join(folder, name)}: {text}")
    with tempfile.TemporaryDirectory() as folder:  # 28x28 throughout is MNIST's own size: read
        for index in range(2):
            Image.fromarray(np.full((28, 28), 255, dtype=np.uint8)).save(os.path.join(folder, f"{index:05d}-0.png"))
        images, _ = evaluation.load_png_folder(folder)
        assert images.shape == (2, 1, 32, 32) and images[0, 0, 2, 2] == 1.0 and images[0, 0, 1, 1] == -1.0
    with tempfile.TemporaryDirectory() as folder:
        write_pngs(folder, 2)
        single = os.path.join(folder, "00000-0.png")
        assert_refused(run_main("score", single), 1,
                       f"eval.py: {single}: not a .npy file; score takes a folder of <index>-<class>.png")


@test
def score_refuses_labels_that_are_not_digit_classes():
    with tempfile.TemporaryDirectory() as folder:
        write_pngs(folder, 2)
        for argv, text in ((("--labels", "3.7,1"), "--labels: '3.7' (position 0) is not a class"),
                           (("--labels=-1,1",), "--labels: label -1 (position 0) is outside 0..9"),
                           (("--labels", "1,10"), "--labels: label 10 (position 1) is outside 0..9"),
                           (("--labels", "1,2,3"), "--labels: 3 labels for 2 images"),
                           (("--labels", "labels.txt"), "--labels labels.txt: no such file")):
            assert_refused(run_main("score", folder, *argv), 2, text)
        npy = os.path.join(folder, "labels.npy")
        np.save(npy, np.array([3.7, 1.0]))
        assert_refused(run_main("score", folder, "--labels", npy), 1, f"eval.py: {npy}: label 3.7 (position 0) "
                       "is not an integer")
        np.save(npy, np.array([3.0, 1.0]))
        assert evaluation.parse_labels(npy, 2).tolist() == [3, 1]
        text = os.path.join(folder, "labels.txt")
        write(text, b"1 -1")
        assert_refused(run_main("score", folder, "--labels", text), 1, f"eval.py: {text}: label -1 (position 1)")


@test
def threads_below_one_are_refused_before_or_after_the_command():
    with tempfile.TemporaryDirectory() as folder:
        write_pngs(folder, 2)
        for argv in (("--threads", "0", "score", folder), ("score", folder, "--threads", "0")):
            assert_refused(run_main(*argv), 2, "argument --threads: 0 is less than 1")


if __name__ == "__main__":
    sys.exit(run_tests())
