"""Every layer kind, compiled to PyTorch and Keras: the models build, run, match the spec's
shapes and parameter counts, and compute the same function (Keras weights ported to PyTorch).

``CASES`` is also used by ``test_generated_code_style.py``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pytest

from neural_jupyter.codegen import keras as keras_codegen
from neural_jupyter.codegen import pytorch as pytorch_codegen
from neural_jupyter.compiler import CompiledModel, compile_model
from neural_jupyter.dsl.layers import LAYERS
from neural_jupyter.dsl.params import ACTIVATIONS

try:
    import torch
    from torch import nn
except ImportError:  # pragma: no cover - the test extra installs torch
    torch = nn = None
try:
    import keras
except ImportError:  # pragma: no cover - the test extra installs keras
    keras = None

needs_frameworks = pytest.mark.skipif(
    torch is None or keras is None, reason="needs torch and keras (pip install '.[test]')"
)


@dataclass(frozen=True)
class Case:
    id: str
    input: str
    layers: tuple[str, ...]
    loss: str = "mse"

    @property
    def source(self) -> str:
        body = "".join(f"    {layer}\n" for layer in self.layers)
        return (
            f'network Net {{\n  input: {self.input}\n  layers:\n{body}  loss: "{self.loss}"\n}}\n'
        )


def _case(id: str, input: str, *layers: str, loss: str = "mse") -> Case:
    return Case(id, input, layers, loss)


CASES: list[Case] = [
    # dense and output
    _case("dense", "(8,)", 'Dense(4, "relu")'),
    _case("dense_no_bias", "(8,)", "Dense(4, use_bias=False)"),
    _case("dense_3d_middle", "(5, 6)", 'Dense(3, activation="tanh")', "Dense(2)"),
    _case("output_softmax", "(8,)", "Dense(6)", 'Output(3, "softmax")', loss="cce"),
    _case(
        "output_sparse_logits",
        "(8,)",
        "Output(4)",
        loss="sparse_categorical_crossentropy",
    ),
    _case("output_sigmoid", "(8,)", 'Output(1, "sigmoid")', loss="binary_crossentropy"),
    _case("output_regression_3d", "(4, 5)", "Output(2)", loss="mse"),
    _case("output_softmax_mse", "(8,)", 'Output(3, "softmax")', loss="mse"),
    *[_case(f"dense_{a}", "(6,)", f'Dense(5, "{a}")') for a in ACTIVATIONS],
    # convolutions
    _case("conv1d_valid", "(9, 3)", "Conv1D(4, 3)"),
    _case("conv1d_same", "(9, 3)", 'Conv1D(4, 3, padding="same", activation="relu")'),
    _case("conv1d_same_stride_asym", "(8, 3)", 'Conv1D(4, 3, strides=2, padding="same")'),
    _case("conv1d_dilation", "(12, 2)", "Conv1D(3, 3, dilation_rate=2, use_bias=False)"),
    _case("conv1d_stride_valid", "(11, 2)", "Conv1D(3, 4, strides=3)"),
    _case("conv2d_valid", "(8, 8, 1)", 'Conv2D(filters=4, kernel_size=3, activation="relu")'),
    _case("conv2d_same", "(7, 6, 2)", 'Conv2D(4, 3, padding="same")'),
    _case("conv2d_same_even_kernel", "(7, 6, 2)", 'Conv2D(4, 2, padding="same")'),
    _case("conv2d_same_stride_sym", "(7, 7, 2)", 'Conv2D(4, 3, strides=2, padding="same")'),
    _case("conv2d_same_stride_asym", "(8, 8, 2)", 'Conv2D(4, 3, strides=2, padding="same")'),
    _case(
        "conv2d_same_mixed_strides",
        "(8, 7, 2)",
        'Conv2D(4, (3, 2), strides=(2, 1), padding="same")',
    ),
    _case("conv2d_same_dilation", "(9, 9, 2)", 'Conv2D(3, 3, padding="same", dilation_rate=2)'),
    _case("conv2d_valid_dilation", "(9, 9, 2)", "Conv2D(3, 3, dilation_rate=(2, 1))"),
    _case("conv2d_no_bias", "(6, 6, 3)", "Conv2D(2, (1, 3), use_bias=False)"),
    _case("conv2d_stride_valid", "(9, 8, 1)", "Conv2D(2, 3, strides=(2, 3))"),
    _case("conv3d_valid", "(5, 5, 5, 1)", "Conv3D(2, 3)"),
    _case("conv3d_same_stride", "(5, 4, 6, 2)", 'Conv3D(2, 3, strides=2, padding="same")'),
    # pooling
    _case("maxpool1d", "(9, 3)", "MaxPooling1D(2)"),
    _case("maxpool1d_same", "(9, 3)", 'MaxPooling1D(2, padding="same")'),
    _case("maxpool2d", "(8, 8, 2)", "MaxPooling2D()"),
    _case("maxpool2d_same_asym", "(5, 5, 2)", 'MaxPooling2D(2, padding="same")'),
    _case("maxpool2d_stride", "(9, 9, 2)", "MaxPooling2D(3, strides=2)"),
    _case("maxpool2d_same_stride", "(6, 7, 2)", 'MaxPooling2D(3, strides=2, padding="same")'),
    _case("maxpool3d", "(4, 4, 4, 2)", "MaxPooling3D(2)"),
    _case("maxpool3d_same", "(5, 3, 4, 1)", 'MaxPooling3D(2, padding="same")'),
    _case("avgpool1d", "(9, 3)", "AveragePooling1D(3)"),
    _case("avgpool1d_same", "(7, 2)", 'AveragePooling1D(2, padding="same")'),
    _case("avgpool2d", "(6, 6, 2)", "AveragePooling2D(2)"),
    _case("avgpool2d_same", "(5, 5, 2)", 'AveragePooling2D(3, strides=2, padding="same")'),
    _case("avgpool2d_same_stride1", "(6, 5, 2)", 'AveragePooling2D(2, strides=1, padding="same")'),
    _case("global_avg1d", "(7, 3)", "GlobalAveragePooling1D()"),
    _case("global_max1d", "(7, 3)", "Conv1D(4, 3)", "GlobalMaxPooling1D()"),
    _case("global_avg2d", "(5, 6, 3)", "Conv2D(4, 3)", "GlobalAveragePooling2D()"),
    _case("global_max2d", "(5, 6, 3)", "GlobalMaxPooling2D()", "Dense(2)"),
    # core
    _case("flatten", "(4, 3, 2)", "Flatten()", "Dense(3)"),
    _case("flatten_after_conv", "(5, 4, 2)", "Conv2D(3, 2)", "Flatten()", "Dense(3)"),
    _case(
        "flatten_reshape_roundtrip",
        "(4, 4, 2)",
        "Conv2D(2, 1)",
        "Flatten()",
        "Reshape((4, 4, 2))",
        "Conv2D(1, 3)",
    ),
    _case("reshape", "(12,)", "Reshape((3, 4))", "LSTM(2)"),
    _case("reshape_minus_one", "(4, 4, 2)", "Reshape((-1, 8))"),
    _case("reshape_after_conv", "(4, 4, 2)", "Conv2D(3, 1)", "Reshape((16, 3))", "GRU(2)"),
    _case("dropout", "(8,)", "Dense(4)", "Dropout(0.5)", "Dense(2)"),
    _case("dropout_conv", "(6, 6, 2)", "Conv2D(3, 3)", "Dropout(0.25)", "Flatten()"),
    _case("batchnorm_1d", "(6,)", "BatchNormalization()"),
    _case("batchnorm_seq", "(5, 4)", "BatchNormalization(momentum=0.9, epsilon=0.01)"),
    _case("batchnorm_2d", "(3, 4, 5)", "Conv2D(3, 1)", "BatchNormalization()"),
    _case("batchnorm_3d", "(3, 3, 2, 4)", "BatchNormalization(epsilon=0.0001)"),
    _case("layernorm", "(5, 3)", "LayerNormalization()", "Dense(2)"),
    _case("layernorm_after_conv", "(4, 3, 2)", "Conv2D(3, 1)", "LayerNormalization(epsilon=0.01)"),
    _case("activation", "(6,)", 'Activation("relu")', "Dense(2)"),
    _case("activation_softmax_after_conv", "(6, 5, 2)", "Conv2D(3, 3)", 'Activation("softmax")'),
    _case(
        "activation_log_softmax_after_conv1d",
        "(6, 2)",
        "Conv1D(3, 3)",
        'Activation("log_softmax")',
    ),
    _case(
        "activation_softmax_output",
        "(6,)",
        "Dense(3)",
        'Activation("softmax")',
        loss="categorical_crossentropy",
    ),
    # recurrent and attention
    _case("embedding_lstm", "(6,)", "Embedding(20, 4)", "LSTM(3)"),
    _case("embedding_flatten", "(5,)", "Embedding(10, 3)", "Flatten()", "Dense(2)"),
    _case("simple_rnn", "(6, 4)", "SimpleRNN(3)"),
    _case(
        "simple_rnn_relu_seq", "(6, 4)", 'SimpleRNN(3, return_sequences=true, activation="relu")'
    ),
    _case("lstm", "(6, 4)", "LSTM(3)"),
    _case("lstm_seq", "(6, 4)", "LSTM(3, return_sequences=True)", "LSTM(2)"),
    _case("gru", "(6, 4)", "GRU(3)"),
    _case("gru_seq", "(6, 4)", "GRU(3, return_sequences=true)"),
    *[
        _case(
            f"bidirectional_{rnn.lower()}_{mode}_{'seq' if seq else 'last'}",
            "(5, 3)",
            f"Bidirectional({rnn}(2, return_sequences={'true' if seq else 'false'}), "
            f'merge_mode="{mode}")',
        )
        for rnn in ("SimpleRNN", "LSTM", "GRU")
        for mode in ("concat", "sum", "mul", "ave")
        for seq in (True, False)
    ],
    _case("transformer", "(6, 8)", "TransformerEncoder(2, 16)"),
    _case(
        "transformer_gelu",
        "(5, 6)",
        'TransformerEncoder(num_heads=3, ff_dim=8, dropout=0.0, activation="gelu")',
        "GlobalAveragePooling1D()",
    ),
    _case("embedding_transformer", "(7,)", "Embedding(30, 8)", "TransformerEncoder(4, 8)"),
    # structure
    _case(
        "residual_conv_bn",
        "(6, 6, 4)",
        'Residual { Conv2D(4, 3, padding="same") BatchNormalization() }',
    ),
    _case("residual_dense", "(5,)", 'Residual { Dense(8, "relu") Dense(5) }', "Dense(2)"),
    _case(
        "residual_after_conv",
        "(6, 6, 2)",
        "Conv2D(4, 1)",
        'Residual { Conv2D(4, 3, padding="same", activation="relu") }',
        "Flatten()",
    ),
    _case("residual_dense_after_conv", "(5, 5, 2)", "Conv2D(4, 1)", "Residual { Dense(4) }"),
    _case(
        "residual_nested",
        "(5, 5, 3)",
        'Residual { Residual { Conv2D(3, 3, padding="same") } BatchNormalization() Dense(3) }',
    ),
    _case("conv1d_flatten", "(6, 2)", "Conv1D(3, 2)", "Flatten()", "Dense(2)"),
    _case("dense_after_conv", "(4, 3, 2)", "Conv2D(3, 2)", 'Dense(2, "softmax")'),
    _case("embedding_conv1d", "(9,)", "Embedding(12, 4)", "Conv1D(3, 3)", "GlobalMaxPooling1D()"),
    _case("output_after_conv_regression", "(4, 4, 2)", "Conv2D(3, 3)", "Output(2)"),
    _case(
        "lstm_batchnorm_activation",
        "(6, 3)",
        "LSTM(4, return_sequences=true)",
        "BatchNormalization()",
        'Activation("softmax")',
    ),
    _case(
        "cnn_classifier",
        "(8, 8, 1)",
        'Conv2D(4, 3, activation="relu", padding="same")',
        "MaxPooling2D(2)",
        "BatchNormalization()",
        "Flatten()",
        'Dense(8, "relu")',
        "Dropout(0.2)",
        'Output(3, "softmax")',
        loss="sparse_categorical_crossentropy",
    ),
]
CASE_IDS = [case.id for case in CASES]


@functools.cache
def compiled(case: Case) -> CompiledModel:
    return compile_model(case.source, "pytorch")


def sample_input(model: CompiledModel, batch: int = 2, seed: int = 0) -> np.ndarray:
    spec = model.spec
    rng = np.random.default_rng(seed)
    shape = (batch, *spec.input_shape)
    if spec.input_dtype == "int64":
        vocabulary = spec.layers[0].values["input_dim"]
        return rng.integers(0, vocabulary, shape).astype("int64")
    return rng.normal(size=shape).astype("float32")


def run_torch(module, x: np.ndarray, predict: bool = False) -> np.ndarray:
    module.eval()
    with torch.no_grad():
        tensor = torch.from_numpy(x)
        out = module.predict(tensor) if predict else module(tensor)
    return out.numpy()


def run_keras(model, x: np.ndarray) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))


def torch_trainable(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def keras_trainable(model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def covered_kinds(case: Case) -> set[str]:
    kinds = set()
    for layer in compiled(case).spec.all_layers():
        kinds.add(layer.kind)
        inner = layer.values.get("layer")
        if inner is not None:
            kinds.add(inner.kind)
    return kinds


# --- registry coverage --------------------------------------------------------------------------
def test_every_registered_layer_has_cases():
    covered = set().union(*(covered_kinds(case) for case in CASES))
    assert covered == set(LAYERS), f"layers without a case: {sorted(set(LAYERS) - covered)}"


@pytest.mark.parametrize("emitters", [pytorch_codegen.EMITTERS, keras_codegen.EMITTERS])
def test_emitters_cover_exactly_the_registry(emitters):
    assert set(emitters) == set(LAYERS)


def test_case_ids_are_unique():
    assert len(set(CASE_IDS)) == len(CASE_IDS)


# --- per case: shapes and parameter counts ------------------------------------------------------
@needs_frameworks
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_pytorch_model_matches_spec(case):
    model = compiled(case)
    module = model.build()
    assert isinstance(module, nn.Module)
    out = run_torch(module, sample_input(model))
    assert out.shape == (2, *model.spec.output_shape)
    assert np.isfinite(out).all()
    assert torch_trainable(module) == model.spec.trainable_params("pytorch")


@needs_frameworks
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_keras_model_matches_spec(case):
    model = compiled(case).for_framework("keras")
    built = model.build()
    out = run_keras(built, sample_input(model))
    assert out.shape == (2, *model.spec.output_shape)
    assert np.isfinite(out).all()
    assert keras_trainable(built) == model.spec.trainable_params("keras")


# --- per case: both frameworks compute the same function ----------------------------------------
def _set(param, value: np.ndarray) -> None:
    assert tuple(param.shape) == tuple(value.shape), (tuple(param.shape), value.shape)
    with torch.no_grad():
        param.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype="float32")))


def _find(module, kinds):
    found = [m for m in module.modules() if isinstance(m, kinds)]
    assert len(found) == 1, f"expected one {kinds} in {module}"
    return found[0]


def _gru_gates(a: np.ndarray, axis: int = -1) -> np.ndarray:
    """Keras orders GRU gates (update, reset, candidate), PyTorch (reset, update, new)."""
    z, r, h = np.split(a, 3, axis=axis)
    return np.concatenate([r, z, h], axis=axis)


def _port_recurrent(kind: str, keras_layer, module, suffix: str = "") -> None:
    kernel, recurrent, bias = (np.asarray(w) for w in keras_layer.get_weights())
    if kind == "GRU":  # reset_after=True: separate input and recurrent biases, like PyTorch
        kernel, recurrent = _gru_gates(kernel), _gru_gates(recurrent)
        bias_ih, bias_hh = _gru_gates(bias[0]), _gru_gates(bias[1])
    else:
        bias_ih, bias_hh = bias, np.zeros_like(bias)
    _set(getattr(module, f"weight_ih_l0{suffix}"), kernel.T)
    _set(getattr(module, f"weight_hh_l0{suffix}"), recurrent.T)
    _set(getattr(module, f"bias_ih_l0{suffix}"), bias_ih)
    _set(getattr(module, f"bias_hh_l0{suffix}"), bias_hh)


def _port_transformer(layer, keras_layer, module) -> None:
    width = layer.input_shape[-1]
    attention = keras_layer.attention
    projections = (attention._query_dense, attention._key_dense, attention._value_dense)
    _set(
        module.self_attn.in_proj_weight,
        np.concatenate([np.asarray(d.kernel).reshape(width, width).T for d in projections]),
    )
    _set(
        module.self_attn.in_proj_bias,
        np.concatenate([np.asarray(d.bias).reshape(width) for d in projections]),
    )
    output = attention._output_dense
    _set(module.self_attn.out_proj.weight, np.asarray(output.kernel).reshape(width, width).T)
    _set(module.self_attn.out_proj.bias, np.asarray(output.bias))
    pairs = (
        (keras_layer.feed_forward_in, module.linear1),
        (keras_layer.feed_forward_out, module.linear2),
    )
    for dense, linear in pairs:
        _set(linear.weight, np.asarray(dense.kernel).T)
        _set(linear.bias, np.asarray(dense.bias))
    for norm, torch_norm in (
        (keras_layer.norm_1, module.norm1),
        (keras_layer.norm_2, module.norm2),
    ):
        _set(torch_norm.weight, np.asarray(norm.gamma))
        _set(torch_norm.bias, np.asarray(norm.beta))


def port_weights(layer, keras_model, module) -> None:
    """Copy the Keras weights of ``layer`` (a LayerSpec) into the PyTorch module."""
    kind = layer.kind
    if kind == "Residual":
        for child in layer.children:
            port_weights(child, keras_model, module)
        return
    keras_layer = keras_model.get_layer(layer.name)
    weights = [np.asarray(w) for w in keras_layer.get_weights()]
    if not weights:
        return
    target = getattr(module, layer.name)
    if kind in ("Dense", "Output"):
        linear = _find(target, nn.Linear)
        _set(linear.weight, weights[0].T)
        if len(weights) > 1:
            _set(linear.bias, weights[1])
    elif kind.startswith("Conv"):
        conv = _find(target, nn.modules.conv._ConvNd)
        n = weights[0].ndim - 2  # Keras (*kernel, in, out) -> PyTorch (out, in, *kernel)
        _set(conv.weight, weights[0].transpose(n + 1, n, *range(n)))
        if len(weights) > 1:
            _set(conv.bias, weights[1])
    elif kind == "BatchNormalization":
        gamma, beta, mean, variance = weights
        for param, value in zip(
            (target.weight, target.bias, target.running_mean, target.running_var),
            (gamma, beta, mean, variance),
            strict=True,
        ):
            _set(param, value)
    elif kind in ("LayerNormalization", "Embedding"):
        for param, value in zip(target.parameters(), weights, strict=True):
            _set(param, value)
    elif kind in ("SimpleRNN", "LSTM", "GRU"):
        _port_recurrent(kind, keras_layer, target)
    elif kind == "Bidirectional":
        inner = layer.values["layer"].kind
        _port_recurrent(inner, keras_layer.forward_layer, target)
        _port_recurrent(inner, keras_layer.backward_layer, target, "_reverse")
    elif kind == "TransformerEncoder":
        _port_transformer(layer, keras_layer, target)
    else:  # pragma: no cover - a new layer with weights needs a port here
        raise AssertionError(f"no weight port for {kind}")


def _randomize_batchnorm_statistics(model: CompiledModel, keras_model) -> None:
    rng = np.random.default_rng(7)
    for layer in model.spec.all_layers():
        if layer.kind == "BatchNormalization":
            keras_layer = keras_model.get_layer(layer.name)
            gamma, beta, mean, variance = keras_layer.get_weights()
            keras_layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                    rng.normal(size=beta.shape).astype("float32"),
                    rng.normal(size=mean.shape).astype("float32"),
                    rng.uniform(0.5, 2.0, variance.shape).astype("float32"),
                ]
            )


@needs_frameworks
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_pytorch_and_keras_compute_the_same_function(case):
    model = compiled(case)
    keras_model = model.for_framework("keras").build()
    module = model.build()
    _randomize_batchnorm_statistics(model, keras_model)
    for layer in model.spec.layers:
        port_weights(layer, keras_model, module)
    x = sample_input(model, batch=3, seed=1)
    # with a fused softmax/sigmoid, forward() gives logits and predict() what Keras gives
    expected = run_keras(keras_model, x)
    got = run_torch(module, x, predict=model.spec.fused_output_activation is not None)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


# --- numerics that must follow Keras ------------------------------------------------------------
def _same_pool_reference(x: np.ndarray, pool: int, stride: int, reduce) -> np.ndarray:
    """TF/Keras "same" pooling of (batch, h, w, c), written out: windows clipped to the input.

    The output has ceil(n / stride) cells per axis; the padding (pool - stride or so) is split
    with the smaller half before. Padded cells take no part in the max or the mean.
    """
    batch, height, width, channels = x.shape
    out_h, out_w = -(-height // stride), -(-width // stride)
    pad_h = max((out_h - 1) * stride + pool - height, 0) // 2
    pad_w = max((out_w - 1) * stride + pool - width, 0) // 2
    out = np.zeros((batch, out_h, out_w, channels), dtype="float64")
    for i in range(out_h):
        for j in range(out_w):
            top, left = i * stride - pad_h, j * stride - pad_w
            rows = slice(max(top, 0), min(top + pool, height))
            cols = slice(max(left, 0), min(left + pool, width))
            out[:, i, j, :] = reduce(x[:, rows, cols, :], axis=(1, 2))
    return out


SAME_POOLS = [(5, 2, 2), (5, 3, 2), (6, 3, 2), (5, 2, 1), (4, 3, 1), (7, 3, 1)]
POOL_KINDS = [("AveragePooling2D", np.mean), ("MaxPooling2D", np.max)]


def _pool_model_and_input(kind: str, size: int, pool: int, stride: int):
    layer = f'{kind}({pool}, strides={stride}, padding="same")'
    model = compile_model(Case("pool", f"({size}, {size}, 2)", (layer,)).source)
    # negative values: a zero-padded cell would win a max or shrink a mean
    x = -1.0 - np.arange(2 * size * size * 2, dtype="float32").reshape(2, size, size, 2)
    return model, x


@needs_frameworks
@pytest.mark.parametrize("kind,reduce", POOL_KINDS)
@pytest.mark.parametrize("size,pool,stride", SAME_POOLS)
def test_same_pooling_in_pytorch_follows_keras_semantics(kind, reduce, size, pool, stride):
    model, x = _pool_model_and_input(kind, size, pool, stride)
    expected = _same_pool_reference(x, pool, stride, reduce)
    np.testing.assert_allclose(run_torch(model.build(), x), expected, rtol=1e-6)


@needs_frameworks
@pytest.mark.parametrize("kind,reduce", POOL_KINDS)
@pytest.mark.parametrize("size,pool,stride", SAME_POOLS)
def test_same_pooling_reference_agrees_with_keras(kind, reduce, size, pool, stride):
    """The reference is what Keras means by "same" (as on TensorFlow)."""
    total = max((-(-size // stride) - 1) * stride + pool - size, 0)
    if kind.startswith("Average") and total % 2 and keras.backend.backend() == "torch":
        pytest.skip(
            "Keras's torch backend pads uneven 'same' average pooling by replicating edge "
            "values (keras/src/backend/torch/nn.py), unlike TensorFlow and JAX"
        )
    model, x = _pool_model_and_input(kind, size, pool, stride)
    expected = _same_pool_reference(x, pool, stride, reduce)
    got = run_keras(model.for_framework("keras").build(), x)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@needs_frameworks
def test_same_average_pooling_on_5x5_by_hand():
    """2×2 windows, stride 2, on 5×5: the last row/column windows hold 2 or 1 real cells."""
    model = compile_model(
        Case("pool", "(5, 5, 1)", ('AveragePooling2D(2, padding="same")',)).source
    )
    x = np.arange(25, dtype="float32").reshape(1, 5, 5, 1)
    got = run_torch(model.build(), x)[0, :, :, 0]
    expected = np.array(
        [
            [(0 + 1 + 5 + 6) / 4, (2 + 3 + 7 + 8) / 4, (4 + 9) / 2],
            [(10 + 11 + 15 + 16) / 4, (12 + 13 + 17 + 18) / 4, (14 + 19) / 2],
            [(20 + 21) / 2, (22 + 23) / 2, 24.0],
        ]
    )
    np.testing.assert_allclose(got, expected)


@needs_frameworks
def test_conv2d_takes_channels_last_input():
    """An NHWC tensor with H, W and C all different: a 1×1 conv mixes the channels only."""
    model = compile_model(Case("nhwc", "(4, 5, 3)", ("Conv2D(1, 1, use_bias=False)",)).source)
    module = model.build()
    conv = _find(getattr(module, model.spec.layers[0].name), nn.Conv2d)
    _set(conv.weight, np.array([1.0, 10.0, 100.0], dtype="float32").reshape(1, 3, 1, 1))
    x = np.random.default_rng(0).normal(size=(2, 4, 5, 3)).astype("float32")
    got = run_torch(module, x)
    assert got.shape == (2, 4, 5, 1)
    expected = x @ np.array([1.0, 10.0, 100.0], dtype="float32")
    np.testing.assert_allclose(got[..., 0], expected, rtol=1e-5, atol=1e-5)


@needs_frameworks
def test_flatten_after_conv_is_channels_last_order():
    """Flatten sees (h, w, c) order as in Keras, so values keep their place across Reshape."""
    model = compile_model(
        Case("flat", "(2, 3, 4)", ("Conv2D(4, 1, use_bias=False)", "Flatten()")).source
    )
    module = model.build()
    conv = _find(getattr(module, model.spec.layers[0].name), nn.Conv2d)
    _set(conv.weight, np.eye(4, dtype="float32").reshape(4, 4, 1, 1))
    x = np.random.default_rng(0).normal(size=(2, 2, 3, 4)).astype("float32")
    np.testing.assert_allclose(run_torch(module, x), x.reshape(2, -1), rtol=1e-6)


@needs_frameworks
def test_softmax_after_conv_normalizes_the_channel_axis():
    model = compiled(CASES[CASE_IDS.index("activation_softmax_after_conv")])
    x = sample_input(model)
    for out in (run_torch(model.build(), x), run_keras(model.for_framework("keras").build(), x)):
        np.testing.assert_allclose(out.sum(axis=-1), 1.0, rtol=1e-5)
        assert (out > 0).all()


@needs_frameworks
@pytest.mark.parametrize(
    "output,loss,activation",
    [
        ('Output(4, "softmax")', "categorical_crossentropy", "softmax"),
        ('Output(4, "softmax")', "sparse_categorical_crossentropy", "softmax"),
        ('Output(1, "sigmoid")', "binary_crossentropy", "sigmoid"),
    ],
)
def test_crossentropy_output_returns_logits_and_predict_probabilities(output, loss, activation):
    model = compile_model(Case("clf", "(6,)", ("Dense(5)", output), loss=loss).source)
    assert model.spec.fused_output_activation == activation
    module = model.build()
    assert module.output_activation == activation
    x = sample_input(model, batch=4)
    logits = run_torch(module, x)
    probabilities = run_torch(module, x, predict=True)
    # forward() is the plain linear output: recompute it from the layers
    with torch.no_grad():
        hidden = getattr(module, model.spec.layers[0].name)(torch.from_numpy(x))
        raw = getattr(module, model.spec.layers[1].name)(hidden).numpy()
    np.testing.assert_allclose(logits, raw, rtol=1e-6)
    if activation == "softmax":
        expected = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
        assert not np.allclose(logits.sum(axis=-1), 1.0)
    else:
        expected = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5)


@needs_frameworks
def test_softmax_output_without_crossentropy_is_applied_in_forward():
    model = compile_model(Case("reg", "(6,)", ('Output(3, "softmax")',), loss="mse").source)
    assert model.spec.fused_output_activation is None
    module = model.build()
    assert not hasattr(module, "predict")
    np.testing.assert_allclose(run_torch(module, sample_input(model)).sum(axis=-1), 1.0, rtol=1e-5)
