"""Signatures of everything that is not a layer: losses, optimizers, schedules, train settings."""

from __future__ import annotations

from neural_jupyter.dsl.params import Param, Signature

_RATE = Param(
    "learning_rate", "float", 0.001, "step size, or a schedule", min=0.0, min_exclusive=True
)
_BETAS = (
    Param(
        "beta_1",
        "float",
        0.9,
        "decay of the first-moment estimate",
        min=0.0,
        max=1.0,
        max_exclusive=True,
    ),
    Param(
        "beta_2",
        "float",
        0.999,
        "decay of the second-moment estimate",
        min=0.0,
        max=1.0,
        max_exclusive=True,
    ),
    Param("epsilon", "float", 1e-7, "numerical stability term", min=0.0, min_exclusive=True),
)

OPTIMIZERS: dict[str, Signature] = {
    "SGD": Signature(
        "SGD",
        (
            Param(
                "learning_rate",
                "float",
                0.01,
                "step size, or a schedule",
                min=0.0,
                min_exclusive=True,
            ),
            Param(
                "momentum", "float", 0.0, "momentum factor", min=0.0, max=1.0, max_exclusive=True
            ),
            Param("nesterov", "bool", False, "use Nesterov momentum"),
            Param("weight_decay", "float", 0.0, "L2 penalty", min=0.0),
        ),
        "Stochastic gradient descent.",
    ),
    "Adam": Signature("Adam", (_RATE, *_BETAS), "Adam."),
    "AdamW": Signature(
        "AdamW",
        (_RATE, *_BETAS, Param("weight_decay", "float", 0.01, "decoupled weight decay", min=0.0)),
        "Adam with decoupled weight decay.",
    ),
    "RMSprop": Signature(
        "RMSprop",
        (
            _RATE,
            Param(
                "rho",
                "float",
                0.9,
                "decay of the squared-gradient average",
                min=0.0,
                max=1.0,
                max_exclusive=True,
            ),
            Param(
                "momentum", "float", 0.0, "momentum factor", min=0.0, max=1.0, max_exclusive=True
            ),
            Param(
                "epsilon", "float", 1e-7, "numerical stability term", min=0.0, min_exclusive=True
            ),
        ),
        "RMSprop.",
    ),
}

_INITIAL = Param(
    "initial_learning_rate", "float", doc="learning rate at the start", min=0.0, min_exclusive=True
)

SCHEDULES: dict[str, Signature] = {
    "ExponentialDecay": Signature(
        "ExponentialDecay",
        (
            _INITIAL,
            Param("decay_steps", "int", doc="optimizer steps per decay period", min=1),
            Param("decay_rate", "float", doc="factor per period", min=0.0, min_exclusive=True),
            Param("staircase", "bool", False, "decay in whole periods"),
        ),
        "lr = initial * decay_rate ** (step / decay_steps), stepped every batch.",
    ),
    "StepDecay": Signature(
        "StepDecay",
        (
            _INITIAL,
            Param("step_size", "int", doc="epochs between decays", min=1),
            Param("gamma", "float", 0.1, "factor per decay", min=0.0, min_exclusive=True),
        ),
        "lr = initial * gamma ** (epoch // step_size), stepped every epoch.",
    ),
}

# canonical name -> (aliases, kind); kind says which outputs fit the loss
LOSSES: dict[str, tuple[tuple[str, ...], str]] = {
    "categorical_crossentropy": (("categorical_cross_entropy", "cce"), "multiclass"),
    "sparse_categorical_crossentropy": (("sparse_categorical_cross_entropy", "scce"), "multiclass"),
    "binary_crossentropy": (("binary_cross_entropy", "bce"), "binary"),
    "mse": (("mean_squared_error",), "regression"),
    "mae": (("mean_absolute_error",), "regression"),
    "huber": (("huber_loss",), "regression"),
}
LOSS_PARAMS: dict[str, Signature] = {
    "huber": Signature(
        "huber",
        (
            Param(
                "delta",
                "float",
                1.0,
                "switch point from quadratic to linear",
                min=0.0,
                min_exclusive=True,
            ),
        ),
    ),
}

METRICS: dict[str, tuple[str, ...]] = {
    "accuracy": ("acc",),
    "mae": ("mean_absolute_error",),
    "mse": ("mean_squared_error",),
}

EARLY_STOPPING = Signature(
    "early_stopping",
    (
        Param("patience", "int", 3, "epochs without improvement before stopping", min=0),
        Param(
            "monitor",
            "choice",
            "val_loss",
            "the quantity to watch",
            choices=(
                "val_loss",
                "loss",
                "val_accuracy",
                "accuracy",
                "val_mae",
                "mae",
                "val_mse",
                "mse",
            ),
        ),
        Param("min_delta", "float", 0.0, "smallest change that counts as improvement", min=0.0),
        Param("restore_best_weights", "bool", True, "keep the best epoch's weights"),
    ),
    "Stop when the monitored quantity stops improving.",
)

TRAIN_SETTINGS: dict[str, Param] = {
    p.name: p
    for p in (
        Param("epochs", "int", 10, "passes over the training data", min=1, max=1_000_000),
        Param("batch_size", "int", 32, "samples per optimizer step", min=1, max=2**31 - 1),
        Param(
            "validation_split",
            "float",
            0.0,
            "fraction held out for validation",
            min=0.0,
            max=1.0,
            max_exclusive=True,
        ),
        Param(
            "seed",
            "int",
            42,
            "random seed for weights, shuffling and the split",
            min=0,
            max=2**32 - 1,
        ),
        Param("shuffle", "bool", True, "shuffle the training data every epoch"),
    )
}


def canonical_loss(name: str) -> str | None:
    lowered = name.lower()
    for canonical, (aliases, _) in LOSSES.items():
        if lowered == canonical or lowered in aliases:
            return canonical
    return None


def canonical_metric(name: str) -> str | None:
    lowered = name.lower()
    for canonical, aliases in METRICS.items():
        if lowered == canonical or lowered in aliases:
            return canonical
    return None
