"""Train the digits classifier shipped in examples/ (run: python examples/make_digits.py; needs torch and
scikit-learn, the `dev` tools — optc itself never imports torch).

A small CNN trained on scikit-learn's digits set (1797 8x8 grey images of the digits 0-9, pixel values 0..16;
`sklearn.datasets.load_digits`), split with `train_test_split(test_size=0.2, random_state=0, stratify=y)`. The
architecture is the kind a real exported CNN has: Conv + BatchNorm + Relu, a depthwise (grouped) Conv, a 1x1
Conv + Relu, MaxPool, Flatten, Linear + Relu, Linear (Dropout before the first Linear while training).
Training is seeded and single-threaded, so a rerun writes the same model. Written files:

- `digits_cnn.onnx`: input "x" float32 [N, 1, 8, 8] (pixels scaled to [0, 1]), output "logits" float32 [N, 10];
  torch's TorchScript exporter (`dynamo=False`), opset 17, dynamic batch axis.
- `digits_calib.npz`: key "x", the first 256 training images (float32 [256, 1, 8, 8]), for calibration.
- `digits_test.npz`: keys "x" (float32 [360, 1, 8, 8]) and "y" (int64 [360]), the whole held-out split.
"""

from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 0
EPOCHS = 40
CALIB_SAMPLES = 256


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits set as (x_train, y_train, x_test, y_test): x float32 [N, 1, 8, 8] scaled to [0, 1] (the raw
    pixels are 0..16), y int64 [N] in 0..9; 1437 training and 360 test samples, split with
    `train_test_split(test_size=0.2, random_state=0, stratify=y)`."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    y = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return x_train, y_train, x_test, y_test


def _module():
    """The CNN as a torch module (imports torch)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),   # 16 x 8 x 8
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),                      # depthwise
        nn.Conv2d(16, 32, 1), nn.ReLU(),                                             # pointwise
        nn.MaxPool2d(2),                                                             # 32 x 4 x 4
        nn.Flatten(), nn.Dropout(0.3),                                               # Dropout: training only
        nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )


def train_digits_cnn(path: str) -> float:
    """Train the CNN on the training split (Adam, lr 1e-2 with cosine decay, batch 64, `EPOCHS` epochs, dropout
    0.3 before the first Linear, seed `SEED`, one thread), export it to `path` (ONNX, opset 17, input "x"
    [N, 1, 8, 8], output "logits" [N, 10], dynamic batch; BatchNorm folded into its Conv by the exporter) and
    return its top-1 accuracy on the test split (computed by torch, a fraction in [0, 1])."""
    import torch
    from torch import nn

    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    x_train, y_train, x_test, y_test = digits_split()
    model = _module()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, EPOCHS)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(EPOCHS):
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            idx = order[i:i + 64]
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
        torch.onnx.export(model, (xt[:1],), path, input_names=["x"], output_names=["logits"], opset_version=17,
                          dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}}, dynamo=False)
    return acc


def main() -> int:
    from optc.fileio import atomic_path, write_npz

    x_train, _y_train, x_test, y_test = digits_split()
    with atomic_path(os.path.join(HERE, "digits_cnn.onnx"), suffix=".onnx") as tmp:
        acc = train_digits_cnn(tmp)
    write_npz(os.path.join(HERE, "digits_calib.npz"), {"x": x_train[:CALIB_SAMPLES]})
    write_npz(os.path.join(HERE, "digits_test.npz"), {"x": x_test, "y": y_test})
    print(f"digits_cnn.onnx: test accuracy {acc:.4f} on {len(y_test)} held-out samples (torch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
