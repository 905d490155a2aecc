"""Progress from libraries' own output: each recognizer turns the lines one library prints
(Keras ``fit``, tqdm, PyTorch Lightning, Hugging Face ``Trainer``, XGBoost, LightGBM,
Ultralytics YOLO, plain ``Epoch 3/10`` lines) into ``epoch``/``batch`` events of the job
protocol; ``ProgressDispatcher`` asks them in turn.

Standard library only, relative imports only: the runner ships this package in user-code
bundles as ``neural_jupyter_progress`` and applies it where the job runs, so every consumer of
the job's output (monitor, job store, dashboard) sees the same events on every platform.
"""

from .dispatch import RECOGNIZERS, ProgressDispatcher, recognize
from .terminal import TerminalLines, plain

__all__ = ["RECOGNIZERS", "ProgressDispatcher", "TerminalLines", "plain", "recognize"]
