#!/usr/bin/env bash
# Install a single-node SLURM (Debian slurm-wlm + munge) for the cluster tests.
#
# Only the packages: tests/slurm.py writes the configuration and starts munged, slurmctld and
# slurmd itself in a temporary directory, so nothing here touches /etc or starts a service.
# Safe to run twice: when every binary is already present it exits at once.
set -euo pipefail

needed=(sbatch squeue sinfo scancel slurmctld slurmd munged mungekey)

missing=()
for binary in "${needed[@]}"; do
    command -v "$binary" >/dev/null 2>&1 || missing+=("$binary")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "slurm and munge already installed"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "missing ${missing[*]} and no apt-get here; install slurm-wlm and munge by hand" >&2
    exit 1
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
    sudo=(sudo)
fi

# Debian's packages try to start their services; in a container without systemd that fails
# harmlessly, and policy-rc.d exit code 101 tells invoke-rc.d not to try at all.
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends slurm-wlm munge
echo "installed slurm-wlm and munge"
