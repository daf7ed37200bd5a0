"""eval.py - quality evaluation of generated MNIST digits with a small CNN
digit classifier trained on the 9,000 training digits.

    # the classifier (seed fixed; prints its t10k accuracy):
    nice -n 10 /usr/bin/python3 tools/eval.py train-classifier --out models/digit-classifier.safetensors
    # digits from a model, with the PyTorch reference sampler (tools/reference_sampling.py),
    # to /tmp/fpdm.npy and /tmp/fpdm-labels.npy:
    /usr/bin/python3 tools/eval.py sample models/fpdm-mnist.safetensors --out /tmp/fpdm.npy --steps 20 --cfg 3
    # scores (JSON): a folder of PNGs named {index:05d}-{class}.png, or a .npy [N,1,32,32] in [-1,1]
    /usr/bin/python3 tools/eval.py score /tmp/fpdm.npy --labels /tmp/fpdm-labels.npy
    /usr/bin/python3 tools/eval.py score out/pngs/ --data /work/shared/data/mnist

--data (the MNIST folder) and --threads go before the command, or after it;
`sample` reads no data, so after `sample` only --threads.

Bad flags or values: one line on stderr, exit 2; a file that is missing,
unreadable or of the wrong kind: one line naming it, exit 1; both before any
training or sampling (the --out folder is checked first). Outputs are written
to a temporary file beside the target and renamed into place, never half.

Scores: (a) class accuracy: the classifier's prediction against the requested
class; (b) Frechet distance between the classifier's penultimate features of
the generated images and of the 1,000 t10k images (with, for scale, the same
distance from 1,000 training images to t10k); (c) memorisation: the mean L2
distance (in [-1,1] pixel units, 32x32) from each generated image to its
nearest training image, next to the same mean for the t10k images.
"""
import argparse
import json
import os
import re
import struct
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from argument_types import float_in, int_at_least  # noqa: E402
import mnist  # noqa: E402
import safetensors_io  # noqa: E402

DEFAULT_CLASSIFIER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models",
                                  "digit-classifier.safetensors")
CLASSIFIER_SEED = 0
CLASSIFIER_EPOCHS = 12
CLASSIFIER_BATCH = 64
MAX_SHIFT = 2  # pixels of random translation while training the classifier
PNG_NAME = re.compile(r"^(\d+)-(\d+)\.png$")
PNG_SIZES = ((28, 28), (32, 32))  # (width, height): MNIST digits, or padded to the models' 32x32
PNG_MODES = ("L", "RGB")  # 8-bit grayscale (what fpdm-sample writes for one channel) or 8-bit RGB
PIL_MODE_NAMES = {"1": "1-bit", "I;16": "16-bit grayscale", "I": "16-bit grayscale", "LA": "grayscale with alpha",
                  "RGBA": "RGB with alpha", "P": "palette", "I;16B": "16-bit grayscale"}
NUM_DIGITS = 10
MAX_GUIDANCE = 1e6  # as the C API's FPDM_MAX_SCALE
INPUTS = "a folder of <index>-<class>.png files or a .npy [N,1,32,32] in [-1,1]"
# np.cov of a single feature vector is NaN: the Frechet distance needs two
# images at the least (and hundreds to mean much).
MIN_SCORED_IMAGES = 2


class UsageError(ValueError):
    """A bad value given on the command line (exit 2), as against a file
    that is missing, unreadable or of the wrong kind (ValueError, exit 1)."""


def reason(error, path=None):
    """An exception's text on one line, at most 200 characters, without the
    leading "PATH: " that safetensors_io puts in its messages."""
    text = " ".join(str(error).split()) or type(error).__name__
    if path and text.startswith(f"{path}: "):
        text = text[len(path) + 2:]
    if path:
        text = text.replace(f" '{path}'", "")
    return text if len(text) <= 200 else text[:197] + "..."


def file_error_text(error):
    """One line for an OSError or ValueError, naming the file where the error knows it."""
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or reason(error)}"
    return reason(error)


guidance_scale = float_in(1.0, MAX_GUIDANCE, f"a guidance scale (1 to {MAX_GUIDANCE:g}; 1: none)")


