import json
import sys
import time

import tqdm
from tqdm import tqdm as bar

losses = {}
for epoch in range(1, 4):
    steps = bar(range(5), desc=f"Epoch {epoch}", mininterval=0)
    for step in steps:
        loss = 1.0 / (epoch * 10 + step)
        steps.set_postfix(loss=loss)
        time.sleep(0.01)
    losses[epoch] = float(f"{loss:.3g}")
with open(sys.argv[1], "w") as handle:
    json.dump({"version": tqdm.__version__, "losses": losses}, handle)
