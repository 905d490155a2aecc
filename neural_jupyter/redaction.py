"""Redaction of secrets from anything shown, logged or stored.

Two guards: exact values registered at run time (an API token read from the environment,
a generated dashboard password) and patterns for secrets we never registered (AWS keys,
bearer tokens, passwords in URLs, private-key blocks).
"""

from __future__ import annotations

import re
import threading

MASK = "****"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # AWS access key ids and the secret keys that usually follow them
    (re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b"), MASK),
    (
        re.compile(r"(?i)(aws_secret_access_key|aws_session_token)(\s*[=:]\s*)[\"']?[^\s\"']+"),
        r"\1\2" + MASK,
    ),
    # key=value / key: value for obviously secret keys
    (
        re.compile(
            r"(?i)\b([A-Z0-9_]*(?:token|secret|password|passwd|api[_-]?key|authtoken)"
            r"[A-Z0-9_]*)(\"?\s*[=:]\s*\"?)([^\s\"',;&]{4,})"
        ),
        r"\1\2" + MASK,
    ),
    # Authorization headers
    # (the value must look like a credential — 16+ characters with a digit — so prose such
    # as "security token included in the request" is left alone)
    (
        re.compile(r"(?i)\b(bearer|basic|token)\s+(?=[A-Za-z._~+/=-]*\d)[A-Za-z0-9._~+/=-]{16,}"),
        r"\1 " + MASK,
    ),
    # user:password@host in URLs
    (re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^/\s:@]+):([^@\s/]+)@"), r"\1:" + MASK + "@"),
    # PEM private keys
    (
        re.compile(
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL
        ),
        "-----PRIVATE KEY " + MASK + "-----",
    ),
    # GitHub / Databricks / ngrok / Slack style tokens
    (re.compile(r"\b(gh[pos]_|dapi|xox[abp]-?)[A-Za-z0-9]{16,}\b"), MASK),
)

_lock = threading.Lock()
_secrets: set[str] = set()


# Every pattern above needs one of these substrings; one search rules out most lines, so
# redacting a log stream costs little (monitors see millions of lines).
_TRIGGERS = (
    "akia",
    "asia",
    "token",
    "secret",
    "passw",
    "api_key",
    "api-key",
    "apikey",
    "bearer",
    "basic",
    "://",
    "private key",
    "ghp_",
    "gho_",
    "ghs_",
    "dapi",
    "xox",
)
_sorted_secrets: list[str] = []


def register_secret(value: str | None) -> None:
    """Remember a secret value so every later redaction masks it (values < 4 chars ignored)."""
    global _sorted_secrets
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)
            _sorted_secrets = sorted(_secrets, key=len, reverse=True)


def redact(text: str) -> str:
    """Return ``text`` with registered secrets and secret-looking patterns masked."""
    if not text:
        return text
    for secret in _sorted_secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    lowered = text.lower()
    if not any(trigger in lowered for trigger in _TRIGGERS):
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text
