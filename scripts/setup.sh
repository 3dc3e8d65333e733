#!/usr/bin/env bash
# Create .venv if missing and install mmviz into it, CPU-only (constraints.txt pins torch).
# `scripts/setup.sh --test` also installs the test extras and Chromium for browser tests.
# Re-running is cheap: pip runs only when requirements/constraints/pyproject changed.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=app
[[ "${1:-}" == "--test" ]] && mode=test
python=${PYTHON:-python3}
venv=.venv

if [[ ! -x $venv/bin/python ]]; then
    echo "setup: creating $venv with $($python --version)"
    "$python" -m venv "$venv"
fi

stamp="$venv/.mmviz-installed-$mode"
want=$(cat requirements.txt constraints.txt pyproject.toml | sha256sum | cut -c1-16)
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    extras=""
    [[ $mode == test ]] && extras="[test]"
    echo "setup: installing mmviz$extras (CPU torch via constraints.txt)"
    # -c constraints.txt keeps pip from pulling a CUDA torch and gigabytes of nvidia wheels.
    # (The grep drops pip's noise about local index folders this machine's pip.conf lists.)
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -c constraints.txt -e ".$extras" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    "$venv/bin/python" -c "import mmviz, streamlit" # fail here, not later, if the install broke
    echo "$want" > "$stamp"
fi

if [[ $mode == test ]] && ! command -v chromium >/dev/null && [[ ! -x /usr/bin/chromium ]]; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "setup: installing Chromium for the browser tests (apt-get)"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "setup: no Chromium; browser tests will be skipped (install the 'chromium' package to run them)" >&2
    fi
fi
