#!/bin/bash
# Runs inside the systemd rig VM (systemd is PID 1; see README.md): installs the kubal
# .deb with apt and checks, with the unit's shipped hardening, what issue 17 asks of a
# package on an LVS host. Every check prints "ok - NAME" or "FAIL - NAME: why"; the exit
# code is the number of failures (0: all passed). Measurements print as "measure: ...".
set -uo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin SYSTEMD_PAGER= SYSTEMD_COLORS=0
cd /payload
echo "measure: test.sh starts $(cut -d' ' -f1 /proc/uptime) s after the kernel (boot to basic.target)"
fails=0
ok() { echo "ok - $1"; }
fail() {
	echo "FAIL - $1${2:+: $2}"
	fails=$((fails + 1))
}
check() { # check NAME CMD...: CMD's exit status decides
	local name=$1
	shift
	if out=$("$@" 2>&1); then ok "$name"; else fail "$name" "$(echo "$out" | tail -5)"; fi
}
# wait_for SECONDS CMD...: poll CMD every 0.2 s until it succeeds.
wait_for() {
	local end=$((SECONDS + $1))
	shift
	while ! "$@" >/dev/null 2>&1; do
		[ $SECONDS -ge $end ] && return 1
		sleep 0.2
	done
}
now_us() { awk '{printf "%d\n", $1 * 1000000}' /proc/uptime; }
mainpid() { systemctl show -p MainPID --value kubal; }
vip=198.51.100.80
bird() { birdc -s /run/bird-router.ctl "$@"; }
route_at_bird() { bird show route "$vip/32" | grep -q "$vip/32"; }
session_up() { bird show protocols kubal | grep -q Established; }
ipvs() { ipvsadm -Ln --tcp-service "$vip:80"; }
journal_dump() { journalctl -u kubal -o cat --no-pager | tail -${1:-30} | sed 's/^/  journal: /'; }

# The rig runs no generator's output (no fstab, gettys, SysV scripts, crypt or GPT
# devices): masked, each `systemctl daemon-reload` (the package's scripts call it on
# every install, upgrade and removal) takes half the time under TCG.
mkdir -p /etc/systemd/system-generators
for g in /lib/systemd/system-generators/*; do ln -sfn /dev/null "/etc/systemd/system-generators/${g##*/}"; done
systemctl daemon-reload

# --- the router: BIRD 2 in a network namespace, a veth to the host (kubal's side) ----
ip netns add router
ip link add veth0 type veth peer name veth1
ip link set veth1 netns router
ip addr add 10.0.1.1/24 dev veth0 && ip link set veth0 up
ip -n router addr add 10.0.1.2/24 dev veth1 && ip -n router link set veth1 up && ip -n router link set lo up
cat >/run/bird-router.conf <<'EOF'
router id 10.0.1.2;
log "/run/bird-router.log" all;
debug protocols all;
protocol device { scan time 10; }
protocol bgp kubal {
	local 10.0.1.2 as 64601;
	neighbor 10.0.1.1 as 64600;
	connect delay time 1;
	connect retry time 1;
	error wait time 1, 2;
	ipv4 { import all; export none; };
}
EOF
ip netns exec router bird -c /run/bird-router.conf -s /run/bird-router.ctl -P /run/bird-router.pid ||
	fail "BIRD starts in the router namespace"

# --- install ---------------------------------------------------------------------------
t0=$SECONDS
if out=$(DEBIAN_FRONTEND=noninteractive apt-get install -y -q ./kubal_0.0~rig1_amd64.deb 2>&1); then
	ok "apt install ./kubal_*.deb ($((SECONDS - t0)) s)"
else
	fail "apt install ./kubal_*.deb" "$(echo "$out" | tail -10)"
	exit 99
fi
check "kubal --version names the package version" bash -c 'kubal --version | grep -E "^kubal 0\.0~rig1 \(commit [0-9a-f]{12}.*, go1\."'
check "kubalctl --version" bash -c 'kubalctl --version | grep -E "^kubalctl 0\.0~rig1 "'
check "man pages installed" test -s /usr/share/man/man8/kubal.8.gz -a -s /usr/share/man/man8/kubalctl.8.gz
check "the kubal system user exists" bash -c 'getent passwd kubal | grep -q ":/var/lib/kubal:"'
check "/etc/kubal is root:kubal 0750" bash -c '[ "$(stat -c %U:%G:%a /etc/kubal)" = root:kubal:750 ]'
check "no config yet: the unit is enabled but not started (ConditionPathExists)" \
	bash -c 'systemctl is-enabled kubal && ! systemctl is-active kubal'

