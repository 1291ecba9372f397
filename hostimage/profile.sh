# Shell set-up for users of a berth host; read by login shells (`bash -l`,
# the gateway's sessions) and, through bash.bashrc, by other interactive bash.
if [ -n "${BASH_VERSION-}" ] && [ -n "${PS1-}" ]; then
	# The container's hostname is a random id; name the place instead.
	PS1='\u@berth-host:\w\$ '
fi
