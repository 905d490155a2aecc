import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")
import keras
import numpy as np

verbose = int(sys.argv[2])
rng = np.random.default_rng(0)
x = rng.random((64, 4)).astype("float32")
y = (x.sum(1) > 2).astype("float32")
keras.utils.set_random_seed(0)
model = keras.Sequential(
    [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1, "sigmoid")]
)
model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
history = model.fit(x, y, epochs=3, batch_size=16, validation_split=0.25, verbose=verbose)
model.evaluate(x, y, verbose=verbose)  # a bar after fit that is not an epoch
with open(sys.argv[1], "w") as handle:
    json.dump({"version": keras.__version__, "history": history.history}, handle)
