"""A Keras model trains on a shardstore pipeline, as users will use it."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

import shardstore


def test_model_fit_on_to_tf(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 512
    labels = rng.integers(0, 2, n).astype(np.int64)
    images = rng.normal(0.0, 1.0, (n, 8, 8, 3)).astype(np.float32)
    images += labels[:, None, None, None] * 1.5  # a learnable signal: brighter means class 1
    ds = shardstore.write(tmp_path / "train", {"image": images, "label": labels},
                          records_per_shard=100)  # fmt: skip

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(2),
    ])  # fmt: skip
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    train = ds.to_tf(batch_size=32, features=("image", "label"), shuffle=True, seed=0)
    history = model.fit(train, epochs=3, verbose=0, shuffle=False)  # to_tf shuffles
    assert len(history.history["loss"]) == 3
    assert history.history["loss"][-1] < history.history["loss"][0]
    _, accuracy = model.evaluate(ds.to_tf(batch_size=64, features=("image", "label")), verbose=0)
    assert accuracy > 0.8
