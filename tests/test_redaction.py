"""The redaction filter itself: patterns, values from the environment and the platforms'
credential files, options, JSON safety, and the shortening of long error messages."""

from __future__ import annotations

import json
import secrets

import pytest

from neural_jupyter import redaction
from neural_jupyter.backends.base import ResourceSpec
from neural_jupyter.errors import DSLError, NeuralError, shorten
from neural_jupyter.redaction import MASK, harvest, redact, redact_value, register_secret
from neural_jupyter.secret_values import environment_values, is_secret_variable


def unique(prefix: str = "") -> str:
    return prefix + secrets.token_hex(12)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("aws_secret_access_key=AbCdEf0123456789xyz", "AbCdEf0123456789xyz"),
        ("Authorization: Bearer abcDEF123456", "abcDEF123456"),
        ("Authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ("authorization=tokenvalue99", "tokenvalue99"),
        ("postgres://admin:Pa55w0rdX@db.internal/x", "Pa55w0rdX"),
        ("pip install --index-url https://me:PASSword7@pypi.corp/simple x", "PASSword7"),
        ("git clone https://ghs1234567890abcdefghij@github.com/x", "ghs1234567890abcdefghij"),
        ("password=hunter22x", "hunter22x"),
        ('{"password": "hunter22y"}', "hunter22y"),
        ("--password hunter22z and more", "hunter22z"),
        ("KAGGLE_KEY=0123456789abcdef0123", "0123456789abcdef0123"),
        ("export HF_TOKEN=hf_" + "a1" * 16, "hf_" + "a1" * 16),
        ("token ghp_" + "B" * 36, "ghp_" + "B" * 36),
        ("github_pat_" + "c" * 40, "github_pat_" + "c" * 40),
        ("slack xoxb-1234567890-abcdefghij", "xoxb-1234567890-abcdefghij"),
        ("openai sk-proj-" + "d" * 30, "sk-proj-" + "d" * 30),
        ("id AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
        ("databricks dapi" + "0123456789abcdef" * 2, "dapi" + "0123456789abcdef" * 2),
        ("https://a.blob.core.windows.net/c?sv=1&sig=AbC%2Bdef123&se=2", "AbC%2Bdef123"),
        ("AccountKey=QWERTYuiop1234567890==;EndpointSuffix=x", "QWERTYuiop1234567890=="),
        ("jwt eyJhbGciOiJIUzI1.eyJzdWIiOiIxMjM0.SflKxwRJSMeKKF2QT4", "SflKxwRJSMeKKF2QT4"),
    ],
)
def test_patterns_mask_the_secret_and_keep_the_rest(text, secret):
    masked = redact(text)
    assert secret not in masked and MASK in masked
    assert masked.split(MASK)[0] in text  # what comes before the secret is kept


@pytest.mark.parametrize(
    "text",
    [
        "step 12: lr=0.001 grad_norm=0.12 throughput=123.4 samples/s",
        "sort_key=name monkey=business",
        "The security token included in the request is invalid",
        "task-12 finished; epoch 3/10",
        "max_tokens: 512",
    ],
)
def test_ordinary_lines_are_left_alone(text):
    assert redact(text) == text


def test_a_secret_environment_value_is_masked_on_its_own(monkeypatch):
    value = unique("v")
    monkeypatch.setenv("MYSERVICE_API_TOKEN", value)
    monkeypatch.setenv("PLAIN_SETTING", "not-a-secret-value")
    redaction.refresh()
    assert redact(f"printed {value} alone") == f"printed {MASK} alone"
    assert redact("not-a-secret-value") == "not-a-secret-value"


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("AWS_SECRET_ACCESS_KEY", True),
        ("AWS_SESSION_TOKEN", True),
        ("AZURE_CLIENT_SECRET", True),
        ("AZURE_STORAGE_CONNECTION_STRING", True),
        ("DATABRICKS_TOKEN", True),
        ("KAGGLE_KEY", True),
        ("NGROK_AUTHTOKEN", True),
        ("LAMBDA_API_KEY", True),
        ("PAPERSPACE_API_KEY", True),
        ("HF_TOKEN", True),
        ("HUGGING_FACE_HUB_TOKEN", True),
        ("WANDB_API_KEY", True),
        ("DB_PASSWORD", True),
        ("MY_SECRET_SAUCE", True),
        ("AWS_ACCESS_KEY_ID", False),
        ("HF_TOKEN_PATH", False),
        ("TOKENIZERS_PARALLELISM", False),
        ("KAGGLE_USERNAME", False),
        ("GOOGLE_APPLICATION_CREDENTIALS", False),  # a path: its file is read instead
    ],
)
def test_which_environment_variables_are_secret(name, secret):
    assert is_secret_variable(name) is secret


