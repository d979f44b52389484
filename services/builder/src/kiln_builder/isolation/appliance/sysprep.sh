#!/bin/sh
# Kiln sysprep in the appliance: what customize.sysprep does on the host, for a
# disk the host never mounts (a customised build in vm mode). The appliance's
# init runs it chrooted into the image, with the image's own shell and tools,
# so the image's links resolve inside the image. Operations are the arguments;
# tests/integration/test_appliance_sysprep.py checks that both ways agree.
set -eu

# clear_dir DIR KEPT...: removes what DIR holds but the names kept (a DIR that
# is a link is left alone: what it names is not this directory).
clear_dir() {
	dir=$1
	shift
	[ -d "$dir" ] && [ ! -L "$dir" ] || return 0
	for entry in "$dir"/* "$dir"/.[!.]* "$dir"/..?*; do
		[ -e "$entry" ] || [ -L "$entry" ] || continue
		name=${entry##*/}
		keep=0
		for kept in "$@"; do [ "$name" = "$kept" ] && keep=1; done
		[ $keep = 1 ] || rm -rf "$entry"
	done
}

for op in "$@"; do
	case "$op" in
	ssh-host-keys)
		rm -f /etc/ssh/ssh_host_*
		;;
	machine-id)
		# Empty, not absent: systemd then treats the next boot as the first.
		if [ -f /etc/machine-id ]; then : >/etc/machine-id; fi
		rm -f /var/lib/dbus/machine-id
		;;
	udev-persistent-net)
		rm -f /etc/udev/rules.d/70-persistent-net.rules
		;;
	root-password)
		if [ -f /etc/shadow ]; then sed -i 's/^root:[^:]*:/root:*:/' /etc/shadow; fi
		;;
	logs)
		if [ -d /var/log ]; then
			find /var/log/ -type f \( -name '*.gz' -o -name '*.xz' -o -name '*[0-9]' \) -delete
			find /var/log/ -type f -exec truncate -s 0 {} +
		fi
		;;
	shell-history)
		rm -f /root/.bash_history /home/*/.bash_history
		;;
	apt-lists)
		clear_dir /var/lib/apt/lists lock partial auxfiles
		clear_dir /var/cache/apt/archives lock partial
		rm -f /var/cache/apt/*.bin
		;;
	resolv-conf)
		if [ -f /etc/resolv.conf ] && [ ! -L /etc/resolv.conf ]; then : >/etc/resolv.conf; fi
		;;
	*)
		echo "sysprep: unknown operation $op" >&2
		exit 2
		;;
	esac
done