# --- config ------------------------------------------------------------------------------
mkdir -p /etc/pybal/pools
cat >/etc/pybal/pools/web_80 <<'EOF'
{ 'host': '10.0.2.11', 'weight': 10, 'enabled': True }
{ 'host': '10.0.2.12', 'weight': 10, 'enabled': True }
EOF
cat >/etc/pybal/pybal.conf <<'EOF'
[global]
bgp = yes
# kubal adds the VIP to lo only when asked (PyBal hosts get it from Puppet)
vip-addresses = yes
# an IPVS sysctl kubal keeps when asked: the unit's sandbox must let it
ipvs-expire-nodest-conn = yes
bgp-local-asn = 64600
bgp-peer-address = ['10.0.1.2']
bgp-nexthop-ipv4 = 10.0.1.1
bgp-local-ips = ['10.0.1.1']
instrumentation = yes
instrumentation_port = 9090
instrumentation_ips = ['127.0.0.1']
admin_port = 9091
admin-token-file = /etc/kubal/admin-tokens

[web_80]
protocol = tcp
ip = 198.51.100.80
port = 80
scheduler = wrr
config = file:///etc/pybal/pools/web_80
depool-threshold = .5
monitors = []
EOF
# The documented path for secrets (configs/k8s/README.md, the unit): root:kubal 0640.
install -m 0640 -o root -g kubal /dev/null /etc/kubal/admin-tokens
echo "rig:s3cret-rig-token" >/etc/kubal/admin-tokens
echo "s3cret-rig-token" >/root/token

# --- start: returns after READY ------------------------------------------------------------
t0=$(now_us)
if systemctl start kubal; then
	t1=$(now_us)
	# Checked at once, no polling: Type=notify means start returned after READY=1.
	ready=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9090/readyz)
	echo "measure: systemctl start kubal returned after $(((t1 - t0) / 1000)) ms"
	if [ "$ready" = 200 ] && [ "$(systemctl show -p SubState --value kubal)" = running ]; then
		ok "systemctl start returns after kubal reported ready (/readyz 200 at once)"
	else
		fail "systemctl start returns after ready" "/readyz $ready, state $(systemctl show -p ActiveState,SubState kubal | tr '\n' ' ')"
	fi
else
	fail "systemctl start kubal" "$(systemctl status kubal 2>&1 | tail -20)"
	journal_dump 40
	exit 98
fi
check "systemctl status: active (running), STATUS=serving" \
	bash -c 'systemctl status kubal | grep -q "Active: active (running)" && systemctl status kubal | grep -q "Status: \"serving\""'
check "journal has PyBal-style [pool] LEVEL: lines" \
	bash -c 'journalctl -u kubal -o cat | grep -qE "^\[web_80\] (INFO|WARN|WARNING|ERROR|DEBUG): "'
