import json
import sys

import lightgbm as lgb
import numpy as np

rng = np.random.default_rng(0)
X = rng.random((300, 4))
y = X[:, 0] + 0.3 * rng.random(300)
train = lgb.Dataset(X[:200], y[:200])
valid = lgb.Dataset(X[200:], y[200:], reference=train)
record = {}
lgb.train(
    {"objective": "regression", "num_leaves": 4, "learning_rate": 0.2, "verbose": -1},
    train,
    12,
    valid_sets=[valid],
    valid_names=["valid"],
    callbacks=[lgb.log_evaluation(2), lgb.record_evaluation(record), lgb.early_stopping(3)],
)
with open(sys.argv[1], "w") as handle:
    json.dump({"version": lgb.__version__, "record": record}, handle)
