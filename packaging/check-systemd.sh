#!/usr/bin/env bash
# Install the posgw .deb in a throw-away Debian container that boots systemd as PID 1
# (systemd-nspawn) and check that posgw.service and posgw-hq.service run under their full
# sandbox: the package's users and directories, sd_notify READY/STATUS, the device ACL, the
# system call filter, records reaching HQ, SIGHUP reload, the watchdog, a restart after a crash,
# an upgrade, a clean stop, the `systemd-analyze security` exposure, purge keeping the journal.
#
# Too heavy for CI (a release build, a debootstrap, a boot, a minute of watchdog); run it by
# hand after changing systemd/, the packaging metadata or anything the sandbox may refuse
# (new system calls, files, devices, socket families).
#
# Usage:   sudo env PATH="$PATH" packaging/check-systemd.sh   (PATH: cargo and cargo-deb)
# Needs:   root, debootstrap, systemd-nspawn (systemd-container), nsenter (util-linux),
#          cargo and cargo-deb unless POSGW_DEB is given, the Debian mirror for debootstrap.
#          Works on a host without systemd as PID 1 and on a cgroup v1/hybrid host: the
#          container always gets a pure cgroup v2 hierarchy so that DeviceAllow= is enforced
#          (BPF device programs), which needs CAP_BPF and bpf() let through into the container.
# Env:     POSGW_REPO    checkout to build (default: the one holding this script)
#          POSGW_DEB     test this .deb instead of building one
#          JOBS          cargo build -j (default 1)
#          MIRROR        Debian mirror (default http://deb.debian.org/debian)
#          SUITE         Debian suite (default bookworm)
#          ROOTFS_CACHE  tarball of the debootstrapped root: reused if it exists, else written
#          WORK          work folder (default: a new one under /var/tmp, removed at the end)
#          KEEP=1        keep the work folder (root file system, boot log) for a post-mortem
#          MAX_EXPOSURE  highest acceptable `systemd-analyze security` figure (default 2.0)
# Exit:    0 every check passed, 1 a check failed, 2 the setup failed (not every check ran).
# Single-quoted snippets are expanded by the shell inside the container, on purpose.
# shellcheck disable=SC2016
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=${POSGW_REPO:-$(git -C "$here" rev-parse --show-toplevel 2>/dev/null || true)}
jobs=${JOBS:-1}
mirror=${MIRROR:-http://deb.debian.org/debian}
suite=${SUITE:-bookworm}
max_exposure=${MAX_EXPOSURE:-2.0}
machine=posgw-check-$$
store=WZ-LC-001
store_token=store-token-$RANDOM$RANDOM
admin_token=admin-token-$RANDOM$RANDOM

passed=0
failed=0
nspawn_pid=
leader=

say() { printf '\n== %s\n' "$*"; }
die() {
    printf 'setup failed: %s\n' "$*" >&2
    exit 2
}
ok() {
    printf '  ok    %s\n' "$1"
    passed=$((passed + 1))
}
bad() {
    printf '  FAIL  %s\n' "$1"
    failed=$((failed + 1))
}
# check DESCRIPTION COMMAND...: run COMMAND, count and print the outcome, never abort.
check() {
    local what=$1
    shift
    if "$@"; then ok "$what"; else bad "$what"; fi
}
# ct COMMAND...: run COMMAND inside the container (all its namespaces, a clean environment).
ct() {
    nsenter --target "$leader" --all -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        LANG=C.UTF-8 SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 "$@"
}
# ctsh SCRIPT: run a shell snippet inside the container.
ctsh() { ct bash -c "$1"; }
# prop UNIT PROPERTY: one property of a unit, as systemctl show prints it.
prop() { ct systemctl show -P "$2" "$1"; }
# eventually SECONDS COMMAND...: retry COMMAND every half second until it succeeds.
eventually() {
    local until=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < until)) || return 1
        sleep 0.5
    done
}
# in_journal UNIT PATTERN: the unit's journal since $since (default: this boot) matches the
# extended regex PATTERN.
since=
in_journal() { ct journalctl -b ${since:+--since=@$since} -u "$1" -o cat --no-pager | grep -Eq -- "$2"; }
hq_records() {
    ct curl -fsS -H "Authorization: Bearer $admin_token" "http://127.0.0.1:7390/v1/records?store=$store"
}

