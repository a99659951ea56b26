# /lib/functions/preinit.sh of the test squashfs: OpenWrt's boot hooks, same behaviour. A
# hook is a space-separated list of functions in the variable <hook>_hook; boot_run_hook
# runs each once, in the order added.

boot_hook_init() {
	local hook="${1}_hook"
	export -n "PI_STACK_LIST=${PI_STACK_LIST:+$PI_STACK_LIST }$hook"
	export -n "$hook="
}

boot_hook_add() {
	local hook="${1}_hook"
	local function="$2"
	[ -n "$function" ] && {
		local v
		eval "v=\$$hook"
		export -n "$hook=${v:+$v }$function"
	}
}

boot_hook_shift() {
	local hook="${1}_hook"
	local rvar="$2"
	local v
	eval "v=\$$hook"
	[ -n "$v" ] || return 1
	local first="${v%% *}"
	if [ "$v" != "${v#* }" ]; then
		export -n "$hook=${v#* }"
	else
		export -n "$hook="
	fi
	export -n "$rvar=$first"
}

boot_run_hook() {
	local hook="$1"
	local func
	while boot_hook_shift "$hook" func; do
		local ran
		eval "ran=\$PI_RAN_$func"
		[ -n "$ran" ] || {
			export -n "PI_RAN_$func=1"
			$func "$1" "$2"
		}
	done
}
