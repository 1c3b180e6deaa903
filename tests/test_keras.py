"""A Keras model trains on a shardstore pipeline, as users will use it."""

from __future__ import annotations

import warnings
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


def _tiny_model() -> keras.Model:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_keras_shuffle_warning_and_steps_per_epoch_behave_as_documented(tmp_path: Path) -> None:
    """docs/getting-started.md: Keras's shuffle= warns for any tf.data.Dataset (shuffle=False
    silences it); steps_per_epoch needs .repeat(), and every pass of it is reshuffled."""
    rng = np.random.default_rng(1)
    ds = shardstore.write(
        tmp_path / "t",
        {"x": rng.random((200, 4), dtype=np.float32), "y": np.arange(200) % 2},
        records_per_shard=50,
    )
    train = ds.to_tf(32, features=("x", "y"), shuffle=True, seed=0)
    steps = int(train.cardinality())
    assert steps == 7
    model = _tiny_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(train, epochs=1, verbose=0)
        assert any("`shuffle=True` was passed" in str(w.message) for w in caught)
        caught.clear()
        model.fit(train, epochs=1, verbose=0, shuffle=False)
        assert not any("shuffle" in str(w.message) for w in caught)
        model.fit(train, epochs=3, steps_per_epoch=3, verbose=0, shuffle=False)  # 9 > 7 steps
        assert any("ran out of data" in str(w.message) for w in caught)
        caught.clear()
        history = model.fit(
            train.repeat(), epochs=3, steps_per_epoch=steps + 3, verbose=0, shuffle=False
        )
        assert len(history.history["loss"]) == 3
        assert not any("ran out of data" in str(w.message) for w in caught)
    # each pass of the repeated dataset is a new, differently shuffled epoch of every record
    passes = ds.to_tf(200, features="x", shuffle=True, seed=0).repeat(2)
    first, second = (b.numpy() for b in passes)
    assert not np.array_equal(first, second)
    key = np.lexsort(first.T)
    assert np.array_equal(first[key], second[np.lexsort(second.T)])