cleanup() {
    local rc=$?
    if [[ -n $nspawn_pid ]] && kill -0 "$nspawn_pid" 2>/dev/null; then
        # SIGTERM makes systemd-nspawn ask the container's systemd for a clean poweroff.
        kill -TERM "$nspawn_pid" 2>/dev/null || true
        for _ in $(seq 60); do
            kill -0 "$nspawn_pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL "$nspawn_pid" 2>/dev/null || true
        wait "$nspawn_pid" 2>/dev/null || true
    fi
    # Left behind by systemd-nspawn when /run is not a tmpfs of its own (no systemd host).
    rmdir "/run/systemd/nspawn/propagate/$machine" 2>/dev/null || true
    if [[ ${KEEP:-0} == 1 ]]; then
        printf 'kept %s\n' "$work"
    elif [[ -n ${work:-} && -d $work ]]; then
        rm -rf --one-file-system "$work"
    fi
    exit "$rc"
}

# --- 0. prerequisites -------------------------------------------------------------------------
((EUID == 0)) || die "run as root (debootstrap and systemd-nspawn need it)"
for tool in debootstrap systemd-nspawn nsenter; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install debootstrap systemd-container util-linux)"
done
work=${WORK:-$(mktemp -d /var/tmp/posgw-check-systemd.XXXXXX)}
mkdir -p "$work"
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. the package ---------------------------------------------------------------------------
if [[ -n ${POSGW_DEB:-} ]]; then
    deb=$(realpath "$POSGW_DEB")
    say "package: $deb (given)"
else
    [[ -n $repo && -f $repo/Cargo.toml ]] || die "no posgw checkout: set POSGW_REPO"
    command -v cargo-deb >/dev/null || die "cargo-deb not on PATH (cargo install cargo-deb), or set POSGW_DEB"
    say "build: $repo (cargo build --release -j $jobs, cargo deb --no-build)"
    # cargo-deb's assets name target/release/posgw, relative to the checkout.
    (cd "$repo" && CARGO_TARGET_DIR=target cargo build --release --locked -j "$jobs" --quiet)
    deb_out=$work/deb
    (cd "$repo" && CARGO_TARGET_DIR=target cargo deb --no-build --quiet --output "$deb_out")
    deb=$(ls "$deb_out"/posgw_*.deb)
fi
[[ -f $deb ]] || die "no .deb at $deb"
dpkg-deb --info "$deb" | sed -n 's/^ \(Package\|Version\|Depends\):/  \1:/p'

# --- 2. root file system ----------------------------------------------------------------------
root=$work/root
if [[ -n ${ROOTFS_CACHE:-} && -f $ROOTFS_CACHE ]]; then
    say "root file system: $ROOTFS_CACHE (cached)"
    mkdir -p "$root"
    tar -xpf "$ROOTFS_CACHE" -C "$root"
else
    say "root file system: debootstrap $suite from $mirror"
    # socat makes the fake scanner, curl talks to HQ, procps has the kill of ExecReload=.
    debootstrap --variant=minbase \
        --include=systemd,systemd-sysv,dbus,procps,iproute2,socat,curl,ca-certificates \
        "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
        die "debootstrap failed, see $work/debootstrap.log (KEEP=1 keeps it)"
    if [[ -n ${ROOTFS_CACHE:-} ]]; then tar -cpf "$ROOTFS_CACHE" -C "$root" .; fi
fi
cp "$deb" "$root/root/"
deb_in_ct=/root/$(basename "$deb")

