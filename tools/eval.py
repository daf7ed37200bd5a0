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
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mnist  # noqa: E402
import safetensors_io  # noqa: E402

DEFAULT_CLASSIFIER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models",
                                  "digit-classifier.safetensors")
CLASSIFIER_SEED = 0
CLASSIFIER_EPOCHS = 12
CLASSIFIER_BATCH = 64
MAX_SHIFT = 2  # pixels of random translation while training the classifier
PNG_NAME = re.compile(r"^(\d+)-(\d+)\.png$")
# np.cov of a single feature vector is NaN: the Frechet distance needs two
# images at the least (and hundreds to mean much).
MIN_SCORED_IMAGES = 2


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
    tensors = {name: value.detach().float().numpy() for name, value in net.state_dict().items()}
    safetensors_io.write(path, tensors, metadata)


def load_classifier(path):
    tensors, metadata = safetensors_io.read(path)
    net = DigitClassifier()
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
    pixels = [np.array(Image.open(os.path.join(folder, name)).convert("L")) for _, _, name in entries]
    images = mnist.to_model_space(np.stack(pixels))
    return images, np.array([label for _, label, _ in entries], dtype=np.int64)


def parse_labels(text, count):
    """Labels from a .npy or text file (numbers separated by commas or white
    space) or from a comma-separated list on the command line."""
    if os.path.exists(text):
        if text.endswith(".npy"):
            labels = np.load(text)
        else:
            with open(text) as source:
                labels = np.array(source.read().replace(",", " ").split(), dtype=np.int64)
    else:
        labels = np.array(text.split(","), dtype=np.int64)
    labels = labels.astype(np.int64).reshape(-1)
    if len(labels) != count:
        raise ValueError(f"{len(labels)} labels for {count} images")
    return labels


def load_generated(path, labels_text):
    """(images, labels) to score from a PNG folder or a .npy with --labels."""
    if os.path.isdir(path):
        images, labels = load_png_folder(path)
        if labels_text is not None:
            labels = parse_labels(labels_text, len(images))
    else:
        images = np.load(path).astype(np.float32)
        if images.ndim != 4 or images.shape[1:] != (1, mnist.MODEL_SIZE, mnist.MODEL_SIZE):
            raise ValueError(f"{path}: expected [N,1,32,32], got {images.shape}")
        if labels_text is None:
            raise ValueError("a .npy input needs --labels")
        labels = parse_labels(labels_text, len(images))
    if len(images) < MIN_SCORED_IMAGES:
        raise ValueError(f"{path}: {len(images)} image(s) to score; the Frechet distance needs at least "
                         f"{MIN_SCORED_IMAGES} (and hundreds for a stable value)")
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


def sample_model(model_path, steps, cfg_scale, per_class, seed):
    """(images [N,1,32,32] float32, labels [N]) from the PyTorch reference
    sampler: DDPM respaced to `steps`, official guidance, default iterations."""
    import reference
    import reference_sampling
    net, cfg = reference.load_model(model_path)
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
    parser.add_argument("--threads", type=int, default=1, help=threads_help)
    with_threads = argparse.ArgumentParser(add_help=False)
    with_threads.add_argument("--threads", type=int, default=argparse.SUPPRESS, help=threads_help)
    with_data = argparse.ArgumentParser(add_help=False, parents=[with_threads])
    with_data.add_argument("--data", default=argparse.SUPPRESS, help=data_help)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train-classifier", parents=[with_data])
    train.add_argument("--out", default=DEFAULT_CLASSIFIER)
    train.add_argument("--seed", type=int, default=CLASSIFIER_SEED)
    train.add_argument("--epochs", type=int, default=CLASSIFIER_EPOCHS)
    sample = commands.add_parser("sample", parents=[with_threads])
    sample.add_argument("model")
    sample.add_argument("--out", required=True,
                        help="the images' .npy (.npy added when missing); the labels go to <out>-labels.npy")
    sample.add_argument("--steps", type=int, default=20)
    sample.add_argument("--cfg", type=float, default=3.0)
    sample.add_argument("--per-class", type=int, default=20)
    sample.add_argument("--seed", type=int, default=0)
    scoring = commands.add_parser("score", parents=[with_data])
    scoring.add_argument("input", help="a folder of <index>-<class>.png or a .npy [N,1,32,32]")
    scoring.add_argument("--labels", help="requested classes: .npy, text file, or a comma list")
    scoring.add_argument("--classifier", default=DEFAULT_CLASSIFIER)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.command == "train-classifier":
        train_classifier(args.data, args.out, args.seed, args.epochs)
    elif args.command == "sample":
        start = time.time()
        images, labels = sample_model(args.model, args.steps, args.cfg, args.per_class, args.seed)
        images_path, labels_path = npy_paths(args.out)
        np.save(images_path, images)
        np.save(labels_path, labels)
        print(f"wrote {images_path} and {labels_path} ({time.time() - start:.0f}s)")
    else:
        try:
            images, labels = load_generated(args.input, args.labels)
            classifier, _ = load_classifier(args.classifier)
            train_images = mnist.to_model_space(mnist.load_split(args.data, "train")[0])
            test_images = mnist.to_model_space(mnist.load_split(args.data, "t10k")[0])
        except (OSError, ValueError) as error:
            raise SystemExit(f"eval.py: {error}")
        print(json.dumps(score(images, labels, classifier, train_images, test_images), indent=2))


if __name__ == "__main__":
    main()
