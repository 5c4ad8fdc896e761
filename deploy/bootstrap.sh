#!/usr/bin/env bash
# Set up a fresh Debian machine for convsync: system packages, the Python venv (.venv),
# and the Apache Kafka jars from Maven Central. Idempotent; re-running is quick.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v kcat >/dev/null || need+=(kcat)
command -v wrk >/dev/null || need+=(wrk)
command -v runuser >/dev/null || need+=(util-linux)
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "bootstrap: installing ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.convsync-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e ".[dev]"
  touch "$stamp"
fi

# promtool checks and unit-tests deploy/prometheus/alerts.yaml (tests/deploy/test_alerts.py),
# built from the Prometheus module by Go; without Go, Debian's prometheus package has one.
PROMTOOL_VERSION=v0.316.0
if [ ! -x .venv/bin/promtool ]; then
  if command -v go >/dev/null; then
    echo "bootstrap: building promtool $PROMTOOL_VERSION" >&2
    GOBIN="$PWD/.venv/bin" go install "github.com/prometheus/prometheus/cmd/promtool@$PROMTOOL_VERSION"
  else
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    command -v promtool >/dev/null || {
      $SUDO apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    }
    ln -sf "$(command -v promtool)" .venv/bin/promtool
  fi
fi

.venv/bin/python -c "from deploy.kafka_local import ensure_jars; print('bootstrap: kafka jars in', ensure_jars())" >&2