# --- 3. boot ----------------------------------------------------------------------------------
say "boot: systemd-nspawn --boot ($machine), log in $work/boot.log"
# --register=no --keep-unit: no machined/system bus needed on the host.
# SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1: a pure cgroup v2 tree even on a hybrid host; with v1
#   controllers mounted read-only the container's systemd silently skips DeviceAllow=.
# CAP_BPF and bpf(): systemd enforces DevicePolicy=/DeviceAllow= with a cgroup BPF program;
#   nspawn's default seccomp filter refuses bpf() and systemd then again skips the device ACL.
# adjtimex clock_adjtime: nspawn refuses all of @clock without CAP_SYS_TIME, even the read-only
#   adjtimex(modes=0) the journal's clock-sync flag uses, which a real host allows.
# --private-network: the container's own loopback for the API (7380) and HQ (7390) ports.
SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 setsid systemd-nspawn --quiet --directory="$root" \
    --boot --register=no --keep-unit --machine="$machine" --hostname=store01 \
    --private-network --capability=CAP_BPF --system-call-filter='bpf adjtimex clock_adjtime' \
    --console=read-only \
    </dev/null >"$work/boot.log" 2>&1 &
nspawn_pid=$!
for _ in $(seq 60); do
    leader=$(pgrep -P "$nspawn_pid" -x systemd || true)
    [[ -n $leader ]] && break
    sleep 0.5
done
[[ -n $leader ]] || die "the container did not start, see $work/boot.log"
state=$(ct timeout 90 systemctl is-system-running --wait || true)
printf '  system state: %s\n' "$state"
[[ $state == running || $state == degraded ]] || die "the container did not boot, see $work/boot.log"
ct systemctl --version | head -1 | sed 's/^/  /'

say "sandbox: does this container enforce the sandbox at all?"
check "systemd enforces DevicePolicy=closed here (a closed service cannot open /dev/net/tun)" \
    ctsh '! systemd-run --quiet --wait --pipe -p DevicePolicy=closed sh -c "true 3<>/dev/net/tun" 2>/dev/null'
check "systemd enforces SystemCallFilter= here (uname without uname() is killed)" \
    ctsh '! systemd-run --quiet --wait --pipe -p SystemCallFilter=~uname /usr/bin/uname >/dev/null 2>&1'

# --- 4. install -------------------------------------------------------------------------------
say "install: apt-get install $deb_in_ct"
ct apt-get install -y -q "$deb_in_ct" >"$work/install.log" 2>&1 || {
    cat "$work/install.log"
    die "apt-get install failed"
}
grep -E '^(Creating|Setting up)' "$work/install.log" | sed 's/^/  /' || true
check "user posgw exists and is in dialout" ctsh 'id -nG posgw | grep -qw dialout'
check "user posgw-hq exists" eval 'ct id posgw-hq >/dev/null'
check "/var/lib/posgw is posgw:posgw 0750" ctsh '[[ $(stat -c "%U:%G %a" /var/lib/posgw) == "posgw:posgw 750" ]]'
check "/var/lib/posgw-hq is posgw-hq:posgw-hq 0750" \
    ctsh '[[ $(stat -c "%U:%G %a" /var/lib/posgw-hq) == "posgw-hq:posgw-hq 750" ]]'
check "the configuration files are conffiles" \
    ctsh 'dpkg-query -W -f="\${Conffiles}" posgw | grep -q /etc/posgw/posgw.toml'
check "neither unit is enabled after installation" \
    ctsh '[[ $(systemctl is-enabled posgw posgw-hq | sort -u) == disabled ]]'
check "neither unit is running after installation" \
    ctsh '[[ $(systemctl is-active posgw posgw-hq | sort -u) == inactive ]]'
check "systemd-analyze verify accepts both units" \
    ct systemd-analyze verify /lib/systemd/system/posgw.service /lib/systemd/system/posgw-hq.service

