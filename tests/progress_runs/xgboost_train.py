import json
import sys

import numpy as np
import xgboost as xgb

rng = np.random.default_rng(0)
X = rng.random((80, 4))
y = (X[:, 0] > 0.5).astype(int)
train, valid = xgb.DMatrix(X[:60], label=y[:60]), xgb.DMatrix(X[60:], label=y[60:])
record = {}
params = {"objective": "binary:logistic", "max_depth": 2, "eval_metric": ["logloss", "error"]}
xgb.train(params, train, 4, evals=[(train, "train"), (valid, "eval")], evals_result=record)
with open(sys.argv[1], "w") as handle:
    json.dump({"version": xgb.__version__, "record": record}, handle)
