#!/usr/bin/env bash
# Removes what systemd/install.sh installed; the same as `systemd/install.sh --uninstall ...`.
#   systemd/uninstall.sh [--purge] [--prefix DIR] [--destdir DIR] [--dry-run] edge-agent|cloud-broker|all
# Keeps /etc/tributary and the agent's buffer unless --purge (see systemd/install.sh --help).
exec "$(dirname "${BASH_SOURCE[0]}")/install.sh" --uninstall "$@"