# probe_adjtimex [SED-EXPR]: run adjtimex(modes=0) (x86_64 syscall 159) under posgw.service's
# own sandbox: a copy of the installed unit, edited by SED-EXPR, whose ExecStart= is a perl probe.
probe_adjtimex() {
    local perl='my $$t = chr(0) x 208; my $$r = syscall(159, $$t); print qq(adjtimex: $$r $$!); exit($$r < 0)'
    ctsh "sed -e '/^Type=/d; /^NotifyAccess=/d; /^WatchdogSec=/d; /^ExecStartPre=/d; /^ExecReload=/d' \
              -e '/^Restart/d; /^RuntimeDirectory/d; ${1:-}' \
              -e 's|^ExecStart=.*|Type=oneshot\nExecStart=/usr/bin/perl -e \x27$perl\x27|' \
              /lib/systemd/system/posgw.service >/etc/systemd/system/posgw-probe.service
          systemctl daemon-reload
          systemctl start posgw-probe 2>/dev/null; rc=\$?
          journalctl -u posgw-probe -o cat --no-pager | grep '^adjtimex:' | tail -1 | sed 's/^/  /'
          systemctl reset-failed posgw-probe 2>/dev/null
          rm /etc/systemd/system/posgw-probe.service; systemctl daemon-reload; exit \$rc"
}
check "posgw.service's system call filter lets adjtimex(modes=0) through (clock-sync flag)" probe_adjtimex
check "... which takes its 'SystemCallFilter=adjtimex clock_adjtime' line (without: EPERM)" \
    eval '! probe_adjtimex "/^SystemCallFilter=adjtimex/d"'

# --- 5. HQ ------------------------------------------------------------------------------------
say "configure and start posgw-hq (README: Installing from the .deb)"
ctsh "set -e
    install -d -m 0750 -g posgw-hq /etc/posgw/stores
    printf '%s\n' $store_token | install -m 0640 -g posgw-hq /dev/stdin /etc/posgw/stores/$store.token
    printf '%s\n' $admin_token | install -m 0640 -g posgw-hq /dev/stdin /etc/posgw/hq-admin.token
    # The admin's edit: the shipped hq.toml lists two example stores; keep the first only.
    awk '/^\[\[store\]\]/ { n++ } n < 2' /etc/posgw/hq.toml >/tmp/hq.toml
    cat /tmp/hq.toml >/etc/posgw/hq.toml"
ct systemctl start posgw-hq
check "posgw-hq is active" ctsh '[[ $(systemctl is-active posgw-hq) == active ]]'
check "HQ answers the admin token" eventually 10 hq_records
check "posgw-hq runs with 65536 open files, and caps connections at 4096" \
    ctsh "grep -Eq '^Max open files +65536 +65536' /proc/\$(systemctl show -P MainPID posgw-hq)/limits &&
          curl -fsS http://127.0.0.1:7390/metrics | grep -q '^posgw_hq_connections_max 4096'"
check "HQ refuses a request without a token" \
    ctsh '[[ $(curl -s -o /dev/null -w "%{http_code}" http://127.0.0.1:7390/v1/records) == 401 ]]'

# --- 6. the gateway ---------------------------------------------------------------------------
say "configure posgw: a pty scanner at /dev/ttyACM0, a missing /dev/ttyUSB7, uplink to HQ"
# socat stands in for the scanner: /dev/ttyACM0 -> a pseudo-terminal (root:dialout 0660, like
# a real port); whatever is written to /run/fake-scanner arrives there.
plugs=0
plug_fake_scanner() {
    # A fresh unit name each time: a stopped transient unit lingers until garbage-collected.
    ((plugs == 0)) || ct systemctl stop "fake-scanner-$plugs"
    plugs=$((plugs + 1))
    ct rm -f /dev/ttyACM0 /run/fake-scanner
    ct systemd-run --quiet --unit="fake-scanner-$plugs" socat \
        pty,raw,echo=0,link=/dev/ttyACM0,group=dialout,perm=0660 pty,raw,echo=0,link=/run/fake-scanner
    eventually 10 ct test -e /run/fake-scanner
}
plug_fake_scanner || die "socat did not make the fake scanner"
ctsh "set -e
    printf '%s\n' $store_token | install -m 0640 -g posgw /dev/stdin /etc/posgw/hq.token
    cat >>/etc/posgw/posgw.toml <<'EOF'

[uplink]
endpoint = \"http://127.0.0.1:7390/v1/batches\"
token_file = \"/etc/posgw/hq.token\"