def test_short_or_boolean_environment_values_are_not_treated_as_secrets():
    found = environment_values({"X_TOKEN": "true", "Y_SECRET": "1234", "Z_KEY": "/a/path/here"})
    assert found == set()


def test_google_service_account_key_from_its_file(tmp_path, monkeypatch):
    body = [secrets.token_urlsafe(48)[:64] for _ in range(4)]
    private_key = (
        "-----BEGIN PRIVATE KEY-----\n" + "\n".join(body) + "\n-----END PRIVATE KEY-----\n"
    )
    key_file = tmp_path / "sa.json"
    key_id = secrets.token_hex(20)
    key_file.write_text(
        json.dumps(
            {"type": "service_account", "private_key_id": key_id, "private_key": private_key}
        )
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    redaction.refresh()
    assert key_id not in redact(f"key id {key_id}")
    assert body[0] not in redact(f"line {body[0]}")
    assert body[1] not in redact(json.dumps({"k": private_key}))


def test_platform_credential_files(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    kaggle = unique("kg")
    (home / ".kaggle" / "kaggle.json").write_text(json.dumps({"username": "u", "key": kaggle}))
    (home / ".aws").mkdir()
    aws = unique("aws")
    (home / ".aws" / "credentials").write_text(
        f"[default]\naws_access_key_id = AKIA0000\naws_secret_access_key = {aws}\n"
    )
    hf = unique("hf")
    (home / ".cache" / "huggingface").mkdir(parents=True)
    (home / ".cache" / "huggingface" / "token").write_text(hf)
    wandb = unique("wb")
    (home / ".netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {wandb}\n")
    (home / ".netrc").chmod(0o600)
    databricks = unique("dbx")
    (home / ".databrickscfg").write_text(f"[DEFAULT]\nhost = https://x\ntoken = {databricks}\n")
    monkeypatch.setenv("HOME", str(home))
    for name in ("KAGGLE_CONFIG_DIR", "HF_HOME", "HF_TOKEN_PATH", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_SHARED_CREDENTIALS_FILE", raising=False)
    monkeypatch.delenv("DATABRICKS_CONFIG_FILE", raising=False)
    redaction.refresh()
    for value in (kaggle, aws, hf, wandb, databricks):
        assert value not in redact(f"x {value} y"), value


def test_options_are_masked_by_name_pattern_and_value():
    token, password, opt = unique("t"), unique("p"), unique("o")
    setup = f"export HF_TOKEN={token}; pip install --index-url https://me:{password}@pypi.corp/s x"
    spec = ResourceSpec(extra={"setup": setup, "api_token": opt, "region": "eu-west-1"})
    public = spec.public()
    text = json.dumps(public)
    for value in (token, password, opt):
        assert value not in text
        assert value not in redact(f"the job printed {value} on its own")
    assert public["extra.region"] == "eu-west-1"


def test_harvest_registers_what_the_patterns_find():
    value = unique("h")
    harvest(f"curl -H 'Authorization: Bearer {value}' https://x")
    assert redact(f"bare {value}") == f"bare {MASK}"


def test_redaction_keeps_json_lines_valid():
    quoted = 'se"cr\\et-' + unique()
    register_secret(quoted)
    lines = [
        json.dumps({"event": "error", "message": f'token={unique()}" tail'}),
        json.dumps({"event": "error", "message": f"value {quoted} inside"}),
        json.dumps({"event": "status", "message": "https://u:p4ssw0rd@h/x \\ back"}),
        json.dumps(
            {
                "event": "error",
                "traceback": "-----BEGIN RSA PRIVATE KEY-----\nAAA\n-----END RSA PRIVATE KEY-----",
            }
        ),
    ]
    for line in lines:
        masked = redact(line)
        assert masked != line
        json.loads(masked)  # still JSON
        assert quoted not in json.loads(masked).get("message", "")


def test_redact_value_masks_secret_keys_and_walks_structures():
    value = unique("rv")
    data = {"password": value, "nested": [{"url": f"https://u:{value}@h"}], "n": 3, "lr": 0.1}
    out = redact_value(data)
    assert value not in json.dumps(out)
    assert out["n"] == 3 and out["lr"] == 0.1 and out["password"] == MASK
    assert redact_value({"token_dim": 64, "max_tokens": 512}) == {
        "token_dim": 64,
        "max_tokens": 512,
    }


def test_long_error_messages_are_shortened():
    text = shorten('expected a name, got "' + "x" * 1_000_000 + '"')
    assert len(text) < 300 and "1,000,002 characters" in text
    error = NeuralError("bad value " + "y" * 5000 + " " + "z " * 5000)
    assert len(str(error)) < 2200
    error = DSLError("no", line=1, column=500_000, source="a" * 499_999 + "Z" + "a" * 500_000)
    shown = error.details()
    assert all(len(line) < 200 for line in shown)
    assert shown[0][shown[1].index("^")] == "Z"  # the caret stays under the place
