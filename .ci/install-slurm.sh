#!/usr/bin/env bash
# Install the single-node SLURM that tests/slurm brings up (Debian/Ubuntu, as root).
# Idempotent: does nothing when slurmctld, slurmd and munged are already on PATH.
set -euo pipefail
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
$sudo apt-get update
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends slurm-wlm munge
