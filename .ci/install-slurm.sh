#!/usr/bin/env bash
# Install the system packages the tests need (Debian/Ubuntu, as root or through sudo):
#   slurm-wlm, munge  the single-node SLURM that tests/slurm brings up (required);
#   chromium          the headless browser tests/test_viewers.py opens neuroglancer in (optional:
#                     where it cannot be installed, e.g. Ubuntu's snap-only chromium without
#                     snapd, that test skips with a one-line reason and everything else runs).
# Idempotent: installs nothing when slurmctld, slurmd, munged and chromium are already on PATH.
set -euo pipefail
have() { command -v "$1" >/dev/null; }
need_slurm=1
if have slurmctld && have slurmd && have munged; then need_slurm=0; fi
need_browser=1
if have chromium || have chromium-browser; then need_browser=0; fi
if [ "$need_slurm" -eq 0 ] && [ "$need_browser" -eq 0 ]; then
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
$sudo apt-get update
if [ "$need_slurm" -eq 1 ]; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends slurm-wlm munge
fi
if [ "$need_browser" -eq 1 ]; then
    # fonts-dejavu-core: neuroglancer's scale bar needs one font
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends \
        chromium fonts-dejavu-core ||
        echo "install-slurm.sh: chromium could not be installed; the browser test will skip" >&2
fi
