"""Training data: from notebook objects, files or built-in sets, checked against the network.

Everything is checked before a job launches (shapes against the input, labels against the
output units and the loss, NaN/Inf, dtypes), and each problem names the array and what was
expected. Torch tensors and pandas objects are accepted by duck typing: nothing here imports
torch or pandas.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from neural_jupyter.dsl.spec import NetworkSpec
from neural_jupyter.errors import DataError

BUILTIN = ("digits", "synthetic")
SYNTHETIC_SAMPLES = 512
SYNTHETIC_STEPS = 16  # the sequence length of synthetic data for a variable-length input


@dataclass
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    description: str = ""
    names: tuple[str, str] = ("x", "y")
    val_names: tuple[str, str] = ("x_val", "y_val")

    def fingerprint(self) -> str:
        """A hash of every array (names, dtypes, shapes, bytes): same data, same value."""
        digest = hashlib.sha256()
        for name, array in sorted(self.arrays().items()):
            digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"x_train": self.x_train, "y_train": self.y_train}
        if self.x_val is not None and self.y_val is not None:
            out.update(x_val=self.x_val, y_val=self.y_val)
        return out


# --- turning user objects into arrays -----------------------------------------------------------
def as_array(value: Any, name: str) -> np.ndarray:
    """numpy array from a numpy array, torch tensor, pandas object or nested list."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor
        value = value.detach().cpu().numpy()
    elif hasattr(value, "to_numpy"):  # pandas DataFrame / Series
        value = value.to_numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} cannot be read as an array: {exc}") from None
    if array.dtype == object:
        raise DataError(
            f"{name} holds Python objects (dtype object), not numbers",
            hint="convert it with .astype('float32') or encode its categories first",
        )
    return array