pid=$(mainpid)
check "kubal runs as user kubal with only NET_ADMIN NET_RAW NET_BIND_SERVICE" bash -c "
	[ \"\$(ps -o user= -p $pid)\" = kubal ] &&
	[ \"\$(awk '/^CapEff/{print \$2}' /proc/$pid/status)\" = 0000000000003400 ]"

# --- with the shipped hardening: IPVS, VIP, BGP on 179, APIs ---------------------------------
check "IPVS programmed (wrr, both servers, DR)" wait_for 20 bash -c \
	"ipvsadm -Ln --tcp-service $vip:80 | grep -q wrr && [ \$(ipvsadm -Ln --tcp-service $vip:80 | grep -c 'Route') = 2 ]"
check "kubal sets net.ipv4.vs.expire_nodest_conn = 1 (ipvs-expire-nodest-conn) under the unit's sandbox" wait_for 10 bash -c \
	'[ "$(cat /proc/sys/net/ipv4/vs/expire_nodest_conn)" = 1 ] && ! curl -sf http://127.0.0.1:9090/alerts | grep -q sysctl'
check "VIP address on lo" wait_for 10 bash -c "ip -o addr show dev lo | grep -q ' $vip/32 '"
check "kubal listens on port 179" bash -c "ss -ltnp | grep -E '10\.0\.1\.1:179 .*kubal'"
check "BGP session with BIRD established" wait_for 60 session_up
check "BIRD has the VIP route" wait_for 30 route_at_bird
check "instrumentation API /pools" bash -c 'curl -sf http://127.0.0.1:9090/pools | grep -q web_80'
check "admin API: kubalctl status (read)" bash -c 'kubalctl status | grep -q "^web_80 *10.0.2.11"'
check "admin API: kubalctl weight (write, state file in StateDirectory)" bash -c \
	"kubalctl --token-file /root/token weight web_80 10.0.2.12 5 --reason rig && ipvsadm -Ln --tcp-service $vip:80 | grep -E '10.0.2.12:80 +Route +5 ' && test -s /var/lib/kubal/state.json"
check "bash completion: pools from the daemon" bash -c \
	'. /usr/share/bash-completion/completions/kubalctl; COMP_WORDS=(kubalctl depool ""); COMP_CWORD=2; _kubalctl; [ "${COMPREPLY[*]}" = web_80 ]'
check "bash completion: hosts of a pool" bash -c \
	'. /usr/share/bash-completion/completions/kubalctl; COMP_WORDS=(kubalctl depool web_80 ""); COMP_CWORD=3; _kubalctl; [ "${COMPREPLY[*]}" = "10.0.2.11 10.0.2.12" ]'

# --- reload ----------------------------------------------------------------------------------
sed -i 's/^scheduler = wrr/scheduler = rr/' /etc/pybal/pybal.conf
check "systemctl reload applies a changed config (wrr -> rr)" bash -c \
	"systemctl reload kubal && for i in \$(seq 50); do ipvsadm -Ln --tcp-service $vip:80 | grep -q ' rr' && exit 0; sleep 0.2; done; exit 1"
cp /etc/pybal/pybal.conf /run/pybal.conf.good
echo "scheduler = nonsense" >>/etc/pybal/pybal.conf
if systemctl reload kubal 2>/dev/null; then
	fail "systemctl reload of a broken config fails"
else
	ok "systemctl reload of a broken config fails (ExecReload validates first)"
fi
check "the broken config left the old one running (rr, same PID, active)" bash -c \
	"ipvsadm -Ln --tcp-service $vip:80 | grep -q ' rr' && [ \$(systemctl show -p MainPID --value kubal) = $pid ] && systemctl is-active kubal"
cp /run/pybal.conf.good /etc/pybal/pybal.conf

# --- watchdog: SIGSTOP -> restarted, hitless --------------------------------------------------
# WatchdogSec=10 for the rig (the unit ships 30) to keep the test short.
mkdir -p /etc/systemd/system/kubal.service.d
printf '[Service]\nWatchdogSec=10\n' >/etc/systemd/system/kubal.service.d/rig.conf
systemctl daemon-reload
systemctl restart kubal
wait_for 60 session_up && wait_for 30 route_at_bird
before=$(ipvs)
pid=$(mainpid)
t0=$(now_us)
kill -STOP "$pid"
# Watch IPVS while kubal is stopped and restarted: it must never lose the service.
lost=0
while [ "$(mainpid)" = "$pid" ] || [ "$(systemctl show -p SubState --value kubal)" != running ]; do
	ipvs | grep -q Route || lost=$((lost + 1))
	[ $(($(now_us) - t0)) -gt 90000000 ] && break
	sleep 0.5
done
t1=$(now_us)
newpid=$(mainpid)
echo "measure: SIGSTOP -> new kubal running after $(((t1 - t0) / 1000)) ms (WatchdogSec=10, RestartSec=2)"
if [ "$newpid" != "$pid" ] && journalctl -u kubal --no-pager | grep -q "Watchdog timeout"; then
	ok "watchdog killed the stopped kubal and systemd restarted it"
else
	fail "watchdog restart" "pid $pid -> $newpid"
	journal_dump 20
fi
[ $((t1 - t0)) -le 30000000 ] && ok "restarted within WatchdogSec + RestartSec + start" ||
	fail "restarted in time" "$(((t1 - t0) / 1000)) ms"
[ "$lost" = 0 ] && ok "IPVS kept its destinations during the watchdog restart" ||
	fail "IPVS untouched during the watchdog restart" "$lost samples without destinations"
after=$(ipvs)
[ "$before" = "$after" ] && ok "IPVS table identical after the restart" ||
	fail "IPVS table identical after the restart" "before: $before / after: $after"
check "BGP session back after the restart" wait_for 60 session_up
check "VIP route back at BIRD" wait_for 30 route_at_bird

# --- upgrade: no restart unless asked -------------------------------------------------------
pid=$(mainpid)
check "apt install of a newer version" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q ./kubal_0.0~rig2_amd64.deb
check "the upgrade did not restart kubal (same PID)" bash -c "[ \$(systemctl show -p MainPID --value kubal) = $pid ] && systemctl is-active kubal"
check "kubal --version is the new one" bash -c 'kubal --version | grep -q "^kubal 0\.0~rig2 "'
sed -i 's/^RESTART_ON_UPGRADE=.*/RESTART_ON_UPGRADE=yes/' /etc/default/kubal
check "reinstall with RESTART_ON_UPGRADE=yes" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --reinstall ./kubal_0.0~rig2_amd64.deb
check "RESTART_ON_UPGRADE=yes restarted kubal" bash -c "[ \$(systemctl show -p MainPID --value kubal) != $pid ] && systemctl is-active kubal"
sed -i 's/^RESTART_ON_UPGRADE=.*/RESTART_ON_UPGRADE=no/' /etc/default/kubal
wait_for 60 session_up && wait_for 30 route_at_bird

# --- stop: BIRD sees the withdraw before the process exits ------------------------------------
# BIRD logs (debug protocols all) each route it removes and each session event with a
# millisecond wall-clock stamp; the journal stamps kubal's lines in microseconds on the
# same clock. A withdraw is an UPDATE seen while the session is up (a route flushed
# because the session dropped is removed after the state change), and it was seen before
# the process exited if BIRD removed the route no later than kubal's last line
# ("speaker stopped", logged after the withdraw and the Cease, before exit).
n0=$(wc -l </run/bird-router.log)
since=$(date +%s)
before=$(ipvs)
systemctl stop kubal
tail -n +$((n0 + 1)) /run/bird-router.log >/run/bird-stop.log
sed 's/^/  bird at stop: /' /run/bird-stop.log | grep -v -e 'Connecting to' -e 'Connect delayed' -e 'Connection refused' | head -20
rm_line=$(grep -n -E "removed.*$vip/32|$vip/32.*(removed|withdraw)" /run/bird-stop.log | head -1 | cut -d: -f1)
down_line=$(grep -n -E 'State changed to (stop|flush|down)|Received: |Connection (lost|closed)' /run/bird-stop.log | head -1 | cut -d: -f1)
rm_wall=""
if [ -n "$rm_line" ]; then
	rm_wall=$(sed -n "${rm_line}p" /run/bird-stop.log | awk '{print $1" "$2}' | xargs -I{} date -d {} +%s.%N)
fi
last_wall=$(journalctl -u kubal -o short-unix --since "@$since" --no-pager | grep 'speaker stopped' | tail -1 | awk '{print $1}')
echo "measure: BIRD removed the VIP at ${rm_wall:-never} (line ${rm_line:-none}, session end at line ${down_line:-none}); kubal logged 'speaker stopped' at ${last_wall:-never} (wall clock, s)"
if [ -n "$rm_line" ] && [ -n "$last_wall" ] && { [ -z "$down_line" ] || [ "$rm_line" -lt "$down_line" ]; } &&
	awk -v r="$rm_wall" -v e="$last_wall" 'BEGIN { exit !(r <= e) }'; then
	ok "systemctl stop: BIRD saw the withdraw (an UPDATE, before the session ended) while kubal was still running"
else
	fail "withdraw before exit" "see the BIRD lines above"
fi
check "BIRD received a Cease (administrative shutdown), not a dropped session" \
	grep -q -i "Received: Administrative shutdown" /run/bird-stop.log
[ "$before" = "$(ipvs)" ] && ok "stop left IPVS as it was" || fail "stop left IPVS as it was"

# --- systemd-analyze security ------------------------------------------------------------------
# While the package is still installed (the analysis reads the unit file, running or not):
# after `apt remove` it would take a reinstall, ~10 s under TCG.
sec=$(systemd-analyze security kubal.service --no-pager 2>&1)
echo "measure: $(echo "$sec" | tail -1)"
echo "$sec" | grep -E '^✗' | sed 's/^/  security: /' | head -40

# --- apt remove: IPVS and config stay ----------------------------------------------------------
systemctl start kubal
wait_for 60 session_up
before=$(ipvs)
check "apt remove kubal" env DEBIAN_FRONTEND=noninteractive apt-get remove -y -q kubal
[ "$before" = "$(ipvs)" ] && ok "apt remove left IPVS as it was" || fail "apt remove left IPVS" "$(ipvs)"
check "apt remove left the config" test -s /etc/pybal/pybal.conf -a -s /etc/default/kubal -a -s /etc/kubal/admin-tokens
check "apt remove stopped kubal" bash -c '! pgrep -x kubal'

echo "summary: $fails failure(s)"
if [ "$fails" != 0 ]; then
	journal_dump 40
	sed 's/^/  bird: /' /run/bird-router.log | tail -30
fi
exit "$fails"