[[device]]
id = \"scanner-2\"
role = \"scanner\"
transport = \"serial\"
station = \"till-2\"
profile = \"generic-scanner\"
path = \"/dev/ttyUSB7\"
EOF"
check "posgw check-config passes as the posgw user (token file readable)" \
    eval 'ct runuser -u posgw -- posgw check-config -c /etc/posgw/posgw.toml >/dev/null'

say "systemctl start posgw"
ct systemctl start posgw || true
main_pid=$(prop posgw MainPID)
started_at=$SECONDS
check "posgw is active" ctsh '[[ $(systemctl is-active posgw) == active ]]'
ct systemctl status posgw --no-pager --lines=0 | sed 's/^/  | /' || true
check "STATUS= from sd_notify: 'running: store $store, 2 device(s)'" \
    ctsh "systemctl status posgw --no-pager | grep -q 'Status: \"running: store $store, 2 device(s)\"'"
check "runs with 8192 open files, and caps API connections at 256" \
    ctsh "grep -Eq '^Max open files +8192 +8192' /proc/$main_pid/limits &&
          curl -fsS http://127.0.0.1:7380/metrics | grep -q '^posgw_api_connections_max 256'"
check "runs as posgw with groups posgw and dialout" \
    ctsh "[[ \$(ps -o user=,group=,supgrp= -p $main_pid | xargs) == 'posgw posgw dialout,posgw' ]]"
check "no capabilities, no_new_privs, a seccomp filter" \
    ctsh "grep -q '^CapEff:.*0000000000000000' /proc/$main_pid/status &&
          grep -q '^CapBnd:.*0000000000000000' /proc/$main_pid/status &&
          grep -q '^NoNewPrivs:.*1' /proc/$main_pid/status && grep -q '^Seccomp:.*2' /proc/$main_pid/status"
# A shell moved into the service's cgroup meets the service's device ACL.
device_probe() {
    local cg
    cg=/sys/fs/cgroup$(prop posgw ControlGroup)
    ctsh "sh -c 'echo \$\$ >$cg/cgroup.procs && true 3<>$1' 2>/dev/null"
}
# device_acl_passes NODE: opening NODE from the service's cgroup is not refused by the ACL (EPERM);
# the driver may still say there is no such port.
device_acl_passes() {
    local cg
    cg=/sys/fs/cgroup$(prop posgw ControlGroup)
    ! ctsh "sh -c 'echo \$\$ >$cg/cgroup.procs && true 3<>$1' 2>&1" | grep -q 'Operation not permitted'
}
check "device ACL: the scanner's port (/dev/ttyACM0 -> pts) opens" device_probe /dev/ttyACM0
check "device ACL: /dev/ptmx (passthrough) opens" device_probe /dev/ptmx
check "device ACL: /dev/net/tun is refused" eval '! device_probe /dev/net/tun'
# A real serial port's node (char-ttyS, major 4); minor 95 (ttyS31) is normally no registered
# port, so the open reaches the driver (ENXIO/ENODEV) without touching hardware.
ct mknod -m 0660 /dev/ttyS31 c 4 95
check "device ACL: /dev/ttyS31 (char-ttyS) passes the ACL" device_acl_passes /dev/ttyS31
check "file system: /usr read-only, /etc/posgw not writable, /var/lib/posgw writable" \
    ctsh "nsenter -t $main_pid -m -S \$(id -u posgw) -G \$(id -g posgw) sh -c '! touch /usr/x 2>/dev/null &&
          ! touch /etc/posgw/x 2>/dev/null && touch /var/lib/posgw/x && rm /var/lib/posgw/x'"
check "the journal says the API listens and the gateway runs" \
    in_journal posgw 'gateway running store=WZ-LC-001'
check "the journal says the watchdog is pinged" in_journal posgw 'systemd watchdog: pinging every'

say "scans: two codes on the fake scanner"
ctsh 'timeout 5 cat /run/posgw/scanner-1 >/tmp/passthrough.out 2>/dev/null &
      sleep 0.5
      printf "6901234567892\r" >/run/fake-scanner; sleep 0.3
      printf "4006381333931\r" >/run/fake-scanner; wait'