def split_frame(frame: Any, target: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) from a DataFrame and the name of its label column."""
    columns = list(getattr(frame, "columns", []))
    if target not in columns:
        raise DataError(
            f"{name} has no column '{target}' (--target)",
            hint="its columns are: " + ", ".join(map(str, columns[:20])),
        )
    if columns.count(target) > 1:
        raise DataError(
            f"{name} has {columns.count(target)} columns named '{target}' (--target); the "
            "label column must be named once",
            hint="rename the duplicated columns",
        )
    return as_array(frame.drop(columns=[target]), name), as_array(frame[target], f"{name}.{target}")


def load_file(path: str | Path, target: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels from ``.npz`` (x/y keys), ``.csv`` (with ``target``) files."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"no data file at {file}")
    if file.suffix == ".npz":
        with _reading(file), np.load(file, allow_pickle=False) as data:
            keys = list(data.files)
            for x_key, y_key in (("x_train", "y_train"), ("x", "y"), ("X", "y"), ("X", "Y")):
                if x_key in keys and y_key in keys:
                    return data[x_key], data[y_key]
            if len(keys) == 2:
                return data[keys[0]], data[keys[1]]
        raise DataError(
            f"{file.name} holds arrays {keys}; expected x_train/y_train, x/y or exactly two"
        )
    if file.suffix == ".csv":
        return _load_csv(file, target)
    raise DataError(f"cannot read {file.name}: use .npz, .npy (x.npy,y.npy) or .csv files")


def _load_csv(file: Path, target: str | None) -> tuple[np.ndarray, np.ndarray]:
    import csv
    import warnings

    if not target:
        raise DataError(f"reading {file.name} needs --target COLUMN to name the labels")
    with _reading(file), file.open(encoding="utf-8", newline="") as handle:
        header = [name.strip() for name in next(csv.reader(handle), [])]
    if not header or header == [""]:
        raise DataError(f"{file.name} is empty; --data needs a CSV file with a header row")
    if target not in header:
        raise DataError(
            f"{file.name} has no column '{target}' (--target)",
            hint="columns: " + ", ".join(header[:20]),
        )
    if header.count(target) > 1:
        raise DataError(
            f"{file.name} has {header.count(target)} columns named '{target}' (--target); "
            "the label column must be named once",
            hint="rename the duplicated columns",
        )
    with _reading(file), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an empty body is reported below, not as a warning
        try:
            table = np.genfromtxt(file, delimiter=",", skip_header=1, dtype="float64")
        except ValueError as exc:  # rows of different lengths
            found = str(exc).replace("Some errors were detected !", "").strip()
            first = found.splitlines()[0].strip() if found else str(exc)
            raise DataError(
                f"{file.name} has rows with a different number of columns than its header "
                f"({len(header)}): {first}",
                hint="every row needs one value per header column",
            ) from None
    if table.size == 0:
        raise DataError(f"{file.name} has a header but no data rows (--data)")
    table = table.reshape(-1, len(header)) if table.ndim == 1 else table
    if table.shape[1] != len(header):
        raise DataError(
            f"{file.name} has {table.shape[1]} columns of data but {len(header)} header names"
        )
    index = header.index(target)
    return np.delete(table, index, axis=1), table[:, index]


class _reading:
    """Turns numpy's and the OS's errors while reading a data file into ``DataError``s."""

    def __init__(self, file: Path) -> None:
        self.file = file

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None or isinstance(exc, DataError):
            return False
        if isinstance(exc, ValueError) and "allow_pickle" in str(exc):
            raise DataError(
                f"{self.file.name} holds Python objects (dtype object), not numbers; such "
                "files are not loaded (loading them could run code)",
                hint="save numeric arrays: np.save(path, x.astype('float32'))",
            ) from None
        if isinstance(exc, (ValueError, OSError, EOFError, UnicodeDecodeError)):
            raise DataError(f"cannot read {self.file.name}: {exc}") from None
        return False


def load_pair(x_path: str, y_path: str) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for path in (x_path, y_path):
        file = Path(path).expanduser()
        if not file.is_file():
            raise DataError(f"no data file at {file}")
        with _reading(file):
            arrays.append(np.load(file, allow_pickle=False))
    return arrays[0], arrays[1]


# --- built-in data sets -------------------------------------------------------------------------
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    resource = resources.files("neural_jupyter.data").joinpath("digits.csv.gz")
    with resource.open("rb") as handle, gzip.open(handle, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype="float32")
    return table[:, :64] / 16.0, table[:, 64].astype("int64")


def digits(spec: NetworkSpec) -> Dataset:
    """scikit-learn's 8×8 digits (1,797 images, 10 classes), shaped for the network."""
    images, labels = _digits_raw()
    known = int(np.prod([size for size in spec.input_shape if size is not None]))
    # a sequence of any length (None) takes what the 64 values leave for it
    shape = tuple(64 // known if size is None else size for size in spec.input_shape)
    if int(np.prod(shape)) != 64:
        raise DataError(
            f"the digits data set holds 8×8 images (64 values) but {spec.name} takes input {shape}",
            hint="use input: (8, 8, 1), (8, 8) or (64,)",
        )
    x = images.reshape((len(images), *shape)).astype("float32")
    return Dataset(
        x,
        _labels_for(spec, labels, 10, "digits"),
        description="digits (built-in)",
        names=("digits.x", "digits.y"),
    )


def _labels_for(spec: NetworkSpec, labels: np.ndarray, classes: int, name: str) -> np.ndarray:
    if spec.loss.labels == "onehot":
        return np.eye(classes, dtype="float32")[labels]
    if spec.loss.kind != "multiclass":
        raise DataError(
            f"the {name} data set is for classification, but {spec.name} uses {spec.loss.name}"
        )
    return labels


def synthetic(spec: NetworkSpec, samples: int = SYNTHETIC_SAMPLES, seed: int = 0) -> Dataset:
    """Random inputs and labels shaped for the network (smoke tests, benchmarks)."""
    rng = np.random.default_rng(seed)
    first = spec.layers[0]
    shape = tuple(SYNTHETIC_STEPS if size is None else size for size in spec.input_shape)
    if spec.input_dtype == "int64":
        x = rng.integers(0, first.values["input_dim"], size=(samples, *shape))
    else:
        x = rng.standard_normal((samples, *shape)).astype("float32")
    out = spec.output_shape
    if spec.loss.kind == "multiclass":
        labels = rng.integers(0, out[-1], size=samples)
        y = _labels_for(spec, labels, out[-1], "synthetic")
    elif spec.loss.kind == "binary":
        y = rng.integers(0, 2, size=(samples, 1)).astype("float32")
    else:
        y = rng.standard_normal((samples, *out)).astype("float32")
    return Dataset(
        x,
        y,
        description=f"synthetic ({samples} random samples)",
        names=("synthetic.x", "synthetic.y"),
    )


# --- resolving what the user named --------------------------------------------------------------
def resolve(
    spec: NetworkSpec,
    data: Any,
    *,
    val: Any = None,
    target: str | None = None,
    namespace: Mapping[str, Any] | None = None,
) -> Dataset:
    """Build a checked ``Dataset`` from what ``--data``/``data=`` named.

    ``data`` may be a built-in name (``digits``, ``synthetic``), a file path, ``"x.npy,y.npy"``,
    ``"X_train,y_train"`` (names looked up in ``namespace``), a DataFrame name/object with
    ``target``, or an ``(x, y)`` pair of arrays.
    """
    if data is None:
        raise DataError(
            "no training data given",
            hint="pass --data X_train,y_train (notebook arrays), --data digits, "
            "--data synthetic or --data path/to/file.npz",
        )
    x, y, names, description = _resolve_one(spec, data, target, namespace or {}, "data")
    if isinstance(x, Dataset):
        dataset = x
    else:
        dataset = Dataset(x, y, description=description, names=names)
    if val is not None:
        vx, vy, vnames, _ = _resolve_one(spec, val, target, namespace or {}, "val")
        if isinstance(vx, Dataset):
            vx, vy, vnames = vx.x_train, vx.y_train, vx.names
        dataset.x_val, dataset.y_val, dataset.val_names = vx, vy, vnames
    validate(spec, dataset)
    return dataset


def _resolve_one(spec, data, target, namespace, argument):
    if isinstance(data, tuple) and len(data) == 2:
        return as_array(data[0], "x"), as_array(data[1], "y"), ("x", "y"), "arrays"
    if not isinstance(data, str):
        if target is not None and hasattr(data, "columns"):
            x, y = split_frame(data, target, "the data frame")
            return x, y, ("features", target), "data frame"
        raise DataError(
            f"--{argument} must name data: 'X,y' variables, a file, 'digits' or 'synthetic'"
        )
    text = data.strip()
    if "://" in text:
        raise DataError(
            f"--{argument} {text!r} is a URL; training data is read from files or notebook "
            "variables",
            hint="download it first (e.g. with urllib or the platform's CLI), then pass the path",
        )
    if text in BUILTIN:
        dataset = digits(spec) if text == "digits" else synthetic(spec)
        return dataset, None, dataset.names, dataset.description
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 2 and all(p.endswith(".npy") for p in parts):
        x, y = load_pair(*parts)
        return x, y, (parts[0], parts[1]), f"files {parts[0]}, {parts[1]}"
    if len(parts) == 2:
        arrays = []
        for name in parts:
            if name not in namespace:
                raise DataError(
                    f"--{argument} names '{name}', which is not defined in the notebook"
                )
            arrays.append(as_array(namespace[name], name))
        return arrays[0], arrays[1], (parts[0], parts[1]), f"notebook arrays {text}"
    if len(parts) == 1 and text in namespace:
        value = namespace[text]
        if target is None:
            raise DataError(f"'{text}' is one object; give --target COLUMN or 'X,y' names")
        x, y = split_frame(value, target, text)
        return x, y, (text, f"{text}.{target}"), f"data frame {text}"
    if len(parts) == 1 and (Path(text).suffix in (".npz", ".csv", ".npy")):
        x, y = load_file(text, target)
        return x, y, (text + ":x", text + ":y"), f"file {text}"
    raise DataError(
        f"cannot find data '{text}'",
        hint="use 'X,y' notebook variables, a .npz/.csv file, 'x.npy,y.npy', "
        "'digits' or 'synthetic'",
    )


# --- checks -------------------------------------------------------------------------------------
def validate(spec: NetworkSpec, dataset: Dataset) -> None:
    """Raise ``DataError`` naming the array for the first mismatch with ``spec``."""
    _check_pair(spec, dataset.x_train, dataset.y_train, dataset.names)
    if dataset.x_val is not None:
        _check_pair(spec, dataset.x_val, dataset.y_val, dataset.val_names)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(N, " + ", ".join(str(v) for v in shape) + ")"


def _fits(shape: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    """``shape`` matches ``expected``, where None (a sequence of any length) matches any size."""
    return len(shape) == len(expected) and all(
        want is None or size == want for size, want in zip(shape, expected, strict=True)
    )


def _check_pair(spec: NetworkSpec, x: np.ndarray, y: np.ndarray, names: tuple[str, str]):
    x_name, y_name = names
    expected = spec.input_shape
    if x.ndim == 0 or not _fits(tuple(x.shape[1:]), expected):
        hint = None
        if (
            x.ndim >= 1
            and None not in expected
            and int(np.prod(x.shape[1:])) == int(np.prod(expected))
        ):
            hint = f"reshape it: {x_name}.reshape(-1, {', '.join(map(str, expected))})"
        raise DataError(
            f"{x_name} has shape {tuple(x.shape)} but {spec.name} expects {_shape_text(expected)}",
            hint=hint,
        )
    if len(x) == 0:
        raise DataError(f"{x_name} is empty")
    if len(y) != len(x):
        raise DataError(f"{x_name} has {len(x)} samples but {y_name} has {len(y)}")
    for array, name in ((x, x_name), (y, y_name)):
        if np.issubdtype(array.dtype, np.complexfloating):
            raise DataError(
                f"{name} holds complex numbers (dtype {array.dtype}); only real numbers train",
                hint=f"pass {name}.real, abs({name}), or both as separate features",
            )
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            raise DataError(f"{name} has dtype {array.dtype}; numbers are needed")
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).sum())
            raise DataError(
                f"{name} contains {bad} NaN or infinite value(s)",
                hint="drop or impute them before training",
            )
    if spec.input_dtype == "int64":
        _check_ids(spec, x, x_name)
    _check_labels(spec, y, y_name)


