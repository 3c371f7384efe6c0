#!/usr/bin/env bash
# Installs Tributary's services on a Debian 12 host with systemd: builds release binaries, installs binary,
# unit, default configuration and environment file, creates the service user, enables and starts the unit.
#
#   systemd/install.sh edge-agent                 # on a gateway
#   systemd/install.sh cloud-broker               # on each broker node (needs librdkafka1 at run time)
#   systemd/install.sh --destdir /tmp/pkg all     # stage the file tree only (packaging, tests)
#   systemd/install.sh --dry-run edge-agent       # print every step, change nothing
#   systemd/install.sh --uninstall [--purge] all  # the reverse (also: systemd/uninstall.sh)
#
# Options:
#   --destdir DIR     install below DIR (like make's DESTDIR); skips creating users and systemctl
#   --prefix DIR      binaries in DIR/bin, docs in DIR/share/doc/tributary (default /usr/local); the
#                     units' ExecStart= and Documentation= are rewritten to match
#   --binary-dir DIR  take the binaries from DIR instead of building them (implies --no-build)
#   --no-build        use .build/release as it is
#   --no-static       link the Swift runtime dynamically (then the host needs the Swift runtime libraries)
#   --no-start        install and enable, but do not start (or restart) the units
#   --strip           strip debug information from the installed binaries (keeps symbol names, so crash
#                     backtraces stay readable): 121 MB -> 86 MB for edge-agent on x86_64
#   --dry-run         print what would be done and exit
#   --print-build-flags  print the swift build arguments of each component and exit (to build the agent
#                     exactly as installed: scripts/footprint/order-file.sh, bench/agent-footprint.sh)
#   --uninstall       stop and disable the units, remove binaries, units and the sysusers entry; keep
#                     /etc/tributary and the agent's buffer in /var/lib/tributary-edge-agent (it may hold
#                     records not yet delivered upstream)
#   --purge           with --uninstall: also delete the configuration, the buffer and the service users
#                     (check first that tributary_buffer_records is 0 on the agent's /metrics)
# Existing files in /etc/tributary are never overwritten: the shipped version is put next to them as
# FILE.dist, and the difference is for the operator to merge. Safe to run again (upgrades: see
# docs/OPERATIONS.md, "Upgrades").
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

destdir=""
prefix="/usr/local"
binary_dir=""
build=1
static=1
start=1
strip_binaries=0
dry_run=0
print_build_flags=0
uninstall=0
purge=0
components=()
while [ $# -gt 0 ]; do
    case "$1" in
        --destdir) destdir="${2:?--destdir needs a directory}"; shift 2 ;;
        --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
        --binary-dir) binary_dir="${2:?--binary-dir needs a directory}"; build=0; shift 2 ;;
        --no-build) build=0; shift ;;
        --no-static) static=0; shift ;;
        --no-start) start=0; shift ;;
        --strip) strip_binaries=1; shift ;;
        --dry-run) dry_run=1; shift ;;
        --print-build-flags) print_build_flags=1; shift ;;
        --uninstall) uninstall=1; shift ;;
        --purge) purge=1; shift ;;
        edge-agent|cloud-broker) components+=("$1"); shift ;;
        all) components+=(edge-agent cloud-broker); shift ;;
        -h|--help) sed -n '2,31p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[ ${#components[@]} -gt 0 ] || die "say which: edge-agent, cloud-broker or all (see --help)"