check "passthrough: the POS side (/run/posgw/scanner-1) gets the bytes unchanged" \
    ctsh '[[ $(cat /tmp/passthrough.out) == $(printf "6901234567892\r4006381333931\r") ]]'
ct posgw status | sed 's/^/  | /' || true
check "posgw status (root): scanner-1 connected" ctsh 'posgw status | grep -Eq "scanner-1 .* connected"'
check "posgw status (user posgw): scanner-2 disconnected, gateway still up" \
    ctsh 'runuser -u posgw -- posgw status | grep -Eq "scanner-2 .* disconnected"'
check "posgw status: the campaign prompt is open" ctsh 'posgw status | grep -q "xinsong-2026q4 *6901234567892"'
check "HQ has the campaign scan" eventually 15 ctsh "curl -fsS -H 'Authorization: Bearer $admin_token' \
    'http://127.0.0.1:7390/v1/records?store=$store&kind=scan' | grep -q '\"code\":\"6901234567892\".*\"campaign\":\"xinsong-2026q4\"'"
check "HQ has the missing device's 'disconnected' record" \
    eval "hq_records | grep -q '\"device\":\"scanner-2\",\"event\":\"disconnected\"'"
printf '  HQ holds %s records\n' "$(hq_records | wc -l)"

# --- 7. reload --------------------------------------------------------------------------------
say "systemctl reload posgw (SIGHUP)"
ct systemctl reload posgw
check "reload logged: 'reloaded: campaigns, answer codes and skip reasons in force'" \
    eventually 5 in_journal posgw 'reloaded: campaigns, answer codes and skip reasons in force'
ctsh 'mkdir -p /etc/posgw/config.d && printf "[[campaign]]\nid = 3\n" >/etc/posgw/config.d/zz-bad.toml'
check "systemctl reload fails on a bad configuration (checked before the SIGHUP)" \
    eval '! ct systemctl reload posgw'
check "... and the journal names the place: 'zz-bad.toml:2:6: ...'" \
    in_journal posgw '/etc/posgw/config.d/zz-bad.toml:2:6: '
ctsh 'kill -HUP "$(systemctl show -P MainPID posgw)"'
check "a SIGHUP sent another way is refused by the gateway: 'reload refused, the configuration in force stays'" \
    eventually 5 in_journal posgw 'reload refused, the configuration in force stays'
ct rm /etc/posgw/config.d/zz-bad.toml
check "still active, same main process after both reloads" \
    ctsh "[[ \$(systemctl is-active posgw) == active && \$(systemctl show -P MainPID posgw) == $main_pid ]]"

# --- 8. security exposure ---------------------------------------------------------------------
say "systemd-analyze security (live)"
for unit in posgw posgw-hq; do
    exposure=$(ct systemd-analyze security "$unit" --no-pager | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p')
    printf '  %s.service exposure %s\n' "$unit" "${exposure:-?}"
    check "$unit exposure ${exposure:-?} <= $max_exposure" \
        awk -v e="${exposure:-99}" -v m="$max_exposure" 'BEGIN { exit !(e <= m) }'
done

# --- 9. watchdog ------------------------------------------------------------------------------
wait_s=$((70 - (SECONDS - started_at)))
if ((wait_s > 0)); then
    say "watchdog: waiting ${wait_s}s (70 s since start, WatchdogSec=30s)"
    sleep "$wait_s"
fi
check "WatchdogUSec=30s" ctsh '[[ $(systemctl show -P WatchdogUSec posgw) == 30s ]]'
check "no restart, same main process after 70 s" \
    ctsh "[[ \$(systemctl show -P NRestarts posgw) == 0 && \$(systemctl show -P MainPID posgw) == $main_pid ]]"
check "no watchdog timeout in the journal" eval '! in_journal posgw "[Ww]atchdog timeout"'
check "nothing refused by the sandbox in the journal (EPERM, SIGSYS, access denied)" \
    eval '! in_journal posgw "Operation not permitted|Permission denied|SIGSYS|Bad system call|os error (1|13)\b"'

# --- 10. crash --------------------------------------------------------------------------------
say "crash: SIGKILL the gateway (Restart=on-failure, RestartSec=2s)"
ct systemctl kill --signal=SIGKILL posgw
# The killed gateway never closed its port cleanly, so the pty keeps the exclusive lock
# (TIOCEXCL) it took: a pty slave lives as long as its master (socat), unlike a real serial
# port, whose tty goes away at its last close. Re-plug the fake scanner: a fresh pty.
plug_fake_scanner || bad "re-plugging the fake scanner"
check "restarted: active again with a new main process" eventually 15 \
    ctsh "[[ \$(systemctl is-active posgw) == active && \$(systemctl show -P MainPID posgw) != $main_pid &&
           \$(systemctl show -P NRestarts posgw) == 1 ]]"