def _check_ids(spec: NetworkSpec, x: np.ndarray, name: str) -> None:
    vocabulary = spec.layers[0].values["input_dim"]
    if not np.issubdtype(x.dtype, np.integer) and not np.array_equal(x, np.round(x)):
        raise DataError(f"{name} must hold integer token ids for the Embedding layer")
    low, high = x.min(), x.max()
    if low < 0 or high >= vocabulary:
        raise DataError(
            f"{name} holds ids from {low} to {high}, but the Embedding has input_dim="
            f"{vocabulary} (ids 0..{vocabulary - 1})"
        )


def _check_labels(spec: NetworkSpec, y: np.ndarray, name: str) -> None:
    out = spec.output_shape
    loss = spec.loss.name
    labels = spec.loss.labels
    if labels == "auto":  # one-hot rows as wide as the output, else class indices
        labels = "onehot" if y.ndim == 2 and y.shape[1] == out[-1] > 1 else "sparse"
        loss = f"{loss} ({'one-hot' if labels == 'onehot' else 'class index'} labels)"
    if labels == "sparse":
        labels = y.reshape(len(y), -1)
        if y.ndim != 1:
            hint = f"flatten them: {name}.reshape(-1)" if labels.shape[1] == 1 else None
            if labels.shape[1] == out[-1]:
                hint = 'these look one-hot: use loss "categorical_crossentropy" or y.argmax(1)'
            raise DataError(
                f"{name} has shape {tuple(y.shape)}; {loss} needs one integer "
                "class label per sample, shape (N,)",
                hint=hint,
            )
        if not np.array_equal(labels, np.round(labels)):
            raise DataError(f"{name} holds non-integer values; {loss} needs class indices")
        low, high = labels.min(), labels.max()
        if low < 0 or high >= out[-1]:
            raise DataError(
                f"{name} holds labels from {low:g} to {high:g}, but the output has "
                f"{out[-1]} units (labels 0..{out[-1] - 1})",
                hint=f"use Output({int(high) + 1}, ...) or re-encode the labels",
            )
    elif labels == "onehot":
        if y.ndim != 2 or y.shape[1] != out[-1]:
            raise DataError(
                f"{name} has shape {tuple(y.shape)}; {loss} needs one-hot labels "
                f"of shape (N, {out[-1]})",
                hint='for integer labels use "sparse_categorical_crossentropy"',
            )
    elif labels == "binary":
        values = np.unique(y)
        if values.min() < 0 or values.max() > 1:
            raise DataError(f"{name} holds values outside [0, 1]; {loss} needs 0/1 labels")
        if y.reshape(len(y), -1).shape[1] != 1:
            raise DataError(f"{name} has shape {tuple(y.shape)}; {loss} needs shape (N,) or (N, 1)")
    elif int(np.prod(y.shape[1:])) != int(np.prod(out)):
        raise DataError(
            f"{name} has shape {tuple(y.shape)} but the network outputs {_shape_text(out)}"
        )
