#!/usr/bin/env bash
# Move the pinned versions forward, deliberately: `make lock`.
#   1. a new, empty virtual environment (.venv-lock) gets the pinned CPU torch and the newest versions that
#      requirements.txt and requirements-test.txt allow, and requirements-nodeps.txt's exact pins with
#      --no-deps;
#   2. the whole test suite runs in it (browser test included);
#   3. only when it passes is requirements-lock.txt rewritten (pip freeze of that environment), so the lock
#      always names a set of versions the suite has passed with. Review `git diff requirements-lock.txt`
#      and commit it; then `rm -rf .venv && make test` installs exactly those versions.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
V=.venv-lock
rm -rf "$V"
"$PYTHON" -m venv "$V"
echo "[lock] installing torch==$TORCH_VERSION and the newest allowed versions into $V"
"$V/bin/python" -m pip install -q "torch==$TORCH_VERSION"
"$V/bin/python" -m pip install -q --upgrade -r requirements.txt -r requirements-test.txt
"$V/bin/python" -m pip install -q --no-deps -r requirements-nodeps.txt   # exact pins, without their dependencies
"$V/bin/python" -m pip install -q --no-deps -e .
bash scripts/setup_browser_test.sh
echo "[lock] running the test suite in $V"
if ! MEDKIT_REQUIRE_REFERENCES=1 "$V/bin/python" -m pytest -q tests; then
  echo "[lock] the suite failed with the newest versions: requirements-lock.txt is unchanged." >&2
  echo "[lock] $V keeps that environment for a look ($V/bin/pip freeze)." >&2
  exit 1
fi
{
  echo "# Exact versions of the CPU set-up (\`make\`), written by \`make lock\` after the whole suite passed with them."
  echo "# $("$V/bin/python" -c 'import platform, sys; print(f"Python {sys.version.split()[0]}, {platform.system()} {platform.machine()}")'), $(date -u +%Y-%m-%d)."
  echo "# Used as pip constraints (-c): requirements.txt says what medkit needs, this file which versions."
  echo "# Kaggle and Colab do not use it (their images bring torch and more; requirements.txt's ranges fit them)."
  "$V/bin/python" -m pip freeze --exclude-editable | LC_ALL=C sort -f
} > requirements-lock.txt.new
mv requirements-lock.txt.new requirements-lock.txt
echo "[lock] requirements-lock.txt rewritten ($(grep -vc '^#' requirements-lock.txt) packages); review and commit it"
