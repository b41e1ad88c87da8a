# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_chordctl_global_optspecs
    string join \n agent= o/output= token= cacert= cert= key= h/help V/version
end

function __fish_chordctl_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_chordctl_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_chordctl_using_subcommand
    set -l cmd (__fish_chordctl_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c chordctl -n "__fish_chordctl_needs_command" -l agent -d 'The agent to talk to: a URL or HOST:PORT. Repeat it, or give a comma-separated list, to name fallbacks: they are tried in order when one cannot be reached (a read also moves on when an agent has not begun its answer within 3 s)' -r
complete -c chordctl -n "__fish_chordctl_needs_command" -s o -l output -d 'Output format' -r -f -a "table\t'Tables for people'
json\t'The agent\'s JSON, pretty-printed, for scripts'"
complete -c chordctl -n "__fish_chordctl_needs_command" -l token -d 'Bearer token for an agent started with --api-token' -r
complete -c chordctl -n "__fish_chordctl_needs_command" -l cacert -d 'CA certificate(s) (PEM) to verify https:// agents with' -r -F
complete -c chordctl -n "__fish_chordctl_needs_command" -l cert -d 'Client certificate (PEM) for agents that require one (--http-verify-clients)' -r -F
complete -c chordctl -n "__fish_chordctl_needs_command" -l key -d 'The private key (PEM) of --cert' -r -F
complete -c chordctl -n "__fish_chordctl_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chordctl -n "__fish_chordctl_needs_command" -s V -l version -d 'Print version'
complete -c chordctl -n "__fish_chordctl_needs_command" -f -a "agent" -d 'Run an agent (a member of the ring) in the foreground'
complete -c chordctl -n "__fish_chordctl_needs_command" -f -a "ring" -d 'Inspect the ring, or ask an agent to leave it'
complete -c chordctl -n "__fish_chordctl_needs_command" -f -a "locate" -d 'Show the owner of KEY, its replicas, and the hops the lookup took'
complete -c chordctl -n "__fish_chordctl_needs_command" -f -a "svc" -d 'Register, deregister, discover and list services'
complete -c chordctl -n "__fish_chordctl_needs_command" -f -a "status" -d 'Report or query the call-quality status of service instances'
complete -c chordctl -n "__fish_chordctl_needs_command" -f -a "bench" -d 'Load-test an agent: ops/s and latency percentiles of register, discover, report'
complete -c chordctl -n "__fish_chordctl_needs_command" -f -a "tls" -d 'Make a CA and certificates for TLS (no agent needed)'
complete -c chordctl -n "__fish_chordctl_needs_command" -f -a "completions" -d 'Print a shell completion script to stdout'
complete -c chordctl -n "__fish_chordctl_needs_command" -f -a "man" -d 'Print the man page (roff) to stdout'
complete -c chordctl -n "__fish_chordctl_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and not __fish_seen_subcommand_from create join dev help" -l agent -d 'The agent to talk to: a URL or HOST:PORT. Repeat it, or give a comma-separated list, to name fallbacks: they are tried in order when one cannot be reached (a read also moves on when an agent has not begun its answer within 3 s)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and not __fish_seen_subcommand_from create join dev help" -s o -l output -d 'Output format' -r -f -a "table\t'Tables for people'
json\t'The agent\'s JSON, pretty-printed, for scripts'"
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and not __fish_seen_subcommand_from create join dev help" -l token -d 'Bearer token for an agent started with --api-token' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and not __fish_seen_subcommand_from create join dev help" -l cacert -d 'CA certificate(s) (PEM) to verify https:// agents with' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and not __fish_seen_subcommand_from create join dev help" -l cert -d 'Client certificate (PEM) for agents that require one (--http-verify-clients)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and not __fish_seen_subcommand_from create join dev help" -l key -d 'The private key (PEM) of --cert' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and not __fish_seen_subcommand_from create join dev help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and not __fish_seen_subcommand_from create join dev help" -s V -l version -d 'Print version'
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and not __fish_seen_subcommand_from create join dev help" -f -a "create" -d 'Start a new ring with this node as its only member'
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and not __fish_seen_subcommand_from create join dev help" -f -a "join" -d 'Join the ring that SEED (a member\'s ring address) is in'
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and not __fish_seen_subcommand_from create join dev help" -f -a "dev" -d 'Run a local N-node ring in one process on loopback, with embedded stores, for trying things'
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and not __fish_seen_subcommand_from create join dev help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -l bind -d 'Ring RPC listen address (port 0: any free port)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -l advertise -d 'Ring address other nodes dial [default: the bound address]' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -l http -d 'HTTP API listen address (port 0: any free port)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -l dns -d 'Serve DNS on UDP and TCP at this address (port 0: any free port); off unless given' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -l data-dir -d 'Embedded store directory (the default store)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -l redis -d 'Use Redis instead of the embedded store, e.g. redis://:secret@127.0.0.1:6379/0' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -l config -d 'Read settings from this TOML file (keys like the long flags: bind, data_dir, ...)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -l replicas -d 'Copies of every record, owner included' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -l write-quorum -d 'Copies (owner included) that must be durable before a write is acknowledged; default: a majority of K' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -l successors -d 'Successor-list length' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -l cluster-secret -d 'Shared secret every ring member must prove' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -l api-token -d 'Bearer token the HTTP API requires on every route but /healthz and the web view (/ui)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -l stabilize-ms -d 'Milliseconds between stabilize rounds' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -l rpc-timeout-ms -d 'Deadline of one ring RPC call, in milliseconds' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -l tls-cert -d 'This node\'s certificate (PEM): with --tls-key and --tls-ca, both ports speak TLS and ring peers must present a certificate signed by the CA. Reread when it changes' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -l tls-key -d 'The private key of --tls-cert (PEM)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -l tls-ca -d 'The CA certificate(s) (PEM) that ring peers\' and HTTP clients\' certificates must be signed by' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -l dns-domain -d 'The DNS zone: services answer as SERVICE.service.DOMAIN' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -l dns-ttl -d 'The TTL of DNS records, e.g. 5s, 1m' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -l agent -d 'The agent to talk to: a URL or HOST:PORT. Repeat it, or give a comma-separated list, to name fallbacks: they are tried in order when one cannot be reached (a read also moves on when an agent has not begun its answer within 3 s)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -s o -l output -d 'Output format' -r -f -a "table\t'Tables for people'
json\t'The agent\'s JSON, pretty-printed, for scripts'"
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -l token -d 'Bearer token for an agent started with --api-token' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -l cacert -d 'CA certificate(s) (PEM) to verify https:// agents with' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -l cert -d 'Client certificate (PEM) for agents that require one (--http-verify-clients)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -l key -d 'The private key (PEM) of --cert' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -l http-verify-clients -d 'Also require client certificates from the CA on the HTTP port'
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -l print-config -d 'Print the settings in effect (secrets masked) and exit without starting'
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from create" -s V -l version -d 'Print version'
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -l bind -d 'Ring RPC listen address (port 0: any free port)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -l advertise -d 'Ring address other nodes dial [default: the bound address]' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -l http -d 'HTTP API listen address (port 0: any free port)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -l dns -d 'Serve DNS on UDP and TCP at this address (port 0: any free port); off unless given' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -l data-dir -d 'Embedded store directory (the default store)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -l redis -d 'Use Redis instead of the embedded store, e.g. redis://:secret@127.0.0.1:6379/0' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -l config -d 'Read settings from this TOML file (keys like the long flags: bind, data_dir, ...)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -l replicas -d 'Copies of every record, owner included' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -l write-quorum -d 'Copies (owner included) that must be durable before a write is acknowledged; default: a majority of K' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -l successors -d 'Successor-list length' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -l cluster-secret -d 'Shared secret every ring member must prove' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -l api-token -d 'Bearer token the HTTP API requires on every route but /healthz and the web view (/ui)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -l stabilize-ms -d 'Milliseconds between stabilize rounds' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -l rpc-timeout-ms -d 'Deadline of one ring RPC call, in milliseconds' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -l tls-cert -d 'This node\'s certificate (PEM): with --tls-key and --tls-ca, both ports speak TLS and ring peers must present a certificate signed by the CA. Reread when it changes' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -l tls-key -d 'The private key of --tls-cert (PEM)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -l tls-ca -d 'The CA certificate(s) (PEM) that ring peers\' and HTTP clients\' certificates must be signed by' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -l dns-domain -d 'The DNS zone: services answer as SERVICE.service.DOMAIN' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -l dns-ttl -d 'The TTL of DNS records, e.g. 5s, 1m' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -l agent -d 'The agent to talk to: a URL or HOST:PORT. Repeat it, or give a comma-separated list, to name fallbacks: they are tried in order when one cannot be reached (a read also moves on when an agent has not begun its answer within 3 s)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -s o -l output -d 'Output format' -r -f -a "table\t'Tables for people'
json\t'The agent\'s JSON, pretty-printed, for scripts'"
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -l token -d 'Bearer token for an agent started with --api-token' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -l cacert -d 'CA certificate(s) (PEM) to verify https:// agents with' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -l cert -d 'Client certificate (PEM) for agents that require one (--http-verify-clients)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -l key -d 'The private key (PEM) of --cert' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -l http-verify-clients -d 'Also require client certificates from the CA on the HTTP port'
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -l print-config -d 'Print the settings in effect (secrets masked) and exit without starting'
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from join" -s V -l version -d 'Print version'
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from dev" -l nodes -d 'How many nodes' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from dev" -l config -d 'Read settings from this TOML file (keys like the long flags: bind, data_dir, ...)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from dev" -l replicas -d 'Copies of every record, owner included' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from dev" -l write-quorum -d 'Copies (owner included) that must be durable before a write is acknowledged; default: a majority of K' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from dev" -l successors -d 'Successor-list length' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from dev" -l cluster-secret -d 'Shared secret every ring member must prove' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from dev" -l api-token -d 'Bearer token the HTTP API requires on every route but /healthz and the web view (/ui)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from dev" -l stabilize-ms -d 'Milliseconds between stabilize rounds' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from dev" -l rpc-timeout-ms -d 'Deadline of one ring RPC call, in milliseconds' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from dev" -l tls-cert -d 'This node\'s certificate (PEM): with --tls-key and --tls-ca, both ports speak TLS and ring peers must present a certificate signed by the CA. Reread when it changes' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from dev" -l tls-key -d 'The private key of --tls-cert (PEM)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from dev" -l tls-ca -d 'The CA certificate(s) (PEM) that ring peers\' and HTTP clients\' certificates must be signed by' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from dev" -l dns-domain -d 'The DNS zone: services answer as SERVICE.service.DOMAIN' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from dev" -l dns-ttl -d 'The TTL of DNS records, e.g. 5s, 1m' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from dev" -l agent -d 'The agent to talk to: a URL or HOST:PORT. Repeat it, or give a comma-separated list, to name fallbacks: they are tried in order when one cannot be reached (a read also moves on when an agent has not begun its answer within 3 s)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from dev" -s o -l output -d 'Output format' -r -f -a "table\t'Tables for people'
json\t'The agent\'s JSON, pretty-printed, for scripts'"
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from dev" -l token -d 'Bearer token for an agent started with --api-token' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from dev" -l cacert -d 'CA certificate(s) (PEM) to verify https:// agents with' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from dev" -l cert -d 'Client certificate (PEM) for agents that require one (--http-verify-clients)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from dev" -l key -d 'The private key (PEM) of --cert' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from dev" -l tls -d 'Make a CA and certificates in the data directory and run the ring with TLS; prints the client flags to use'
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from dev" -s v -l verbose -d 'Log at info level (the default is warnings only, so the table stays readable)'
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from dev" -l http-verify-clients -d 'Also require client certificates from the CA on the HTTP port'
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from dev" -l print-config -d 'Print the settings in effect (secrets masked) and exit without starting'
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from dev" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from dev" -s V -l version -d 'Print version'
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from help" -f -a "create" -d 'Start a new ring with this node as its only member'
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from help" -f -a "join" -d 'Join the ring that SEED (a member\'s ring address) is in'
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from help" -f -a "dev" -d 'Run a local N-node ring in one process on loopback, with embedded stores, for trying things'
complete -c chordctl -n "__fish_chordctl_using_subcommand agent; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and not __fish_seen_subcommand_from show node leave help" -l agent -d 'The agent to talk to: a URL or HOST:PORT. Repeat it, or give a comma-separated list, to name fallbacks: they are tried in order when one cannot be reached (a read also moves on when an agent has not begun its answer within 3 s)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and not __fish_seen_subcommand_from show node leave help" -s o -l output -d 'Output format' -r -f -a "table\t'Tables for people'
json\t'The agent\'s JSON, pretty-printed, for scripts'"
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and not __fish_seen_subcommand_from show node leave help" -l token -d 'Bearer token for an agent started with --api-token' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and not __fish_seen_subcommand_from show node leave help" -l cacert -d 'CA certificate(s) (PEM) to verify https:// agents with' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and not __fish_seen_subcommand_from show node leave help" -l cert -d 'Client certificate (PEM) for agents that require one (--http-verify-clients)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and not __fish_seen_subcommand_from show node leave help" -l key -d 'The private key (PEM) of --cert' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and not __fish_seen_subcommand_from show node leave help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and not __fish_seen_subcommand_from show node leave help" -s V -l version -d 'Print version'
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and not __fish_seen_subcommand_from show node leave help" -f -a "show" -d 'Every node of the ring, in ring order'
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and not __fish_seen_subcommand_from show node leave help" -f -a "node" -d 'The agent\'s own view: predecessor, successor list, finger table'
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and not __fish_seen_subcommand_from show node leave help" -f -a "leave" -d 'Ask the agent to leave the ring gracefully and exit (the first --agent only, never another)'
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and not __fish_seen_subcommand_from show node leave help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and __fish_seen_subcommand_from show" -l agent -d 'The agent to talk to: a URL or HOST:PORT. Repeat it, or give a comma-separated list, to name fallbacks: they are tried in order when one cannot be reached (a read also moves on when an agent has not begun its answer within 3 s)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and __fish_seen_subcommand_from show" -s o -l output -d 'Output format' -r -f -a "table\t'Tables for people'
json\t'The agent\'s JSON, pretty-printed, for scripts'"
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and __fish_seen_subcommand_from show" -l token -d 'Bearer token for an agent started with --api-token' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and __fish_seen_subcommand_from show" -l cacert -d 'CA certificate(s) (PEM) to verify https:// agents with' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and __fish_seen_subcommand_from show" -l cert -d 'Client certificate (PEM) for agents that require one (--http-verify-clients)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and __fish_seen_subcommand_from show" -l key -d 'The private key (PEM) of --cert' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and __fish_seen_subcommand_from show" -s V -l version -d 'Print version'
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and __fish_seen_subcommand_from node" -l agent -d 'The agent to talk to: a URL or HOST:PORT. Repeat it, or give a comma-separated list, to name fallbacks: they are tried in order when one cannot be reached (a read also moves on when an agent has not begun its answer within 3 s)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and __fish_seen_subcommand_from node" -s o -l output -d 'Output format' -r -f -a "table\t'Tables for people'
json\t'The agent\'s JSON, pretty-printed, for scripts'"
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and __fish_seen_subcommand_from node" -l token -d 'Bearer token for an agent started with --api-token' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and __fish_seen_subcommand_from node" -l cacert -d 'CA certificate(s) (PEM) to verify https:// agents with' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and __fish_seen_subcommand_from node" -l cert -d 'Client certificate (PEM) for agents that require one (--http-verify-clients)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and __fish_seen_subcommand_from node" -l key -d 'The private key (PEM) of --cert' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and __fish_seen_subcommand_from node" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and __fish_seen_subcommand_from node" -s V -l version -d 'Print version'
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and __fish_seen_subcommand_from leave" -l agent -d 'The agent to talk to: a URL or HOST:PORT. Repeat it, or give a comma-separated list, to name fallbacks: they are tried in order when one cannot be reached (a read also moves on when an agent has not begun its answer within 3 s)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and __fish_seen_subcommand_from leave" -s o -l output -d 'Output format' -r -f -a "table\t'Tables for people'
json\t'The agent\'s JSON, pretty-printed, for scripts'"
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and __fish_seen_subcommand_from leave" -l token -d 'Bearer token for an agent started with --api-token' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and __fish_seen_subcommand_from leave" -l cacert -d 'CA certificate(s) (PEM) to verify https:// agents with' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and __fish_seen_subcommand_from leave" -l cert -d 'Client certificate (PEM) for agents that require one (--http-verify-clients)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and __fish_seen_subcommand_from leave" -l key -d 'The private key (PEM) of --cert' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and __fish_seen_subcommand_from leave" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and __fish_seen_subcommand_from leave" -s V -l version -d 'Print version'
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and __fish_seen_subcommand_from help" -f -a "show" -d 'Every node of the ring, in ring order'
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and __fish_seen_subcommand_from help" -f -a "node" -d 'The agent\'s own view: predecessor, successor list, finger table'
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and __fish_seen_subcommand_from help" -f -a "leave" -d 'Ask the agent to leave the ring gracefully and exit (the first --agent only, never another)'
complete -c chordctl -n "__fish_chordctl_using_subcommand ring; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c chordctl -n "__fish_chordctl_using_subcommand locate" -l agent -d 'The agent to talk to: a URL or HOST:PORT. Repeat it, or give a comma-separated list, to name fallbacks: they are tried in order when one cannot be reached (a read also moves on when an agent has not begun its answer within 3 s)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand locate" -s o -l output -d 'Output format' -r -f -a "table\t'Tables for people'
json\t'The agent\'s JSON, pretty-printed, for scripts'"
complete -c chordctl -n "__fish_chordctl_using_subcommand locate" -l token -d 'Bearer token for an agent started with --api-token' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand locate" -l cacert -d 'CA certificate(s) (PEM) to verify https:// agents with' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand locate" -l cert -d 'Client certificate (PEM) for agents that require one (--http-verify-clients)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand locate" -l key -d 'The private key (PEM) of --cert' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand locate" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chordctl -n "__fish_chordctl_using_subcommand locate" -s V -l version -d 'Print version'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and not __fish_seen_subcommand_from register deregister discover list policy explain watch help" -l agent -d 'The agent to talk to: a URL or HOST:PORT. Repeat it, or give a comma-separated list, to name fallbacks: they are tried in order when one cannot be reached (a read also moves on when an agent has not begun its answer within 3 s)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and not __fish_seen_subcommand_from register deregister discover list policy explain watch help" -s o -l output -d 'Output format' -r -f -a "table\t'Tables for people'
json\t'The agent\'s JSON, pretty-printed, for scripts'"
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and not __fish_seen_subcommand_from register deregister discover list policy explain watch help" -l token -d 'Bearer token for an agent started with --api-token' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and not __fish_seen_subcommand_from register deregister discover list policy explain watch help" -l cacert -d 'CA certificate(s) (PEM) to verify https:// agents with' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and not __fish_seen_subcommand_from register deregister discover list policy explain watch help" -l cert -d 'Client certificate (PEM) for agents that require one (--http-verify-clients)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and not __fish_seen_subcommand_from register deregister discover list policy explain watch help" -l key -d 'The private key (PEM) of --cert' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and not __fish_seen_subcommand_from register deregister discover list policy explain watch help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and not __fish_seen_subcommand_from register deregister discover list policy explain watch help" -s V -l version -d 'Print version'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and not __fish_seen_subcommand_from register deregister discover list policy explain watch help" -f -a "register" -d 'Register an instance of SERVICE, or replace it if SERVICE and ID exist'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and not __fish_seen_subcommand_from register deregister discover list policy explain watch help" -f -a "deregister" -d 'Remove an instance'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and not __fish_seen_subcommand_from register deregister discover list policy explain watch help" -f -a "discover" -d 'The instances of SERVICE, or one picked by a strategy'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and not __fish_seen_subcommand_from register deregister discover list policy explain watch help" -f -a "list" -d 'Every service on the ring with its instances counted by state'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and not __fish_seen_subcommand_from register deregister discover list policy explain watch help" -f -a "policy" -d 'Show SERVICE\'s health policy, or change it with the setter flags'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and not __fish_seen_subcommand_from register deregister discover list policy explain watch help" -f -a "explain" -d 'Why discover returns each instance of SERVICE or not, and the scores behind a pick'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and not __fish_seen_subcommand_from register deregister discover list policy explain watch help" -f -a "watch" -d 'Follow the changes of SERVICE as they happen'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and not __fish_seen_subcommand_from register deregister discover list policy explain watch help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from register" -l address -d 'Host or IP address callers use to reach the instance' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from register" -l port -d 'Port callers use to reach the instance' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from register" -l id -d 'Instance id [default: ADDRESS:PORT]' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from register" -l tag -d 'A tag (repeatable)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from register" -l meta -d 'Metadata entry (repeatable)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from register" -l weight -d 'Relative weight for `--pick weighted` (0-10000)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from register" -l ttl -d 'Mark the instance critical after this long without a status report (30s, 5m, 1h, or seconds)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from register" -l agent -d 'The agent to talk to: a URL or HOST:PORT. Repeat it, or give a comma-separated list, to name fallbacks: they are tried in order when one cannot be reached (a read also moves on when an agent has not begun its answer within 3 s)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from register" -s o -l output -d 'Output format' -r -f -a "table\t'Tables for people'
json\t'The agent\'s JSON, pretty-printed, for scripts'"
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from register" -l token -d 'Bearer token for an agent started with --api-token' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from register" -l cacert -d 'CA certificate(s) (PEM) to verify https:// agents with' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from register" -l cert -d 'Client certificate (PEM) for agents that require one (--http-verify-clients)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from register" -l key -d 'The private key (PEM) of --cert' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from register" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from register" -s V -l version -d 'Print version'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from deregister" -l agent -d 'The agent to talk to: a URL or HOST:PORT. Repeat it, or give a comma-separated list, to name fallbacks: they are tried in order when one cannot be reached (a read also moves on when an agent has not begun its answer within 3 s)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from deregister" -s o -l output -d 'Output format' -r -f -a "table\t'Tables for people'
json\t'The agent\'s JSON, pretty-printed, for scripts'"
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from deregister" -l token -d 'Bearer token for an agent started with --api-token' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from deregister" -l cacert -d 'CA certificate(s) (PEM) to verify https:// agents with' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from deregister" -l cert -d 'Client certificate (PEM) for agents that require one (--http-verify-clients)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from deregister" -l key -d 'The private key (PEM) of --cert' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from deregister" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from deregister" -s V -l version -d 'Print version'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from discover" -l tag -d 'Only instances with this tag' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from discover" -l pick -d 'Return one instance chosen by this strategy' -r -f -a "best\t'Highest success rate, then lowest latency, then lowest load, among the healthiest state'
round-robin\t'Each instance in turn'
random\t'Uniformly at random'
weighted\t'At random in proportion to weight'
least-load\t'Lowest load'"
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from discover" -l agent -d 'The agent to talk to: a URL or HOST:PORT. Repeat it, or give a comma-separated list, to name fallbacks: they are tried in order when one cannot be reached (a read also moves on when an agent has not begun its answer within 3 s)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from discover" -s o -l output -d 'Output format' -r -f -a "table\t'Tables for people'
json\t'The agent\'s JSON, pretty-printed, for scripts'"
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from discover" -l token -d 'Bearer token for an agent started with --api-token' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from discover" -l cacert -d 'CA certificate(s) (PEM) to verify https:// agents with' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from discover" -l cert -d 'Client certificate (PEM) for agents that require one (--http-verify-clients)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from discover" -l key -d 'The private key (PEM) of --cert' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from discover" -l healthy -d 'Only healthy instances (state passing or warning)'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from discover" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from discover" -s V -l version -d 'Print version'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from list" -l agent -d 'The agent to talk to: a URL or HOST:PORT. Repeat it, or give a comma-separated list, to name fallbacks: they are tried in order when one cannot be reached (a read also moves on when an agent has not begun its answer within 3 s)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from list" -s o -l output -d 'Output format' -r -f -a "table\t'Tables for people'
json\t'The agent\'s JSON, pretty-printed, for scripts'"
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from list" -l token -d 'Bearer token for an agent started with --api-token' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from list" -l cacert -d 'CA certificate(s) (PEM) to verify https:// agents with' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from list" -l cert -d 'Client certificate (PEM) for agents that require one (--http-verify-clients)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from list" -l key -d 'The private key (PEM) of --cert' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from policy" -l failures-before-critical -d 'A reported critical takes effect after N consecutive critical reports' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from policy" -l successes-before-passing -d 'A reported passing takes effect after N consecutive passing reports' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from policy" -l flap-half-life -d 'Flap damping\'s half-life (0 turns damping off)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from policy" -l panic-threshold -d 'Below this healthy share (0-1), --healthy returns every instance (0 turns it off)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from policy" -l agent -d 'The agent to talk to: a URL or HOST:PORT. Repeat it, or give a comma-separated list, to name fallbacks: they are tried in order when one cannot be reached (a read also moves on when an agent has not begun its answer within 3 s)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from policy" -s o -l output -d 'Output format' -r -f -a "table\t'Tables for people'
json\t'The agent\'s JSON, pretty-printed, for scripts'"
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from policy" -l token -d 'Bearer token for an agent started with --api-token' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from policy" -l cacert -d 'CA certificate(s) (PEM) to verify https:// agents with' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from policy" -l cert -d 'Client certificate (PEM) for agents that require one (--http-verify-clients)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from policy" -l key -d 'The private key (PEM) of --cert' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from policy" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from policy" -s V -l version -d 'Print version'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from explain" -l tag -d 'Only instances with this tag' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from explain" -l pick -d 'Return one instance chosen by this strategy' -r -f -a "best\t'Highest success rate, then lowest latency, then lowest load, among the healthiest state'
round-robin\t'Each instance in turn'
random\t'Uniformly at random'
weighted\t'At random in proportion to weight'
least-load\t'Lowest load'"
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from explain" -l agent -d 'The agent to talk to: a URL or HOST:PORT. Repeat it, or give a comma-separated list, to name fallbacks: they are tried in order when one cannot be reached (a read also moves on when an agent has not begun its answer within 3 s)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from explain" -s o -l output -d 'Output format' -r -f -a "table\t'Tables for people'
json\t'The agent\'s JSON, pretty-printed, for scripts'"
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from explain" -l token -d 'Bearer token for an agent started with --api-token' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from explain" -l cacert -d 'CA certificate(s) (PEM) to verify https:// agents with' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from explain" -l cert -d 'Client certificate (PEM) for agents that require one (--http-verify-clients)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from explain" -l key -d 'The private key (PEM) of --cert' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from explain" -l healthy -d 'Only healthy instances (state passing or warning)'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from explain" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from explain" -s V -l version -d 'Print version'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from watch" -l count -d 'Exit 0 after N events (snapshots and changes; bookmarks do not count)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from watch" -l agent -d 'The agent to talk to: a URL or HOST:PORT. Repeat it, or give a comma-separated list, to name fallbacks: they are tried in order when one cannot be reached (a read also moves on when an agent has not begun its answer within 3 s)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from watch" -s o -l output -d 'Output format' -r -f -a "table\t'Tables for people'
json\t'The agent\'s JSON, pretty-printed, for scripts'"
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from watch" -l token -d 'Bearer token for an agent started with --api-token' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from watch" -l cacert -d 'CA certificate(s) (PEM) to verify https:// agents with' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from watch" -l cert -d 'Client certificate (PEM) for agents that require one (--http-verify-clients)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from watch" -l key -d 'The private key (PEM) of --cert' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from watch" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from watch" -s V -l version -d 'Print version'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from help" -f -a "register" -d 'Register an instance of SERVICE, or replace it if SERVICE and ID exist'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from help" -f -a "deregister" -d 'Remove an instance'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from help" -f -a "discover" -d 'The instances of SERVICE, or one picked by a strategy'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from help" -f -a "list" -d 'Every service on the ring with its instances counted by state'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from help" -f -a "policy" -d 'Show SERVICE\'s health policy, or change it with the setter flags'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from help" -f -a "explain" -d 'Why discover returns each instance of SERVICE or not, and the scores behind a pick'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from help" -f -a "watch" -d 'Follow the changes of SERVICE as they happen'
complete -c chordctl -n "__fish_chordctl_using_subcommand svc; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and not __fish_seen_subcommand_from report query help" -l agent -d 'The agent to talk to: a URL or HOST:PORT. Repeat it, or give a comma-separated list, to name fallbacks: they are tried in order when one cannot be reached (a read also moves on when an agent has not begun its answer within 3 s)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and not __fish_seen_subcommand_from report query help" -s o -l output -d 'Output format' -r -f -a "table\t'Tables for people'
json\t'The agent\'s JSON, pretty-printed, for scripts'"
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and not __fish_seen_subcommand_from report query help" -l token -d 'Bearer token for an agent started with --api-token' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and not __fish_seen_subcommand_from report query help" -l cacert -d 'CA certificate(s) (PEM) to verify https:// agents with' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and not __fish_seen_subcommand_from report query help" -l cert -d 'Client certificate (PEM) for agents that require one (--http-verify-clients)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and not __fish_seen_subcommand_from report query help" -l key -d 'The private key (PEM) of --cert' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and not __fish_seen_subcommand_from report query help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and not __fish_seen_subcommand_from report query help" -s V -l version -d 'Print version'
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and not __fish_seen_subcommand_from report query help" -f -a "report" -d 'Report an instance\'s state and call quality (also renews its TTL)'
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and not __fish_seen_subcommand_from report query help" -f -a "query" -d 'One instance\'s status, or every instance of SERVICE without ID'
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and not __fish_seen_subcommand_from report query help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and __fish_seen_subcommand_from report" -l state -d 'The instance\'s health' -r -f -a "passing\t'Healthy'
warning\t'Degraded but serving'
critical\t'Failing, or silent for longer than its TTL'
maintenance\t'Taken out of rotation on purpose'"
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and __fish_seen_subcommand_from report" -l load -d 'Current load (finite, at least 0)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and __fish_seen_subcommand_from report" -l success-rate -d 'Share of successful calls, 0 to 1' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and __fish_seen_subcommand_from report" -l latency-ms -d 'Mean call latency in milliseconds' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and __fish_seen_subcommand_from report" -l frequency -d 'Calls per second' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and __fish_seen_subcommand_from report" -l note -d 'Free text' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and __fish_seen_subcommand_from report" -l agent -d 'The agent to talk to: a URL or HOST:PORT. Repeat it, or give a comma-separated list, to name fallbacks: they are tried in order when one cannot be reached (a read also moves on when an agent has not begun its answer within 3 s)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and __fish_seen_subcommand_from report" -s o -l output -d 'Output format' -r -f -a "table\t'Tables for people'
json\t'The agent\'s JSON, pretty-printed, for scripts'"
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and __fish_seen_subcommand_from report" -l token -d 'Bearer token for an agent started with --api-token' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and __fish_seen_subcommand_from report" -l cacert -d 'CA certificate(s) (PEM) to verify https:// agents with' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and __fish_seen_subcommand_from report" -l cert -d 'Client certificate (PEM) for agents that require one (--http-verify-clients)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and __fish_seen_subcommand_from report" -l key -d 'The private key (PEM) of --cert' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and __fish_seen_subcommand_from report" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and __fish_seen_subcommand_from report" -s V -l version -d 'Print version'
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and __fish_seen_subcommand_from query" -l agent -d 'The agent to talk to: a URL or HOST:PORT. Repeat it, or give a comma-separated list, to name fallbacks: they are tried in order when one cannot be reached (a read also moves on when an agent has not begun its answer within 3 s)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and __fish_seen_subcommand_from query" -s o -l output -d 'Output format' -r -f -a "table\t'Tables for people'
json\t'The agent\'s JSON, pretty-printed, for scripts'"
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and __fish_seen_subcommand_from query" -l token -d 'Bearer token for an agent started with --api-token' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and __fish_seen_subcommand_from query" -l cacert -d 'CA certificate(s) (PEM) to verify https:// agents with' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and __fish_seen_subcommand_from query" -l cert -d 'Client certificate (PEM) for agents that require one (--http-verify-clients)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and __fish_seen_subcommand_from query" -l key -d 'The private key (PEM) of --cert' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and __fish_seen_subcommand_from query" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and __fish_seen_subcommand_from query" -s V -l version -d 'Print version'
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and __fish_seen_subcommand_from help" -f -a "report" -d 'Report an instance\'s state and call quality (also renews its TTL)'
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and __fish_seen_subcommand_from help" -f -a "query" -d 'One instance\'s status, or every instance of SERVICE without ID'
complete -c chordctl -n "__fish_chordctl_using_subcommand status; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c chordctl -n "__fish_chordctl_using_subcommand bench" -l mix -d 'Operations to send: register (PUT an instance), discover (GET a service), report (PUT a status), or mixed (70% discover, 20% report, 10% register)' -r -f -a "register\t'PUT /v1/services/S/instances/ID (re-registering one of the ten instances)'
discover\t'GET /v1/services/S (ten instances)'
report\t'PUT /v1/services/S/instances/ID/status'
mixed\t'70% discover, 20% report, 10% register'"
complete -c chordctl -n "__fish_chordctl_using_subcommand bench" -l concurrency -d 'Requests in flight at once (one kept-alive connection each)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand bench" -l duration -d 'How long to send load (30s, 5m, 1h, or seconds; at least 1s)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand bench" -l services -d 'Services to spread the load over, each with ten instances' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand bench" -l agent -d 'The agent to talk to: a URL or HOST:PORT. Repeat it, or give a comma-separated list, to name fallbacks: they are tried in order when one cannot be reached (a read also moves on when an agent has not begun its answer within 3 s)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand bench" -s o -l output -d 'Output format' -r -f -a "table\t'Tables for people'
json\t'The agent\'s JSON, pretty-printed, for scripts'"
complete -c chordctl -n "__fish_chordctl_using_subcommand bench" -l token -d 'Bearer token for an agent started with --api-token' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand bench" -l cacert -d 'CA certificate(s) (PEM) to verify https:// agents with' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand bench" -l cert -d 'Client certificate (PEM) for agents that require one (--http-verify-clients)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand bench" -l key -d 'The private key (PEM) of --cert' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand bench" -l keep -d 'Leave the benchmark\'s services registered at the end'
complete -c chordctl -n "__fish_chordctl_using_subcommand bench" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chordctl -n "__fish_chordctl_using_subcommand bench" -s V -l version -d 'Print version'
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and not __fish_seen_subcommand_from ca cert help" -l agent -d 'The agent to talk to: a URL or HOST:PORT. Repeat it, or give a comma-separated list, to name fallbacks: they are tried in order when one cannot be reached (a read also moves on when an agent has not begun its answer within 3 s)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and not __fish_seen_subcommand_from ca cert help" -s o -l output -d 'Output format' -r -f -a "table\t'Tables for people'
json\t'The agent\'s JSON, pretty-printed, for scripts'"
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and not __fish_seen_subcommand_from ca cert help" -l token -d 'Bearer token for an agent started with --api-token' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and not __fish_seen_subcommand_from ca cert help" -l cacert -d 'CA certificate(s) (PEM) to verify https:// agents with' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and not __fish_seen_subcommand_from ca cert help" -l cert -d 'Client certificate (PEM) for agents that require one (--http-verify-clients)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and not __fish_seen_subcommand_from ca cert help" -l key -d 'The private key (PEM) of --cert' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and not __fish_seen_subcommand_from ca cert help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and not __fish_seen_subcommand_from ca cert help" -s V -l version -d 'Print version'
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and not __fish_seen_subcommand_from ca cert help" -f -a "ca" -d 'The certificate authority'
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and not __fish_seen_subcommand_from ca cert help" -f -a "cert" -d 'Certificates signed by the CA'
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and not __fish_seen_subcommand_from ca cert help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and __fish_seen_subcommand_from ca" -l agent -d 'The agent to talk to: a URL or HOST:PORT. Repeat it, or give a comma-separated list, to name fallbacks: they are tried in order when one cannot be reached (a read also moves on when an agent has not begun its answer within 3 s)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and __fish_seen_subcommand_from ca" -s o -l output -d 'Output format' -r -f -a "table\t'Tables for people'
json\t'The agent\'s JSON, pretty-printed, for scripts'"
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and __fish_seen_subcommand_from ca" -l token -d 'Bearer token for an agent started with --api-token' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and __fish_seen_subcommand_from ca" -l cacert -d 'CA certificate(s) (PEM) to verify https:// agents with' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and __fish_seen_subcommand_from ca" -l cert -d 'Client certificate (PEM) for agents that require one (--http-verify-clients)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and __fish_seen_subcommand_from ca" -l key -d 'The private key (PEM) of --cert' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and __fish_seen_subcommand_from ca" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and __fish_seen_subcommand_from ca" -s V -l version -d 'Print version'
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and __fish_seen_subcommand_from ca" -f -a "create" -d 'Make a CA: DIR/ca.pem and DIR/ca-key.pem (the key readable by its owner only)'
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and __fish_seen_subcommand_from ca" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and __fish_seen_subcommand_from cert" -l agent -d 'The agent to talk to: a URL or HOST:PORT. Repeat it, or give a comma-separated list, to name fallbacks: they are tried in order when one cannot be reached (a read also moves on when an agent has not begun its answer within 3 s)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and __fish_seen_subcommand_from cert" -s o -l output -d 'Output format' -r -f -a "table\t'Tables for people'
json\t'The agent\'s JSON, pretty-printed, for scripts'"
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and __fish_seen_subcommand_from cert" -l token -d 'Bearer token for an agent started with --api-token' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and __fish_seen_subcommand_from cert" -l cacert -d 'CA certificate(s) (PEM) to verify https:// agents with' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and __fish_seen_subcommand_from cert" -l cert -d 'Client certificate (PEM) for agents that require one (--http-verify-clients)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and __fish_seen_subcommand_from cert" -l key -d 'The private key (PEM) of --cert' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and __fish_seen_subcommand_from cert" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and __fish_seen_subcommand_from cert" -s V -l version -d 'Print version'
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and __fish_seen_subcommand_from cert" -f -a "create" -d 'Make DIR/NAME.pem and DIR/NAME-key.pem signed by DIR\'s CA, usable as server and client certificate'
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and __fish_seen_subcommand_from cert" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and __fish_seen_subcommand_from help" -f -a "ca" -d 'The certificate authority'
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and __fish_seen_subcommand_from help" -f -a "cert" -d 'Certificates signed by the CA'
complete -c chordctl -n "__fish_chordctl_using_subcommand tls; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c chordctl -n "__fish_chordctl_using_subcommand completions" -l agent -d 'The agent to talk to: a URL or HOST:PORT. Repeat it, or give a comma-separated list, to name fallbacks: they are tried in order when one cannot be reached (a read also moves on when an agent has not begun its answer within 3 s)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand completions" -s o -l output -d 'Output format' -r -f -a "table\t'Tables for people'
json\t'The agent\'s JSON, pretty-printed, for scripts'"
complete -c chordctl -n "__fish_chordctl_using_subcommand completions" -l token -d 'Bearer token for an agent started with --api-token' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand completions" -l cacert -d 'CA certificate(s) (PEM) to verify https:// agents with' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand completions" -l cert -d 'Client certificate (PEM) for agents that require one (--http-verify-clients)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand completions" -l key -d 'The private key (PEM) of --cert' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand completions" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chordctl -n "__fish_chordctl_using_subcommand completions" -s V -l version -d 'Print version'
complete -c chordctl -n "__fish_chordctl_using_subcommand man" -l agent -d 'The agent to talk to: a URL or HOST:PORT. Repeat it, or give a comma-separated list, to name fallbacks: they are tried in order when one cannot be reached (a read also moves on when an agent has not begun its answer within 3 s)' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand man" -s o -l output -d 'Output format' -r -f -a "table\t'Tables for people'
json\t'The agent\'s JSON, pretty-printed, for scripts'"
complete -c chordctl -n "__fish_chordctl_using_subcommand man" -l token -d 'Bearer token for an agent started with --api-token' -r
complete -c chordctl -n "__fish_chordctl_using_subcommand man" -l cacert -d 'CA certificate(s) (PEM) to verify https:// agents with' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand man" -l cert -d 'Client certificate (PEM) for agents that require one (--http-verify-clients)' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand man" -l key -d 'The private key (PEM) of --cert' -r -F
complete -c chordctl -n "__fish_chordctl_using_subcommand man" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c chordctl -n "__fish_chordctl_using_subcommand man" -s V -l version -d 'Print version'
complete -c chordctl -n "__fish_chordctl_using_subcommand help; and not __fish_seen_subcommand_from agent ring locate svc status bench tls completions man help" -f -a "agent" -d 'Run an agent (a member of the ring) in the foreground'
complete -c chordctl -n "__fish_chordctl_using_subcommand help; and not __fish_seen_subcommand_from agent ring locate svc status bench tls completions man help" -f -a "ring" -d 'Inspect the ring, or ask an agent to leave it'
complete -c chordctl -n "__fish_chordctl_using_subcommand help; and not __fish_seen_subcommand_from agent ring locate svc status bench tls completions man help" -f -a "locate" -d 'Show the owner of KEY, its replicas, and the hops the lookup took'
complete -c chordctl -n "__fish_chordctl_using_subcommand help; and not __fish_seen_subcommand_from agent ring locate svc status bench tls completions man help" -f -a "svc" -d 'Register, deregister, discover and list services'
complete -c chordctl -n "__fish_chordctl_using_subcommand help; and not __fish_seen_subcommand_from agent ring locate svc status bench tls completions man help" -f -a "status" -d 'Report or query the call-quality status of service instances'
complete -c chordctl -n "__fish_chordctl_using_subcommand help; and not __fish_seen_subcommand_from agent ring locate svc status bench tls completions man help" -f -a "bench" -d 'Load-test an agent: ops/s and latency percentiles of register, discover, report'
complete -c chordctl -n "__fish_chordctl_using_subcommand help; and not __fish_seen_subcommand_from agent ring locate svc status bench tls completions man help" -f -a "tls" -d 'Make a CA and certificates for TLS (no agent needed)'
complete -c chordctl -n "__fish_chordctl_using_subcommand help; and not __fish_seen_subcommand_from agent ring locate svc status bench tls completions man help" -f -a "completions" -d 'Print a shell completion script to stdout'
complete -c chordctl -n "__fish_chordctl_using_subcommand help; and not __fish_seen_subcommand_from agent ring locate svc status bench tls completions man help" -f -a "man" -d 'Print the man page (roff) to stdout'
complete -c chordctl -n "__fish_chordctl_using_subcommand help; and not __fish_seen_subcommand_from agent ring locate svc status bench tls completions man help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c chordctl -n "__fish_chordctl_using_subcommand help; and __fish_seen_subcommand_from agent" -f -a "create" -d 'Start a new ring with this node as its only member'
complete -c chordctl -n "__fish_chordctl_using_subcommand help; and __fish_seen_subcommand_from agent" -f -a "join" -d 'Join the ring that SEED (a member\'s ring address) is in'
complete -c chordctl -n "__fish_chordctl_using_subcommand help; and __fish_seen_subcommand_from agent" -f -a "dev" -d 'Run a local N-node ring in one process on loopback, with embedded stores, for trying things'
complete -c chordctl -n "__fish_chordctl_using_subcommand help; and __fish_seen_subcommand_from ring" -f -a "show" -d 'Every node of the ring, in ring order'
complete -c chordctl -n "__fish_chordctl_using_subcommand help; and __fish_seen_subcommand_from ring" -f -a "node" -d 'The agent\'s own view: predecessor, successor list, finger table'
complete -c chordctl -n "__fish_chordctl_using_subcommand help; and __fish_seen_subcommand_from ring" -f -a "leave" -d 'Ask the agent to leave the ring gracefully and exit (the first --agent only, never another)'
complete -c chordctl -n "__fish_chordctl_using_subcommand help; and __fish_seen_subcommand_from svc" -f -a "register" -d 'Register an instance of SERVICE, or replace it if SERVICE and ID exist'
complete -c chordctl -n "__fish_chordctl_using_subcommand help; and __fish_seen_subcommand_from svc" -f -a "deregister" -d 'Remove an instance'
complete -c chordctl -n "__fish_chordctl_using_subcommand help; and __fish_seen_subcommand_from svc" -f -a "discover" -d 'The instances of SERVICE, or one picked by a strategy'
complete -c chordctl -n "__fish_chordctl_using_subcommand help; and __fish_seen_subcommand_from svc" -f -a "list" -d 'Every service on the ring with its instances counted by state'
complete -c chordctl -n "__fish_chordctl_using_subcommand help; and __fish_seen_subcommand_from svc" -f -a "policy" -d 'Show SERVICE\'s health policy, or change it with the setter flags'
complete -c chordctl -n "__fish_chordctl_using_subcommand help; and __fish_seen_subcommand_from svc" -f -a "explain" -d 'Why discover returns each instance of SERVICE or not, and the scores behind a pick'
complete -c chordctl -n "__fish_chordctl_using_subcommand help; and __fish_seen_subcommand_from svc" -f -a "watch" -d 'Follow the changes of SERVICE as they happen'
complete -c chordctl -n "__fish_chordctl_using_subcommand help; and __fish_seen_subcommand_from status" -f -a "report" -d 'Report an instance\'s state and call quality (also renews its TTL)'
complete -c chordctl -n "__fish_chordctl_using_subcommand help; and __fish_seen_subcommand_from status" -f -a "query" -d 'One instance\'s status, or every instance of SERVICE without ID'
complete -c chordctl -n "__fish_chordctl_using_subcommand help; and __fish_seen_subcommand_from tls" -f -a "ca" -d 'The certificate authority'
complete -c chordctl -n "__fish_chordctl_using_subcommand help; and __fish_seen_subcommand_from tls" -f -a "cert" -d 'Certificates signed by the CA'