def check_output(parser, flag, path):
    """Refuses (exit 2) an output that cannot be written, before any work: a
    folder, a special file (a rename would replace /dev/null itself), a file
    in a folder that is missing or not writable. A link counts as its target."""
    if os.path.isdir(path):
        parser.error(f"{flag} {path}: is a folder (give the name of the file to write)")
    if os.path.exists(path) and not os.path.isfile(path):
        parser.error(f"{flag} {path}: is not a regular file")
    path = os.path.realpath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        parser.error(f"{flag} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        parser.error(f"{flag} {path}: folder {folder} is not writable")


def write_whole(outputs):
    """outputs: (path, write(temporary_path)) pairs. Each is written to a
    temporary file beside its path (with the mode a plainly created file
    would get; mkstemp's is 0600), then all are renamed into place: a failure
    leaves no partial output, and the temporary files are removed."""
    umask = os.umask(0)
    os.umask(umask)
    temps = []
    try:
        for path, write in outputs:
            target = os.path.realpath(path)
            handle, temp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp",
                                            dir=os.path.dirname(target))
            temps.append(temp)
            os.fchmod(handle, 0o666 & ~umask)
            os.close(handle)
            write(temp)
        for (path, _), temp in zip(outputs, temps):
            os.replace(temp, os.path.realpath(path))  # a link keeps pointing at its new target
    finally:
        for temp in temps:
            if os.path.exists(temp):
                os.unlink(temp)


def save_npy(path, array):
    """np.save to exactly this name (np.save adds .npy to a name it opens itself)."""
    with open(path, "wb") as out:
        np.save(out, array)


def not_a(path, what, error):
    """The one-line ValueError for a file that is not `what`."""
    hint = "; a .pt checkpoint is converted with tools/convert.py" if path.endswith((".pt", ".pth")) else ""
    return ValueError(f"{path}: not a {what} ({reason(error, path)}){hint}")


# What safetensors_io.read and reference.load_model raise on a file of another kind.
WRONG_FILE_ERRORS = (ValueError, KeyError, TypeError, IndexError, RuntimeError, struct.error)


def read_safetensors(path, what):
    """safetensors_io.read; a file that is not safetensors is a ValueError naming it."""
    try:
        return safetensors_io.read(path)
    except WRONG_FILE_ERRORS as error:
        raise not_a(path, f"safetensors {what}", error) from None


