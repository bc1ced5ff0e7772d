#!/bin/sh
# Install the Debian packages nfkit's tests and demo need, only when missing.
# Usage: scripts/install-system-deps.sh [demo|test]
set -eu
profile="${1:-test}"
need=""
have() { command -v "$1" >/dev/null 2>&1; }
have ip || need="$need iproute2"
have iptables || need="$need iptables"
have ping || need="$need iputils-ping"
if [ "$profile" = test ]; then
    have ulogd || need="$need ulogd2"
    [ -e /usr/lib/x86_64-linux-gnu/ulogd/ulogd_output_JSON.so ] || need="$need ulogd2-json"
    [ -e /usr/lib/x86_64-linux-gnu/ulogd/ulogd_output_SQLITE3.so ] || need="$need ulogd2-sqlite3"
    [ -e /usr/lib/x86_64-linux-gnu/ulogd/ulogd_output_PCAP.so ] || need="$need ulogd2-pcap"
    have tshark || need="$need tshark"
    have sqlite3 || need="$need sqlite3"
    have conntrack || need="$need conntrack"
    have setpriv || need="$need util-linux"
    have nfcapd || need="$need nfdump"
    have nfacct || need="$need nfacct"
    # Database tests start their own servers; ulogd2's database plugins are the reference.
    [ -d /usr/lib/postgresql ] || need="$need postgresql"
    have mariadbd || need="$need mariadb-server"
    have mariadb || need="$need mariadb-client"
    [ -e /usr/lib/x86_64-linux-gnu/ulogd/ulogd_output_PGSQL.so ] || need="$need ulogd2-pgsql"
    [ -e /usr/lib/x86_64-linux-gnu/ulogd/ulogd_output_MYSQL.so ] || need="$need ulogd2-mysql"
fi
if [ "$profile" = bench ]; then
    # NetfilterQueue (the NFQUEUE benchmark's reference) builds against these.
    [ -e /usr/include/libnetfilter_queue/libnetfilter_queue.h ] || need="$need libnetfilter-queue-dev"
    have gcc || need="$need gcc"
fi
if [ -n "$need" ]; then
    echo "installing Debian packages:$need"
    export DEBIAN_FRONTEND=noninteractive
    # tshark asks whether non-root users may capture; answer no.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections 2>/dev/null || true
    # Packages must not start services (database servers) in this namespace:
    # the tests start their own, in temporary directories.
    policy=/usr/sbin/policy-rc.d
    own_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $need >/dev/null
    [ -z "$own_policy" ] || rm -f "$policy"
fi
# Where an init system runs, Debian starts ulogd2 after installing it; stop
# that service (never other ulogd processes: tests run their own in labs).
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet ulogd2 2>/dev/null; then
    systemctl stop ulogd2 || true
fi
