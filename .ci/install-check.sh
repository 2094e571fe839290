#!/usr/bin/env bash
# Installed as users install it: build the wheel and the sdist, check both with twine, install
# the wheel (not editable) into a fresh virtual environment, and from an empty directory run
# the commands a new user runs first. A file missing from the package (a report template, a
# recipe, the default spec) fails here, where an editable install would not notice.
# Usage: bash .ci/install-check.sh   (from the repository root, with build and twine on PATH)
set -euo pipefail
root="$PWD"
data="$(cd "$root/../shared/data/cifar10-mini" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python -m build --outdir "$work/dist" "$root"
twine check --strict "$work"/dist/*

python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/python" -m pip install --quiet "$work"/dist/*.whl

mkdir "$work/empty"
cd "$work/empty"
export PATH="$work/venv/bin:$PATH"
export EFFBENCH_DATA="$work/cache"  # nothing of the user's: the data comes from --data-dir
set -x
effbench --help >/dev/null
effbench init && cmp bench.toml "$root/bench.toml" && rm bench.toml
effbench train --attention nystrom --data-dir "$data" --epochs 1
effbench scale --res 32 64 -a sdpa nystrom
effbench report
test -s results/report.html && test -s results/report.md
effbench compare --quick --data-dir "$data" -a sdpa nystrom
test -s study/report.html
set +x
echo "install check: passed in ${SECONDS} s"
