"""Redaction of secrets from anything shown, logged or stored.

Two guards, applied together by ``redact``:

* **values**: exact secret values, wherever they appear (printed on their own, inside a URL,
  in a traceback). They come from ``register_secret`` (a password given as an option, the
  dashboard's generated password) and from ``secret_values`` (secret-looking environment
  variables such as ``*_TOKEN*``/``*_SECRET*``/``*_KEY``/``*PASSWORD*`` and the platforms'
  own credential files), re-read now and then so a variable set later is covered too;
* **patterns**: the shapes of secrets nobody registered: ``user:password@`` in URLs,
  ``Authorization``/bearer/basic headers, ``key=value`` for secret-looking keys, AWS key ids,
  PEM private keys and well-known token shapes (``ghp_``, ``hf_``, ``xoxb-``, ``sk-``...).

Every sink calls into this module at one place: the job store's write path, the log-file
readers (``runtime/tail.py``), ``Job.follow`` (monitors, tracker, sweeps), the dashboard's event
serializer, errors (``NeuralError``), dry runs and the job's own output files. A replacement
never consumes a quote or a backslash, so a JSON line stays JSON after redaction.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "****"
MIN_REGISTERED = 4  # explicitly registered values (a password someone typed) from 4 chars
REFRESH_SECONDS = 0.25  # how often the environment is looked at again for new secrets

_VALUE = r"[^\s\"'\\,;&<>]"  # a secret's characters: never a quote, backslash or separator
_SECRET_WORDS = (
    r"token(?!s|iz)|secret|passw(?:or)?d|passphrase|api[_-]?key|access[_-]?key|private[_-]?key"
    r"|account[_-]?key|auth[_-]?key|credential|client[_-]?secret"
)

# (pattern, name of the group that holds the secret); the group is replaced by MASK
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # AWS access key ids
    (re.compile(r"\b(?P<s>(?:AKIA|ASIA)[A-Z0-9]{16})\b"), "s"),
    # Authorization headers (any scheme, or none)
    (
        re.compile(
            r"(?i)\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?"
            r"(?:(?:bearer|basic|token|digest|apikey)\s+)?(?P<s>[^\s\"'\\,;]{3,})"
        ),
        "s",
    ),
    # key=value / key: value / "key": "value" for secret-looking keys
    (
        re.compile(
            rf"(?i)\b[A-Z0-9_.-]*(?:{_SECRET_WORDS})[A-Z0-9_.-]*[\"']?\s*[=:]\s*[\"']?"
            rf"(?P<s>{_VALUE}{{3,}})"
        ),
        "s",
    ),
    # --password VALUE / --api-key VALUE on command lines
    (
        re.compile(
            r"(?i)(?<![\w-])--?[a-z0-9-]*(?:password|passwd|token|secret|api-key|apikey)"
            rf"[a-z0-9-]*\s+(?P<s>(?!-){_VALUE}{{3,}})"
        ),
        "s",
    ),
    # environment-style NAME_KEY=value (upper case only: "sort_key=name" is left alone)
    (re.compile(rf"\b[A-Z][A-Z0-9_]*_KEY\s*[=:]\s*[\"']?(?P<s>{_VALUE}{{4,}})"), "s"),
    # bearer / basic / token credentials in free text (16+ characters with a digit, so prose
    # such as "security token included in the request" is left alone)
    (
        re.compile(
            r"(?i)\b(?:bearer|basic|token)\s+(?P<s>(?=[A-Za-z._~+/=-]*\d)[A-Za-z0-9._~+/=-]{16,})"
        ),
        "s",
    ),
    # user:password@host in URLs, and long token-only user-info (https://TOKEN@host)
    # (also with one slash: a URL that went through a path normaliser)
    (re.compile(r"(?i)\b[a-z][a-z0-9+.-]*:/{1,2}[^/\s:@\"'\\]+:(?P<s>[^@\s/\"'\\]+)@"), "s"),
    (re.compile(r"(?i)\b[a-z][a-z0-9+.-]*:/{1,2}(?P<s>[A-Za-z0-9_-]{20,})@"), "s"),
    # signed URLs (Azure SAS, S3 presigned)
    (re.compile(r"(?i)[?&;](?:sig|x-amz-signature|x-amz-security-token)=(?P<s>[^&\s\"'\\]+)"), "s"),
    # well-known token shapes
    (
        re.compile(
            r"\b(?P<s>gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
            r"|glpat-[A-Za-z0-9_-]{20,}|hf_[A-Za-z0-9]{20,}|xox[abposr]-[A-Za-z0-9-]{10,}"
            r"|sk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_-]{20,}|dapi[0-9a-f]{32}(?:-\d+)?"
            r"|AIza[0-9A-Za-z_-]{35}|npm_[A-Za-z0-9]{36}|pypi-[A-Za-z0-9_-]{50,}"
            r"|ya29\.[0-9A-Za-z_-]{20,}"
            r"|eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,})"
        ),
        "s",
    ),
)
# PEM private keys (also inside a JSON string, where the newlines are written as \n)
_PEM = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL
)
_PEM_MASK = "-----PRIVATE KEY " + MASK + "-----"

# Every pattern above needs one of these words (in the lower-cased text) or, for the token
# shapes and AWS key ids, a run of 16 letters and digits: a few substring searches and one
# byte translation rule out most lines, so a log stream costs little (monitors see millions).
_TRIGGERS = ("key", "token", "secret", "pass", "auth", "bearer", "basic", "credential", ":/")
_TRIGGERS += ("xox", "glpat")  # token shapes whose parts may be shorter than 16
_ALNUM_RUN = b"a" * 16
_ALNUM_TABLE = bytes(
    ord("a") if chr(code).isascii() and chr(code).isalnum() else ord(" ") for code in range(256)
)


def _triggered(text: str) -> bool:
    lowered = text.lower()
    for trigger in _TRIGGERS:  # a plain loop: faster than any() over a generator
        if trigger in lowered:
            return True
    return _ALNUM_RUN in text.encode("utf-8", "replace").translate(_ALNUM_TABLE)


_lock = threading.Lock()
_secrets: set[str] = set()  # registered values (and their JSON-escaped forms)
_found: set[str] = set()  # values from the environment and credential files
_sorted_secrets: list[str] = []
_next_refresh = 0.0


def register_secret(value: str | None) -> None:
    """Remember a secret value so every later redaction masks it (values < 4 chars ignored)."""
    if not value or len(value) < MIN_REGISTERED:
        return
    forms = {value}
    escaped = json.dumps(value)[1:-1]
    if escaped != value:
        forms.add(escaped)  # how it reads inside a JSON event line or a stored JSON column
    with _lock:
        if forms <= _secrets:
            return
        _secrets.update(forms)
        _rebuild()


def registered_secrets() -> list[str]:
    """The values registered in this process (for a helper process that masks for it)."""
    with _lock:
        return sorted(_secrets)


def harvest(text: Any) -> None:
    """Register the secrets the patterns find in ``text`` (an option the user gave, such as a
    setup command with ``HF_TOKEN=...`` or a URL with a password), so the bare value is masked
    too when the job later prints it on its own."""
    if not isinstance(text, str) or not _triggered(text):
        return
    for pattern, group in _PATTERNS:
        for match in pattern.finditer(text):
            register_secret(match.group(group))


def refresh() -> None:
    """Read the environment and the platforms' credential files again (normally done on its
    own every ``REFRESH_SECONDS``; call it right after setting a variable)."""
    global _next_refresh
    from neural_jupyter.secret_values import current_secret_values

    values = current_secret_values()
    with _lock:
        _next_refresh = time.monotonic() + REFRESH_SECONDS
        if values != _found:
            _found.clear()
            _found.update(values)
            _rebuild()


def _rebuild() -> None:
    global _sorted_secrets
    forms: set[str] = set(_secrets)
    for value in _found:
        forms.add(value)
        escaped = json.dumps(value)[1:-1]
        if escaped != value:
            forms.add(escaped)
    _sorted_secrets = sorted(forms, key=len, reverse=True)


def secret_count() -> int:
    """How many distinct values are masked by value (for tests and benchmarks)."""
    _maybe_refresh()
    return len(_sorted_secrets)


def _maybe_refresh() -> None:
    if time.monotonic() >= _next_refresh:
        refresh()


_last_output: str | None = None  # the text redact() returned last: passing it again is free


def redact(text: str) -> str:
    """Return ``text`` with known secret values and secret-looking patterns masked."""
    global _last_output
    if not text or text is _last_output:  # already redacted (a monitor after Job.follow)
        return text
    if time.monotonic() >= _next_refresh:
        refresh()
    for secret in _sorted_secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    if _triggered(text):
        for pattern, _group in _PATTERNS:
            text = pattern.sub(_mask_group, text)
        if "PRIVATE KEY" in text:
            text = _PEM.sub(_PEM_MASK, text)
    _last_output = text
    return text


def _mask_group(match: re.Match[str]) -> str:
    start, end = match.span("s")
    whole = match.group(0)
    offset = match.start()
    return whole[: start - offset] + MASK + whole[end - offset :]


def redact_value(value: Any) -> Any:
    """A copy of a JSON-like value with every string (keys too) redacted; string values of
    keys that name a secret (``password``, ``api_token``...) are masked whatever they hold."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            name = redact(key) if isinstance(key, str) else key
            if isinstance(key, str) and isinstance(item, str) and item and is_secret_name(key):
                if len(item) >= 8:  # long enough to be masked wherever else it shows up
                    register_secret(item)
                out[name] = MASK
            else:
                out[name] = redact_value(item)
        return out
    if isinstance(value, (list, tuple)):
        return [redact_value(item) for item in value]
    return value


_SECRET_NAME = re.compile(
    r"(?i)(password|passwd|passphrase|secret|token|api[_-]?key|apikey|credential|authorization"
    r"|private[_-]?key|access[_-]?key|account[_-]?key)"
)
_NOT_SECRET_SUFFIXES = ("_file", "_path", "_name", "_id", "_dir", "_url", "_type", "_env")


def is_secret_name(name: str) -> bool:
    """Whether an option or field called ``name`` holds a secret (``api_token``: yes;
    ``token_file``, ``key_id``, ``tokens_per_batch``: no)."""
    lowered = name.lower()
    if lowered.endswith(_NOT_SECRET_SUFFIXES) or lowered.startswith("max_") or "tokens" in lowered:
        return False
    if "idempotency" in lowered:  # a request's idempotency token only names the request
        return False
    return _SECRET_NAME.search(lowered) is not None


def redact_lines(lines: Iterable[str]) -> list[str]:
    return [redact(line) for line in lines]
