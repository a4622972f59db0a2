"""The paper's own stack as a peer for the benchmark: the same network, loss, optimiser and data in Keras on
TensorFlow (optional: `pip install '.[peer]'`), trained in its own process, which never imports torch.

`python -m tornado.peer SPEC_JSON` runs one fit and prints its epoch times as one JSON line; `tornado.bench`
(section `peer`) calls it through `run_keras` and interleaves it with our runs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tornado.errors import TornadoError

ROOT = Path(__file__).resolve().parents[1]


def has_tensorflow(package: str | None = "keras") -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("tensorflow", package or "keras"))


def run_keras(spec: dict) -> dict:
    """`keras_worker(spec)` in a new Python process (TensorFlow slows PyTorch in a process it shares)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    p = subprocess.run([sys.executable, "-m", "tornado.peer", json.dumps(spec)],
                       capture_output=True, text=True, env=env, timeout=3600)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        raise TornadoError(f"bench: the Keras run failed (exit {p.returncode}): {tail}")
    return json.loads(lines[-1])


def keras_worker(spec: dict) -> dict:
    """The same network, loss, optimiser and data in Keras; runs in its own process (no torch imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import importlib

    import h5py
    import numpy as np
    import tensorflow as tf

    keras = importlib.import_module(spec.get("package", "keras"))  # Keras 3, or tf_keras (Keras 2)
    layers = keras.layers

    with h5py.File(spec["path"], "r") as f:
        n = int(f.attrs["n_train"])
        x = f["train/x"][:n].astype(np.float32)
        y = f["train/y"][:n].astype(np.float32)
        mean, std = f["scaler/mean"][:], f["scaler/std"][:]
    # standardised, then (live) augmented: the same as augmenting first, since interpolation and nearest fill
    # commute with a per-channel affine map
    x = ((x - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)
    x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # NHWC, Keras' layout
    if spec.get("tile_to"):
        j = np.arange(spec["tile_to"]) % n
        x, y, n = x[j], y[j], spec["tile_to"]
    keras.utils.set_random_seed(spec["seed"])
    stack = [keras.Input((32, 32, 3)),
             layers.Conv2D(8, 5, padding="same", activation="relu"), layers.AveragePooling2D(2),
             layers.Conv2D(16, 5, padding="same", activation="relu"), layers.AveragePooling2D(2),
             layers.Conv2D(32, 5, padding="same", activation="relu")]
    if spec["pool3"]:
        stack.append(layers.AveragePooling2D(2))
    model = keras.Sequential([*stack, layers.Flatten(), layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(spec["lr"]),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True),
                  metrics=[keras.metrics.BinaryAccuracy(threshold=0.0)])
    stamps: list[float] = []

    class Stamps(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            stamps.append(time.perf_counter())

        def on_train_end(self, logs=None):
            stamps.append(time.perf_counter())

    b, epochs = spec["batch"], spec["epochs"]
    t0 = time.perf_counter()
    if spec["augmentation"] == "live":
        aug = spec["augment"]
        gen = _image_data_generator(keras)(rotation_range=aug["rotation"], width_shift_range=aug["translate"],
                                      height_shift_range=aug["translate"], zoom_range=aug["zoom"],
                                      horizontal_flip=aug["reflect"], fill_mode="nearest")
        model.fit(gen.flow(x, y, batch_size=b, shuffle=True, seed=spec["seed"]), epochs=epochs, verbose=0,
                  callbacks=[Stamps()])
    else:
        model.fit(x, y, batch_size=b, epochs=epochs, shuffle=True, verbose=0, callbacks=[Stamps()])
    return {"epoch_s": [q - p for p, q in zip(stamps, stamps[1:])], "since_fit_s": [q - t0 for q in stamps[1:]],
            "samples_per_epoch": n, "keras": f"{spec.get('package', 'keras')} {keras.__version__}",
            "tensorflow": tf.__version__,
            "jit_compile": str(getattr(model, "jit_compile", None)),
            "threads": tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()}


def _image_data_generator(keras):
    """The legacy generator: Keras 2 (tf_keras) has it in place, Keras 3 only under its tf.keras name."""
    image = getattr(getattr(keras, "preprocessing", None), "image", None)
    if hasattr(image, "ImageDataGenerator"):
        return image.ImageDataGenerator
    from keras._tf_keras.keras.preprocessing.image import ImageDataGenerator

    return ImageDataGenerator


if __name__ == "__main__":
    print(json.dumps(keras_worker(json.loads(sys.argv[1]))), flush=True)
