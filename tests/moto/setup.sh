#!/usr/bin/env bash
# Creates (once) a Python virtualenv with moto in server mode, the Secrets
# Manager endpoint of the tests, in a cache folder keyed by requirements.txt,
# and prints the path of its moto_server. Only PyPI is used.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python3}
command -v "$py" >/dev/null || { echo "setup.sh: Python 3 is required for moto (the test Secrets Manager)" >&2; exit 1; }
key=$( (cat "$here/requirements.txt"; "$py" --version) | sha256sum | cut -c1-12)
venv="${SM_INJECTOR_MOTO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sm-injector/moto}/venv-$key"
# A venv names its own path in its scripts, so it is built in place; the marker
# file says the install finished.
if [ -f "$venv/.complete" ]; then
  echo "$venv/bin/moto_server"; exit 0
fi
echo "setup.sh: installing $(cat "$here/requirements.txt") into $venv" >&2
rm -rf "$venv"
"$py" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2 || { rm -rf "$venv"; exit 1; }
"$venv/bin/python" -c 'import moto.server' >&2
touch "$venv/.complete"
echo "$venv/bin/moto_server"