case "$prefix" in /*) ;; *) die "--prefix must be an absolute path" ;; esac
if [ -n "$destdir" ]; then
    mkdir -p "$destdir" 2>/dev/null || [ "$dry_run" -eq 1 ] || die "cannot create $destdir"
    [ "$dry_run" -eq 1 ] || destdir="$(cd "$destdir" && pwd)"
fi
live=1  # a real installation on this host (users, systemctl)
[ -z "$destdir" ] || live=0
[ "$dry_run" -eq 0 ] || live=0
[ "$print_build_flags" -eq 0 ] || live=0
if [ "$live" -eq 1 ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (or use --destdir DIR / --dry-run)"
fi

# Runs a command, or prints it under --dry-run.
run() {
    if [ "$dry_run" -eq 1 ]; then
        printf 'install: would run: %s\n' "$*"
    else
        "$@"
    fi
}

# install_file MODE SOURCE TARGET: installs SOURCE at $destdir/TARGET.
install_file() {
    local mode="$1" source="$2" target="$destdir$3"
    run install -D -m "$mode" "$source" "$target"
    [ "$dry_run" -eq 1 ] || say "installed $3"
}

# install_config MODE SOURCE TARGET: like install_file, but an existing TARGET is kept and the shipped file
# goes next to it as TARGET.dist.
install_config() {
    local mode="$1" source="$2" target="$destdir$3"
    if [ -e "$target" ] && ! cmp -s "$source" "$target"; then
        run install -D -m "$mode" "$source" "$target.dist"
        [ "$dry_run" -eq 1 ] || say "kept $3 (yours); the shipped version is $3.dist"
    else
        install_file "$mode" "$source" "$3"
    fi
}

# install_unit NAME: the unit with ExecStart=/Documentation= pointing at $prefix.
install_unit() {
    local unit="$root/systemd/$1" target="$destdir/etc/systemd/system/$1"
    if [ "$dry_run" -eq 1 ]; then
        printf 'install: would write %s (ExecStart below %s/bin)\n' "$target" "$prefix"
        return
    fi
    mkdir -p "$(dirname "$target")"
    sed -e "s#/usr/local/bin/#$prefix/bin/#g" -e "s#/usr/local/share/doc/#$prefix/share/doc/#g" "$unit" > "$target.tmp"
    chmod 0644 "$target.tmp"
    mv "$target.tmp" "$target"
    say "installed /etc/systemd/system/$1"
}

# remove PATH: deletes $destdir/PATH (prints it under --dry-run).
remove() {
    if [ -e "$destdir$1" ] || [ "$dry_run" -eq 1 ]; then
        run rm -rf -- "$destdir$1"
        [ "$dry_run" -eq 1 ] || say "removed $1"
    fi
}

# --- uninstall --------------------------------------------------------------------------------------------------
if [ "$uninstall" -eq 1 ]; then
    for component in "${components[@]}"; do
        unit="tributary-$component.service"
        if [ "$live" -eq 1 ]; then
            systemctl disable --now "$unit" 2>/dev/null || true
        else
            [ "$dry_run" -eq 0 ] || run systemctl disable --now "$unit"
        fi
        remove "/etc/systemd/system/$unit"
        remove "$prefix/bin/$component"
        if [ "$purge" -eq 1 ]; then
            for file in "$component.yaml" "$component.yaml.dist" "$component.env" "$component.env.dist"; do
                remove "/etc/tributary/$file"
            done
            [ "$component" != edge-agent ] || remove "/var/lib/tributary-edge-agent"
        fi
    done
    [ "$live" -eq 0 ] || systemctl daemon-reload
    # Shared files go with the last component.
    remaining=0
    for other in edge-agent cloud-broker; do
        if [ -e "$destdir/etc/systemd/system/tributary-$other.service" ]; then remaining=1; fi
    done
    if [ "$remaining" -eq 0 ]; then
        remove "/usr/lib/sysusers.d/tributary.conf"
        remove "$prefix/share/doc/tributary"
        if [ "$purge" -eq 1 ]; then
            rmdir "$destdir/etc/tributary" 2>/dev/null || true
            if [ "$live" -eq 1 ]; then
                for user in tributary-agent tributary-broker; do
                    ! id "$user" >/dev/null 2>&1 || userdel "$user" || true
                done
            fi
        fi
    fi
    [ "$purge" -eq 1 ] || say "kept /etc/tributary and /var/lib/tributary-edge-agent (--purge deletes them)"
    say "done"
    exit 0
fi

# --- binaries -------------------------------------------------------------------------------------------------
# Build flags that keep a static edge-agent small in memory (BENCHMARKS.md, "Edge agent footprint"): no dynamic
# symbol table for its ~20,000 symbols (nothing looks them up), every function in a section of its own
# (-function-sections), and, with the toolchain's lld and glibc 2.36 or newer (Debian 12, Ubuntu 24.04),
# relative relocations packed (DT_RELR: 2.4 MB of .rela.dyn become 20 KB, all of which the loader reads at
# every start) and the functions the agent runs at start, when idle and when forwarding placed together at the
# start of .text (systemd/edge-agent.order by symbol, systemd/edge-agent.ld the few without a symbol of their
# own; both made by scripts/footprint/order-file.sh; a stale list only costs memory, never correctness), and
# libstdc++ linked statically. The binary then needs glibc 2.36 on the gateway too. (SwiftPM does not notice
# that the lists changed, and the Swift driver may keep objects compiled without -function-sections: after
# changing these flags, build into a fresh --scratch-path.)
agent_build_flags() {
    echo -Xlinker --no-export-dynamic -Xswiftc -Xfrontend -Xswiftc -function-sections -Xcc -ffunction-sections
    local glibc lld
    glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
    lld="$(dirname "$(command -v swift)")/ld.lld"
    if [ -x "$lld" ] && [ -n "$glibc" ] && [ "$(printf '%s\n2.36\n' "$glibc" | sort -V | head -1)" = 2.36 ]; then
        echo -Xswiftc -use-ld=lld -Xlinker -z -Xlinker pack-relative-relocs
        [ ! -f "$root/systemd/edge-agent.order" ] ||
            echo -Xlinker "--symbol-ordering-file=$root/systemd/edge-agent.order" -Xlinker --no-warn-symbol-ordering
        [ ! -f "$root/systemd/edge-agent.ld" ] || echo -Xlinker -T -Xlinker "$root/systemd/edge-agent.ld"
    fi
    # libstdc++ (used by the Swift runtime, libdispatch and BoringSSL) linked statically as well: its shared
    # library is 1.4 MB resident, the few functions the agent calls sit with the others at the start of .text.
    # The toolchain adds a plain -lstdc++; a search directory holding only the archive makes that the archive.
    local archive cxx
    for cxx in "${CXX:-}" g++ "$(dirname "$(command -v swift)")/clang++"; do
        [ -n "$cxx" ] && command -v "$cxx" >/dev/null || continue
        archive=$("$cxx" -print-file-name=libstdc++.a 2>/dev/null) || continue
        if [ -f "$archive" ] && [ "${archive#/}" != "$archive" ]; then
            if [ "$dry_run" -eq 0 ]; then
                mkdir -p "$root/.build/static-libstdc++"
                ln -sf "$archive" "$root/.build/static-libstdc++/libstdc++.a"
            fi
            echo -Xlinker "-L$root/.build/static-libstdc++"
            break
        fi
    done
}
# The swift build arguments of a component (release; static unless --no-static).
build_flags() {
    local flags=(-c release --product "$1")
    [ "$static" -eq 0 ] || flags+=(--static-swift-stdlib)
    [ "$1" != edge-agent ] || [ "$static" -eq 0 ] || flags+=($(agent_build_flags))
    echo "${flags[@]}"
}
if [ "$print_build_flags" -eq 1 ]; then
    for component in "${components[@]}"; do build_flags "$component"; done
    exit 0
fi
if [ -z "$binary_dir" ]; then
    binary_dir="$root/.build/release"
    if [ "$build" -eq 1 ]; then
        command -v swift >/dev/null || die "swift not found on PATH (or pass --binary-dir DIR with built binaries)"
        for component in "${components[@]}"; do
            read -r -a flags <<<"$(build_flags "$component")"
            say "building $component (swift build ${flags[*]}); this takes minutes"
            run swift build --package-path "$root" "${flags[@]}"
        done
    fi
fi
# The shipped configuration of a component: config/edge-agent.yaml (else the gateway example), and
# config/cloud-broker.yaml.
shipped_config() {
    case "$1" in
        edge-agent) for candidate in edge-agent.yaml edge-agent-gateway.yaml; do
                        if [ -f "$root/config/$candidate" ]; then echo "$root/config/$candidate"; return; fi
                    done ;;
        cloud-broker) [ ! -f "$root/config/cloud-broker.yaml" ] || echo "$root/config/cloud-broker.yaml" ;;
    esac
}
for component in "${components[@]}"; do
    [ "$dry_run" -eq 1 ] || [ -x "$binary_dir/$component" ] || die "no executable $binary_dir/$component"
    [ -n "$(shipped_config "$component")" ] || die "no configuration for $component in $root/config"
done

for component in "${components[@]}"; do
    install_file 0755 "$binary_dir/$component" "$prefix/bin/$component"
    [ "$strip_binaries" -eq 0 ] || run strip --strip-debug "$destdir$prefix/bin/$component"
    install_unit "tributary-$component.service"
    install_config 0640 "$(shipped_config "$component")" "/etc/tributary/$component.yaml"
    install_config 0640 "$root/systemd/$component.env" "/etc/tributary/$component.env"
done
install_file 0644 "$root/systemd/tributary.sysusers" "/usr/lib/sysusers.d/tributary.conf"
install_file 0644 "$root/docs/OPERATIONS.md" "$prefix/share/doc/tributary/OPERATIONS.md"

if [ "$live" -eq 0 ]; then
    if [ "$dry_run" -eq 1 ]; then
        say "dry run: nothing was changed"
    else
        say "staged below $destdir; users, systemctl daemon-reload/enable/start skipped (not a live install)"
    fi
    exit 0
fi

# --- users, permissions, units (live installation only) -------------------------------------------------------
if command -v systemd-sysusers >/dev/null; then
    systemd-sysusers /usr/lib/sysusers.d/tributary.conf
else
    for user in tributary-agent tributary-broker; do
        id "$user" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$user"
    done
fi
for component in "${components[@]}"; do
    case "$component" in
        edge-agent) group=tributary-agent ;;
        cloud-broker) group=tributary-broker ;;
    esac
    # The service reads its configuration through its group; secrets may live there (0640 root:group).
    chgrp "$group" "/etc/tributary/$component.yaml" "/etc/tributary/$component.env"
    if [ "$component" = cloud-broker ] && ! ldconfig -p | grep -q 'librdkafka\.so\.1 '; then
        say "warning: librdkafka.so.1 not found; install it: apt-get install librdkafka1"
    fi
done
systemctl daemon-reload
for component in "${components[@]}"; do
    unit="tributary-$component.service"
    systemctl enable "$unit"
    if [ "$start" -eq 1 ]; then
        # restart, not start: re-running the script after an upgrade must load the new binary.
        systemctl restart "$unit"
        say "$unit: $(systemctl is-active "$unit" || true)"
    fi
done
say "done; logs: journalctl -u tributary-<component>; configuration: /etc/tributary"