class DigitClassifier(nn.Module):
    """Three conv+pool stages (32 -> 16 -> 8 -> 4), a 128-wide feature layer
    (the Frechet features; dropout after it while training), 10 logits."""

    FEATURES = 128

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 24, 3, padding=1)
        self.conv2 = nn.Conv2d(24, 48, 3, padding=1)
        self.conv3 = nn.Conv2d(48, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 4 * 4, self.FEATURES)
        self.head = nn.Linear(self.FEATURES, 10)

    def features(self, x):
        for conv in (self.conv1, self.conv2, self.conv3):
            x = F.max_pool2d(F.relu(conv(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, x):
        return self.head(F.dropout(self.features(x), 0.25, self.training))


def save_classifier(net, path, metadata):
    """Written whole: a temporary file beside path, renamed into place."""
    tensors = {name: value.detach().float().numpy() for name, value in net.state_dict().items()}
    write_whole([(path, lambda temp: safetensors_io.write(temp, tensors, metadata))])


def load_classifier(path):
    """(net, metadata); a file that is not a digit classifier of this shape,
    or holds non-finite weights, is a one-line ValueError naming it."""
    tensors, metadata = read_safetensors(path, "classifier")
    net = DigitClassifier()
    expected = net.state_dict()
    missing = [name for name in expected if name not in tensors]
    unknown = sorted(name for name in tensors if name not in expected)
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of its {len(expected)} tensors missing, e.g. {missing[0]}")
        if unknown:
            parts.append(f"{len(unknown)} unknown tensors, e.g. {unknown[0]}")
        raise ValueError(f"{path}: not a digit classifier ({'; '.join(parts)})")
    for name, value in expected.items():
        if tuple(tensors[name].shape) != tuple(value.shape):
            raise ValueError(f"{path}: not a digit classifier (tensor {name} is {list(tensors[name].shape)}, "
                             f"expected {list(value.shape)})")
        if not np.isfinite(tensors[name]).all():
            raise ValueError(f"{path}: tensor {name} holds non-finite values")
    net.load_state_dict({name: torch.from_numpy(np.array(a, dtype=np.float32)) for name, a in tensors.items()})
    return net.eval(), metadata


def random_shift(x, generator):
    """Each image translated by up to MAX_SHIFT pixels, the border filled with
    the background (-1)."""
    padded = F.pad(x, (MAX_SHIFT,) * 4, value=-1.0)
    size = x.shape[-1]
    offsets = torch.randint(0, 2 * MAX_SHIFT + 1, (len(x), 2), generator=generator)
    return torch.stack([padded[i, :, r:r + size, c:c + size] for i, (r, c) in enumerate(offsets.tolist())])


@torch.no_grad()
def predict(net, images, batch=500):
    """(logits [N,10], features [N,128]) of float32 images [N,1,32,32]."""
    logits, features = [], []
    for begin in range(0, len(images), batch):
        chunk = torch.as_tensor(images[begin:begin + batch], dtype=torch.float32)
        feats = net.features(chunk)
        features.append(feats)
        logits.append(net.head(feats))
    return torch.cat(logits).numpy(), torch.cat(features).numpy().astype(np.float64)


def train_classifier(data_dir, out_path, seed=CLASSIFIER_SEED, epochs=CLASSIFIER_EPOCHS):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_images, train_labels, train_paths = mnist.load_split(data_dir, "train")
    test_images, test_labels, test_paths = mnist.load_split(data_dir, "t10k")
    x = torch.from_numpy(mnist.to_model_space(train_images))
    y = torch.from_numpy(train_labels)
    net = DigitClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * (len(x) // CLASSIFIER_BATCH))
    start = time.time()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x), generator=generator)
        for begin in range(0, len(x) - CLASSIFIER_BATCH + 1, CLASSIFIER_BATCH):
            index = order[begin:begin + CLASSIFIER_BATCH]
            loss = F.cross_entropy(net(random_shift(x[index], generator)), y[index])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
        print(f"epoch {epoch + 1}/{epochs} loss {loss.item():.4f} {time.time() - start:.0f}s", flush=True)
    net.eval()
    logits, _ = predict(net, mnist.to_model_space(test_images))
    accuracy = float((logits.argmax(1) == test_labels).mean())
    metadata = {
        "classifier.command": (f"nice -n 10 /usr/bin/python3 tools/eval.py train-classifier --out {out_path} "
                               f"--seed {seed} --epochs {epochs}"),
        "classifier.seed": str(seed),
        "classifier.t10k_accuracy": f"{accuracy:.4f}",
        "classifier.data": ",".join(f"{os.path.basename(p)}:sha256={mnist.sha256_file(p)}"
                                    for p in train_paths + test_paths),
    }
    save_classifier(net, out_path, metadata)
    print(f"t10k accuracy {accuracy:.4f} ({time.time() - start:.0f}s); wrote {out_path}", flush=True)
    return accuracy


# ---- the scores ------------------------------------------------------------

def frechet_distance(features_a, features_b):
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), the trace of the
    square root taken as that of sqrt(S_a) S_b sqrt(S_a), which is symmetric."""
    mu_a, mu_b = features_a.mean(0), features_b.mean(0)
    cov_a = np.atleast_2d(np.cov(features_a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(features_b, rowvar=False))
    values, vectors = np.linalg.eigh(cov_a)
    sqrt_a = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
    inner = np.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a)
    trace_sqrt = np.sqrt(np.clip(inner, 0.0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt)


def nearest_distances(queries, references, chunk=256):
    """For each query image the L2 distance to its nearest reference image."""
    refs = torch.as_tensor(references, dtype=torch.float32).reshape(len(references), -1)
    out = []
    for begin in range(0, len(queries), chunk):
        q = torch.as_tensor(queries[begin:begin + chunk], dtype=torch.float32).reshape(-1, refs.shape[1])
        out.append(torch.cdist(q, refs).min(dim=1).values)
    return torch.cat(out).numpy()


def load_png_folder(folder):
    """(images float32 [N,1,32,32] in [-1,1], requested classes [N]) from the
    files {index:05d}-{class}.png, in index order."""
    from PIL import Image
    entries = []
    for name in os.listdir(folder):
        match = PNG_NAME.match(name)
        if match:
            entries.append((int(match.group(1)), int(match.group(2)), name))
    if not entries:
        raise ValueError(f"{folder}: no files named <index>-<class>.png")
    entries.sort()
    pixels, first = [], None
    for _, label, name in entries:
        path = os.path.join(folder, name)
        if label >= NUM_DIGITS:
            raise ValueError(f"{path}: class {label} in the name is outside 0..{NUM_DIGITS - 1}")
        try:
            with Image.open(path) as image:
                kind, mode, size = image.format, image.mode, image.size
                gray = np.array(image.convert("L")) if kind == "PNG" and mode in PNG_MODES else None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
            raise ValueError(f"{path}: not a readable PNG ({reason(error, path)})") from None
        if kind != "PNG":
            raise ValueError(f"{path}: a {kind} image, not a PNG")
        if mode not in PNG_MODES:
            raise ValueError(f"{path}: a {PIL_MODE_NAMES.get(mode, mode)} PNG (mode {mode}); "
                             f"accepted: 8-bit grayscale or 8-bit RGB")
        if size not in PNG_SIZES:
            raise ValueError(f"{path}: {size[0]}x{size[1]} pixels; accepted: 28x28 or 32x32")
        if first is None:
            first = (path, size)
        elif size != first[1]:
            raise ValueError(f"{path}: {size[0]}x{size[1]} pixels, but {first[0]} is "
                             f"{first[1][0]}x{first[1][1]} (all images must have one size)")
        pixels.append(gray)
    images = mnist.to_model_space(np.stack(pixels))
    return images, np.array([label for _, label, _ in entries], dtype=np.int64)


def parse_labels(text, count):
    """Labels from a .npy or text file (integers separated by commas or white
    space) or from a comma-separated list on the command line; each a class
    0..9, one per image. A bad file is a ValueError naming it, a bad list a
    UsageError."""
    if os.path.exists(text):
        where, error_type = text, ValueError
        if text.endswith(".npy"):
            try:
                labels = np.load(text, allow_pickle=False)
            except (ValueError, EOFError) as error:
                raise ValueError(f"{text}: not a readable .npy ({reason(error)})") from None
            if not isinstance(labels, np.ndarray):  # np.load gives an archive for a zip (.npz) file
                raise ValueError(f"{text}: an .npz archive, not a .npy array")
            if np.issubdtype(labels.dtype, np.floating):
                whole = np.isfinite(labels) & (labels == np.round(labels))
                if not whole.all():
                    bad = np.flatnonzero(~whole.reshape(-1))[0]
                    raise ValueError(f"{text}: label {labels.reshape(-1)[bad]} (position {bad}) is not an integer")
            elif not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(f"{text}: {labels.dtype} values; expected integer classes")
            labels = [int(value) for value in labels.reshape(-1).tolist()]
        else:
            with open(text) as source:
                try:
                    tokens = source.read().replace(",", " ").split()
                except UnicodeDecodeError:
                    raise ValueError(f"{text}: not a text file of labels") from None
            labels = integer_labels(tokens, where, error_type)
    else:
        where, error_type = "--labels", UsageError
        tokens = text.split(",")
        if len(tokens) == 1 and not is_number(text):
            raise UsageError(f"--labels {text}: no such file, and not a comma-separated list of classes")
        labels = integer_labels(tokens, where, error_type)
    for position, value in enumerate(labels):
        if not 0 <= value < NUM_DIGITS:
            raise error_type(f"{where}: label {value} (position {position}) is outside 0..{NUM_DIGITS - 1}")
    if len(labels) != count:
        raise error_type(f"{where}: {len(labels)} labels for {count} images")
    return np.array(labels, dtype=np.int64)


def is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def integer_labels(tokens, where, error_type):
    """Python ints of the tokens (a huge one is then refused as outside 0..9, not overflowed)."""
    values = []
    for position, token in enumerate(tokens):
        if not re.fullmatch(r"\s*[+-]?\d+\s*", token):
            raise error_type(f"{where}: {token.strip()!r} (position {position}) is not a class (an integer "
                             f"0..{NUM_DIGITS - 1})")
        values.append(int(token))
    return values


def load_npy_images(path):
    """float32 images [N,1,32,32] from a .npy file, checked."""
    with open(path, "rb") as source:
        magic = source.read(6)
    if magic != b"\x93NUMPY":
        raise ValueError(f"{path}: not a .npy file; score takes {INPUTS}")
    try:
        images = np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as error:
        raise ValueError(f"{path}: not a readable .npy ({reason(error)})") from None
    if not (np.issubdtype(images.dtype, np.floating) or np.issubdtype(images.dtype, np.integer)):
        raise ValueError(f"{path}: {images.dtype} values; expected real numbers")
    if images.ndim != 4 or images.shape[1:] != (1, mnist.MODEL_SIZE, mnist.MODEL_SIZE):
        raise ValueError(f"{path}: expected [N,1,32,32], got {list(images.shape)}")
    return images.astype(np.float32)


def load_generated(path, labels_text):
    """(images, labels) to score from a PNG folder or a .npy with --labels."""
    if os.path.isdir(path):
        images, labels = load_png_folder(path)
        if labels_text is not None:
            labels = parse_labels(labels_text, len(images))
    elif not os.path.exists(path):
        raise ValueError(f"{path}: no such file or folder; score takes {INPUTS}")
    else:
        if labels_text is None and path.endswith(".npy"):
            raise UsageError(f"{path}: a .npy input needs --labels")
        images = load_npy_images(path)
        if labels_text is None:
            raise UsageError(f"{path}: a .npy input needs --labels")
        labels = parse_labels(labels_text, len(images))
    if len(images) < MIN_SCORED_IMAGES:
        raise ValueError(f"{path}: {len(images)} image(s) to score; the Frechet distance needs at least "
                         f"{MIN_SCORED_IMAGES} (and hundreds for a stable value)")
    finite = np.isfinite(images.reshape(len(images), -1)).all(axis=1)
    if not finite.all():
        raise ValueError(f"{path}: {int((~finite).sum())} of {len(images)} images hold non-finite values "
                         f"(NaN or infinity; the first is image {int(np.flatnonzero(~finite)[0])})")
    return images, labels


def score(images, labels, classifier, train_images, test_images):
    """The JSON-ready scores of generated images [N,1,32,32] in [-1,1] for
    requested classes labels [N], against model-space train/t10k digits."""
    images = np.clip(images, -1.0, 1.0)
    logits, features = predict(classifier, images)
    predicted = logits.argmax(1)
    _, test_features = predict(classifier, test_images)
    _, train_features = predict(classifier, train_images[:len(test_images)])
    per_class = {str(c): float((predicted[labels == c] == c).mean()) for c in range(10) if (labels == c).any()}
    generated_nn = nearest_distances(images, train_images)
    test_nn = nearest_distances(test_images, train_images)
    return {
        "count": int(len(images)),
        "class_accuracy": float((predicted == labels).mean()),
        "class_accuracy_per_class": per_class,
        "frechet_distance": frechet_distance(features, test_features),
        "frechet_distance_train_vs_t10k": frechet_distance(train_features, test_features),
        "nearest_train_l2_generated_mean": float(generated_nn.mean()),
        "nearest_train_l2_t10k_mean": float(test_nn.mean()),
        "nearest_train_l2_ratio": float(generated_nn.mean() / test_nn.mean()),
    }


def load_model(path):
    """(net, cfg) of a model file; one that is not a DiT/FPDM safetensors
    model is a one-line ValueError naming it."""
    import reference
    try:
        return reference.load_model(path)
    except WRONG_FILE_ERRORS as error:
        raise not_a(path, "DiT/FPDM safetensors model", error) from None


def sample_model(net, cfg, steps, cfg_scale, per_class, seed):
    """(images [N,1,32,32] float32, labels [N]) from the PyTorch reference
    sampler: DDPM respaced to `steps`, official guidance, default iterations;
    net, cfg from load_model."""
    import reference_sampling
    labels = np.repeat(np.arange(cfg["num_classes"]), per_class)
    generator = torch.Generator().manual_seed(seed)
    shape = (len(labels), cfg["in_channels"], cfg["input_size"], cfg["input_size"])
    init_noise = torch.randn(shape, generator=generator)
    step_noise = torch.randn((steps,) + shape, generator=generator)
    images = reference_sampling.sample(net, cfg, labels, steps=steps, sampler="ddpm", eta=0.0,
                                       cfg_scale=cfg_scale, cfg_all_channels=False, iters_plan=None,
                                       reuse=False, init_noise=init_noise, step_noise=step_noise,
                                       dtype=torch.float32)
    return images.float().numpy(), labels


def npy_paths(out):
    """The images and labels files of `sample --out`: np.save appends .npy
    to a name without it, so the name is completed here, and the labels go
    beside it whatever dots the name has."""
    images_path = out if out.endswith(".npy") else out + ".npy"
    return images_path, images_path[:-len(".npy")] + "-labels.npy"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Accepted after the command too: its own copies default to SUPPRESS so
    # that, when absent, they leave these values alone.
    data_help = f"the MNIST folder (default: {mnist.DEFAULT_DIR})"
    threads_help = "torch threads (default: 1)"
    parser.add_argument("--data", default=mnist.DEFAULT_DIR, help=data_help)
    parser.add_argument("--threads", type=int_at_least(1), default=1, help=threads_help)
    with_threads = argparse.ArgumentParser(add_help=False)
    with_threads.add_argument("--threads", type=int_at_least(1), default=argparse.SUPPRESS, help=threads_help)
    with_data = argparse.ArgumentParser(add_help=False, parents=[with_threads])
    with_data.add_argument("--data", default=argparse.SUPPRESS, help=data_help)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train-classifier", parents=[with_data])
    train.add_argument("--out", default=DEFAULT_CLASSIFIER)
    train.add_argument("--seed", type=int, default=CLASSIFIER_SEED)
    train.add_argument("--epochs", type=int_at_least(1), default=CLASSIFIER_EPOCHS)
    sample = commands.add_parser("sample", parents=[with_threads])
    sample.add_argument("model")
    sample.add_argument("--out", required=True,
                        help="the images' .npy (.npy added when missing); the labels go to <out>-labels.npy")
    sample.add_argument("--steps", type=int_at_least(1), default=20,
                        help="DDPM steps, 1 to the model's training timesteps")
    sample.add_argument("--cfg", type=guidance_scale, default=3.0, help="guidance scale (1: none)")
    sample.add_argument("--per-class", type=int_at_least(1), default=20)
    sample.add_argument("--seed", type=int, default=0)
    scoring = commands.add_parser("score", parents=[with_data])
    scoring.add_argument("input", help="a folder of <index>-<class>.png or a .npy [N,1,32,32]")
    scoring.add_argument("--labels", help="requested classes 0..9: .npy, text file, or a comma list")
    scoring.add_argument("--classifier", default=DEFAULT_CLASSIFIER)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.command == "train-classifier":
        check_output(train, "--out", args.out)
        try:  # the data are read before the first epoch; the file written whole after the last
            train_classifier(args.data, args.out, args.seed, args.epochs)
        except (OSError, ValueError) as error:
            raise SystemExit(f"eval.py: {file_error_text(error)}")
    elif args.command == "sample":
        start = time.time()
        images_path, labels_path = npy_paths(args.out)
        if args.out.endswith(os.sep):
            sample.error(f"--out {args.out}: names a folder (give a file name; .npy is added)")
        check_output(sample, "--out", images_path)
        check_output(sample, "--out", labels_path)
        try:
            net, cfg = load_model(args.model)
        except (OSError, ValueError) as error:
            raise SystemExit(f"eval.py: {file_error_text(error)}")
        if args.steps > cfg["num_train_timesteps"]:
            sample.error(f"argument --steps: {args.steps} is more than the model's "
                         f"{cfg['num_train_timesteps']} training timesteps")
        images, labels = sample_model(net, cfg, args.steps, args.cfg, args.per_class, args.seed)
        try:
            write_whole([(images_path, lambda temp: save_npy(temp, images)),
                         (labels_path, lambda temp: save_npy(temp, labels))])
        except OSError as error:
            raise SystemExit(f"eval.py: {images_path}: cannot be written: {error.strerror or reason(error)}")
        print(f"wrote {images_path} and {labels_path} ({time.time() - start:.0f}s)")
    else:
        try:
            images, labels = load_generated(args.input, args.labels)
            classifier, _ = load_classifier(args.classifier)
            train_images = mnist.to_model_space(mnist.load_split(args.data, "train")[0])
            test_images = mnist.to_model_space(mnist.load_split(args.data, "t10k")[0])
        except UsageError as error:
            scoring.error(str(error))
        except (OSError, ValueError) as error:
            raise SystemExit(f"eval.py: {file_error_text(error)}")
        print(json.dumps(score(images, labels, classifier, train_images, test_images), indent=2))


if __name__ == "__main__":
    main()
