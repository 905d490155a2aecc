#!/usr/bin/env bash
# Create benchmarks/.venv-neuraldsl with neural-dsl 0.2.9, the comparison point of
# bench_compile.py. It lives in its own venv so that none of its dependencies (or its
# import-time side effects) can touch neural-jupyter's environment.
#
#   bash benchmarks/setup_neural_dsl_venv.sh          # idempotent; reuses a good venv
#   PYTHON=python3.11 bash benchmarks/setup_neural_dsl_venv.sh
#   NEURAL_DSL_VENV=/tmp/nd bash benchmarks/setup_neural_dsl_venv.sh
#
# neural-dsl 0.2.9's *required* dependencies (click, flask, lark, matplotlib, numpy, pysnooper,
# radon, ...) do not include torch or tensorflow: those are only in its "full" extra, which we
# do not install, so pip's torch cap in /etc/xdg/pip/constraints.txt never comes into play and
# no --no-deps workaround is needed. Its parser module imports plotly at the top, which is
# not a required dependency, hence the explicit plotly.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${NEURAL_DSL_VENV:-$here/.venv-neuraldsl}"
python="${PYTHON:-python3}"
version="0.2.9"

ready() {
    [ -x "$venv/bin/python" ] && PYSNOOPER_DISABLED=1 "$venv/bin/python" - "$version" <<'EOF' >/dev/null 2>&1
import sys
from importlib import metadata
assert metadata.version("neural-dsl") == sys.argv[1]
import neural.parser.parser  # noqa: F401  (needs plotly, lark, pysnooper)
EOF
}

if ready; then
    echo "neural-dsl $version venv ready: $venv"
    exit 0
fi

echo "creating $venv (neural-dsl==$version plotly) ..."
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --disable-pip-version-check --quiet "neural-dsl==$version" plotly

if ! ready; then
    echo "error: neural-dsl $version installed but neural.parser.parser does not import" >&2
    exit 1
fi
if "$venv/bin/python" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("torch") is None)'; then
    echo "note: torch was installed into $venv (not needed by the parser)"
fi
echo "neural-dsl $version venv ready: $venv"
