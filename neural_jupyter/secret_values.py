"""Where secret values come from, so ``redaction`` can mask them wherever they appear.

* environment variables whose names look secret (``*_SECRET*``, ``*_TOKEN*``, ``*_KEY``,
  ``*PASSWORD*``) and the platforms' own variables (AWS, Azure, Google, Databricks, Kaggle,
  ngrok, Lambda, Paperspace, Hugging Face, Weights & Biases);
* the credential files those platforms' own tools write: a Google service-account key
  (``GOOGLE_APPLICATION_CREDENTIALS``) and gcloud's application-default credentials, AWS
  ``credentials``, ``~/.databrickscfg``, ``kaggle.json``, the Hugging Face token file, ngrok's
  config and ``~/.netrc`` (where ``wandb login`` keeps its key).

Files are re-read only when their modification time changes. Only the values are kept (in
this process's memory); nothing here is ever written anywhere.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import netrc
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

MIN_LENGTH = 8  # shorter environment values ("true", "us-east-1"...) are not treated as secrets

# the platforms' own variables (most also match the generic name rules below)
PLATFORM_VARIABLES = frozenset(
    {
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AZURE_CLIENT_SECRET",
        "AZURE_PASSWORD",
        "AZURE_STORAGE_KEY",
        "AZURE_STORAGE_ACCOUNT_KEY",
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_SAS_TOKEN",
        "AZUREML_TOKEN",
        "DATABRICKS_TOKEN",
        "DATABRICKS_CLIENT_SECRET",
        "DATABRICKS_PASSWORD",
        "KAGGLE_KEY",
        "KAGGLE_API_TOKEN",
        "NGROK_AUTHTOKEN",
        "NGROK_API_KEY",
        "LAMBDA_API_KEY",
        "LAMBDALABS_API_KEY",
        "LAMBDA_CLOUD_API_KEY",
        "PAPERSPACE_API_KEY",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HUGGINGFACEHUB_API_TOKEN",
        "WANDB_API_KEY",
        "OPENAI_API_KEY",
        "GITHUB_TOKEN",
    }
)
_NAME = re.compile(
    r"_SECRET|_TOKEN|PASSWORD|PASSWD|_KEY$|^(?:TOKEN|SECRET)(?:_|$)|AUTHTOKEN|APIKEY"
)
_NOT_SECRET = re.compile(r"_(FILE|PATH|DIR|NAME|ID|URL|URI|ENDPOINT|REGION|TYPE|MODE|HOST|USER)$")
_NOT_VALUE = re.compile(r"^(true|false|yes|no|none|null|on|off|\d{1,9})$", re.I)


def is_secret_variable(name: str) -> bool:
    upper = name.upper()
    if upper in PLATFORM_VARIABLES:
        return True
    return _NAME.search(upper) is not None and _NOT_SECRET.search(upper) is None


def environment_values(environ: os._Environ | dict[str, str] | None = None) -> set[str]:
    """Values of secret-looking variables (long enough to be secrets, not booleans/paths)."""
    environ = os.environ if environ is None else environ
    found = set()
    for name, value in list(environ.items()):
        if not value or len(value) < MIN_LENGTH or not is_secret_variable(name):
            continue
        value = value.strip()
        if _NOT_VALUE.match(value) or value.startswith(("/", "~")):
            continue
        found.add(value)
    return found


# --- credential files -------------------------------------------------------------------------
def _json_values(path: Path, keys: tuple[str, ...]) -> Iterator[str]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        return
    for key in keys:
        value = data.get(key)
        if isinstance(value, str):
            yield from _with_pem_parts(value)


def _with_pem_parts(value: str) -> Iterator[str]:
    """A value and, for a PEM private key, its base64 body and first body line (so a key
    printed in pieces or re-wrapped is still masked)."""
    yield value
    if "PRIVATE KEY-----" in value:
        body = [line.strip() for line in value.splitlines() if line and "-----" not in line]
        if body:
            yield "".join(body)
            yield body[0]


def _ini_values(path: Path, keys: tuple[str, ...]) -> Iterator[str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path, encoding="utf-8")
    for section in [parser.default_section, *parser.sections()]:
        for key in keys:
            value = parser[section].get(key)
            if value:
                yield value.strip()


def _text_value(path: Path) -> Iterator[str]:
    yield path.read_text(encoding="utf-8").strip()


def _ngrok_values(path: Path) -> Iterator[str]:
    for match in re.finditer(
        r"(?m)^\s*(?:authtoken|api_key)\s*:\s*[\"']?([^\s\"']+)", path.read_text(encoding="utf-8")
    ):
        yield match.group(1)


def _netrc_values(path: Path) -> Iterator[str]:
    for _login, _account, password in netrc.netrc(str(path)).hosts.values():
        if password:
            yield password


def _home() -> Path:
    return Path(os.path.expanduser("~"))


def _kaggle_dir() -> Path:
    return Path(os.environ.get("KAGGLE_CONFIG_DIR") or _home() / ".kaggle")


def _sources() -> list[tuple[Path, Callable[[Path], Iterator[str]]]]:
    env = os.environ
    home = _home()
    hf_home = Path(env.get("HF_HOME") or home / ".cache" / "huggingface")
    sources: list[tuple[Path, Callable[[Path], Iterator[str]]]] = [
        (
            Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws" / "credentials"),
            lambda p: _ini_values(p, ("aws_secret_access_key", "aws_session_token")),
        ),
        (
            Path(env.get("DATABRICKS_CONFIG_FILE") or home / ".databrickscfg"),
            lambda p: _ini_values(p, ("token", "password", "client_secret")),
        ),
        (_kaggle_dir() / "kaggle.json", lambda p: _json_values(p, ("key",))),
        (_kaggle_dir() / "access_token", _text_value),
        (Path(env.get("HF_TOKEN_PATH") or hf_home / "token"), _text_value),
        (home / ".config" / "ngrok" / "ngrok.yml", _ngrok_values),
        (Path(env.get("NETRC") or home / ".netrc"), _netrc_values),
        (
            home / ".config" / "gcloud" / "application_default_credentials.json",
            lambda p: _json_values(p, ("private_key", "refresh_token", "client_secret")),
        ),
    ]
    service_account = env.get("GOOGLE_APPLICATION_CREDENTIALS")
    if service_account:
        sources.append(
            (
                Path(service_account).expanduser(),
                lambda p: _json_values(p, ("private_key", "private_key_id", "refresh_token")),
            )
        )
    return sources


_file_cache: dict[Path, tuple[float, frozenset[str]]] = {}


def file_values() -> set[str]:
    """Secret values from the platforms' credential files (cached by modification time)."""
    found: set[str] = set()
    for path, reader in _sources():
        try:
            mtime = path.stat().st_mtime
        except OSError:
            _file_cache.pop(path, None)
            continue
        cached = _file_cache.get(path)
        if cached is None or cached[0] != mtime:
            values: frozenset[str] = frozenset()
            with contextlib.suppress(Exception):  # unreadable or malformed: nothing to add
                values = frozenset(v for v in reader(path) if v and len(v) >= MIN_LENGTH)
            cached = (mtime, values)
            _file_cache[path] = cached
        found.update(cached[1])
    return found


def current_secret_values() -> set[str]:
    return environment_values() | file_values()
