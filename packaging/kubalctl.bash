# bash completion for kubalctl (installed as /usr/share/bash-completion/completions/kubalctl).
# Commands and flags are static; POOL and HOST come from the running daemon
# ("kubalctl status", an unauthenticated read), using the --url/--token-file/TLS flags
# already on the command line.

# _kubalctl_status_rows prints "POOL HOST" for every server row of kubalctl status.
_kubalctl_status_rows() {
	local -a conn=()
	local i w
	for ((i = 1; i < ${#COMP_WORDS[@]} - 1; i++)); do
		w=${COMP_WORDS[i]}
		case $w in
		--url | -url | --ca | -ca | --cert | -cert | --key | -key | --token-file | -token-file)
			conn+=("$w" "${COMP_WORDS[i + 1]}")
			((i++))
			;;
		--url=* | -url=* | --ca=* | --cert=* | --key=* | --token-file=*) conn+=("$w") ;;
		esac
	done
	# Table rows: POOL HOST ENABLED(yes/no) UP(yes/no/partial) POOLED(yes/no) WEIGHT WHY.
	kubalctl "${conn[@]}" --timeout 2s status 2>/dev/null |
		awk '($3=="yes"||$3=="no") && ($5=="yes"||$5=="no") {print $1, $2}'
}

_kubalctl() {
	local cur prev words cword
	if declare -F _init_completion >/dev/null; then
		_init_completion || return
	else
		cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD - 1]}
		words=("${COMP_WORDS[@]}") cword=$COMP_CWORD
	fi
	local global="--url --token-file --json --timeout --ca --cert --key --version --help"
	case $prev in
	--token-file | -token-file | --ca | -ca | --cert | -cert | --key | -key)
		COMPREPLY=($(compgen -f -- "$cur"))
		return
		;;
	--url | -url | --timeout | -timeout | --reason)
		return
		;;
	esac
	# Find the command and the positional arguments after it.
	local cmd="" i
	local -a pos=()
	for ((i = 1; i < cword; i++)); do
		case ${words[i]} in
		--url | -url | --token-file | -token-file | --timeout | -timeout | --ca | -ca | --cert | -cert | --key | -key | --reason) ((i++)) ;;
		-*) ;;
		*)
			if [ -z "$cmd" ]; then cmd=${words[i]}; else pos+=("${words[i]}"); fi
			;;
		esac
	done
	if [ -z "$cmd" ]; then
		if [[ $cur == -* ]]; then
			COMPREPLY=($(compgen -W "$global" -- "$cur"))
		else
			COMPREPLY=($(compgen -W "status depool pool weight help" -- "$cur"))
		fi
		return
	fi
	if [[ $cur == -* ]]; then
		case $cmd in
		depool) COMPREPLY=($(compgen -W "--reason --force" -- "$cur")) ;;
		pool | weight) COMPREPLY=($(compgen -W "--reason" -- "$cur")) ;;
		esac
		return
	fi
	case $cmd:${#pos[@]} in
	status:0 | depool:0 | pool:0 | weight:0)
		COMPREPLY=($(compgen -W "$(_kubalctl_status_rows | awk '{print $1}' | sort -u)" -- "$cur"))
		;;
	depool:1 | pool:1 | weight:1)
		COMPREPLY=($(compgen -W "$(_kubalctl_status_rows | awk -v p="${pos[0]}" '$1==p {print $2}')" -- "$cur"))
		;;
	esac
}
complete -F _kubalctl kubalctl