check "restarted: STATUS running again, scanner-1 (re-plugged) connected" eventually 20 \
    ctsh 'systemctl show -P StatusText posgw | grep -q "^running" && posgw status | grep -Eq "scanner-1 .* connected"'
check "/run/posgw/scanner-1 kept across the restart (RuntimeDirectoryPreserve=restart)" ct test -L /run/posgw/scanner-1

# --- 11. upgrade ------------------------------------------------------------------------------
say "upgrade: dpkg -i the package again while posgw runs"
pid_before=$(prop posgw MainPID)
ct dpkg -i --force-confold "$deb_in_ct" </dev/null >"$work/upgrade.log" 2>&1 || bad "dpkg -i (upgrade)"
check "the postinst restarted the running gateway (new main process, active)" \
    ctsh "[[ \$(systemctl is-active posgw) == active && \$(systemctl show -P MainPID posgw) != $pid_before ]]"
check "the admin's edit of the conffile /etc/posgw/posgw.toml is kept" \
    ct grep -q '^endpoint = "http://127.0.0.1:7390/v1/batches"' /etc/posgw/posgw.toml
check "posgw-hq still active after the upgrade" ctsh '[[ $(systemctl is-active posgw-hq) == active ]]'
sleep 1
since=$(ct date +%s)
sleep 1

# --- 12. stop ---------------------------------------------------------------------------------
say "systemctl stop posgw posgw-hq"
t0=$SECONDS
ct systemctl stop posgw
stop_s=$((SECONDS - t0))
printf '  posgw stopped in %ss\n' "$stop_s"
ct systemctl stop posgw-hq
# After a stop systemd unloads the unit, so `systemctl show` no longer has its exit status: the
# journal does. "Deactivated successfully" is only logged for a main process that exited 0.
for unit in posgw posgw-hq; do
    check "$unit stopped cleanly: exit status 0 ('Deactivated successfully')" \
        in_journal "$unit" "^$unit.service: Deactivated successfully"
    check "$unit: no SIGKILL, no stop timeout, no failure" \
        eval "! in_journal $unit 'SIGKILL|status=9/KILL|Killing process|stop-sigterm. timed out|Failed with result'"
done
check "the gateway logged its shutdown: 'stopped; journal flushed'" in_journal posgw 'stopped; journal flushed'
check "posgw stopped within 10 s (TimeoutStopSec=30s)" eval "(( stop_s <= 10 ))"
check "/run/posgw removed on stop" eval '! ct test -e /run/posgw'
check "offline tool as posgw reads the stopped journal" \
    eval 'ct runuser -u posgw -- posgw journal stats --data /var/lib/posgw | grep -q "^dead records *0"'

# --- 13. purge --------------------------------------------------------------------------------
say "apt-get purge posgw"
ct apt-get purge -y -q posgw >"$work/purge.log" 2>&1 || bad "apt-get purge posgw"
check "units gone after purge" eval '! ct test -e /lib/systemd/system/posgw.service'
check "the journal in /var/lib/posgw survives the purge" ct test -d /var/lib/posgw/journal

say "result: $passed passed, $failed failed"
((failed == 0)) || exit 1
