#!/usr/bin/env bash
# Run a command inside cellseg's virtual environment, creating it first if needed.
#
#   bash scripts/env.sh snakemake --cores 2     # the demo
#   bash scripts/env.sh pytest                  # the tests
#
# The environment lives outside the clone (virtual environments do not belong in git), in
# ${CELLSEG_VENV_ROOT:-~/.cache/cellseg}/venv-<hash of pyproject.toml's dependencies>, so a
# change of dependencies makes a new one and repeated runs reinstall nothing.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${CELLSEG_PYTHON:-python3}
deps_hash=$(sed -n '/^dependencies = \[/,/^\[project.scripts\]/p' "$repo/pyproject.toml" | sha256sum | cut -c1-12)
venv=${CELLSEG_VENV:-${CELLSEG_VENV_ROOT:-$HOME/.cache/cellseg}/venv-$deps_hash}
if [ ! -f "$venv/.cellseg-ready" ]; then
    # two commands started at once on a fresh machine (the demo and the tests, say) build the
    # environment once: the second waits on the lock instead of deleting the first one's build
    mkdir -p "$(dirname "$venv")"
    exec 9>"$venv.lock"
    flock 9
    if [ ! -f "$venv/.cellseg-ready" ]; then
        echo "cellseg: creating $venv (first run: torch, monai, timm, snakemake; several GB)" >&2
        rm -rf "$venv"
        "$python" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --upgrade pip
        # torch and torchvision resolved together from PyPI (timm needs torchvision)
        "$venv/bin/python" -m pip install --quiet -e "$repo[test]"
        touch "$venv/.cellseg-ready"
    fi
    flock -u 9
    exec 9>&-
fi
# this clone's sources win over whichever clone the cached venv was first made from
export PATH="$venv/bin:$PATH" VIRTUAL_ENV="$venv" PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}"
cd "$repo"
# Snakemake reads each --configfile before any workflow code runs and says only "Config file is
# not valid JSON or YAML" for a YAML mistake (a line indented with a tab): read them first as the
# workflow reads its config layers, which names the file and the line
if [ "${1:-}" = snakemake ] && [[ " $* " == *" --configfile"* ]]; then
    python -c 'import sys, cellseg.cli as c; sys.exit(c.check_snakemake_configfiles(sys.argv[1:]))' \
        "${@:2}" || exit 1
fi
exec "$@"
