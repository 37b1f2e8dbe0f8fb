# services.hypervisor: the hypervisor daemon on NixOS.
#
# Every option but enable/package/environmentFile/openFirewall maps to exactly one HYPERVISOR_*
# variable of the config module (docs/configuration.md); test/deploy/nix.test.ts holds the two lists
# together. Secrets only arrive as paths to files the host provides (LoadCredential= or an
# EnvironmentFile= outside the store); no option accepts a secret value, so none can be copied
# into the world-readable Nix store.
#
# The hardening mirrors deploy/systemd/hypervisor.service (exposure 1.7 by
# `systemd-analyze security --offline=true`); the same test compares the two.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  # Only these lib functions are used; test/deploy/fixtures/stub-lib.nix implements exactly
  # these so the module can be evaluated without nixpkgs.
  inherit (lib)
    mkOption
    mkEnableOption
    mkIf
    mkMerge
    mkDefault
    literalExpression
    types
    hasPrefix
    hasSuffix
    removePrefix
    optional
    optionals
    optionalAttrs
    mapAttrsToList
    concatStringsSep
    attrNames
    filter
    elem
    toInt
    toLower
    mapAttrs
    replaceStrings
    ;

  cfg = config.services.hypervisor;

  # "host:port", the host possibly a bracketed IPv6 address ("[::1]:8080").
  splitListen =
    address:
    let
      parts = builtins.match "(.+):([0-9]{1,5})" address;
    in
    if parts == null then
      null
    else
      {
        host = builtins.elemAt parts 0;
        port = toInt (builtins.elemAt parts 1);
      };
  validListen =
    address:
    let
      parsed = splitListen address;
    in
    parsed != null && parsed.port >= 1 && parsed.port <= 65535;
  isLoopback =
    host:
    elem host [
      "localhost"
      "[::1]"
      "::1"
    ]
    || hasPrefix "127." host;
  listen = splitListen cfg.listen;

  # "https://host[:port]", no path: an origin (RFC 6454 §4).
  originParts = builtins.match "(https?)://([^/:?#]+)(:[0-9]+)?" cfg.publicOrigin;
  originScheme = if originParts == null then null else builtins.elemAt originParts 0;
  originHost = if originParts == null then null else builtins.elemAt originParts 1;

  # A path to a secret: absolute and outside the store. A Nix path literal (./token) is
  # already refused by types.str; this catches "${./token}", which would copy it into the store.
  isHostPath = p: hasPrefix "/" p && !(hasPrefix "${builtins.storeDir}/" p);
  nullOrHostPath = p: p == null || isHostPath p;

  # Variables a sandbox receives from the hypervisor itself (docs/sandbox-contract.md); extra environment
  # must not shadow them.
  isReservedSandboxVar =
    name:
    elem name [
      "PORT"
      "DATA_DIR"
    ]
    || hasPrefix "HYPERVISOR_" name;
  sandboxEnvNames = attrNames cfg.sandbox.environment;
  badSandboxEnvNames = filter (
    n: builtins.match "[A-Za-z_][A-Za-z0-9_]*" n == null || isReservedSandboxVar n
  ) sandboxEnvNames;
  badSandboxEnvValues = filter (
    n: builtins.match "[^,\n]*" cfg.sandbox.environment.${n} == null
  ) sandboxEnvNames;

  usePodman = cfg.runtime == "podman";
  # Neither inside the other: a sandbox sees its data dir, never the state beside it (docs/architecture.md).
  dataDirApart =
    cfg.sandbox.dataDir != cfg.stateDir
    && !(hasPrefix "${cfg.stateDir}/" cfg.sandbox.dataDir)
    && !(hasPrefix "${cfg.sandbox.dataDir}/" cfg.stateDir);
  stateUnderVarLib = hasPrefix "/var/lib/" cfg.stateDir;
  operatorSocket =
    if cfg.operatorSocket == null then "${cfg.stateDir}/operator.sock" else cfg.operatorSocket;

  # A null value leaves the variable unset (NixOS omits null environment values), so the
  # config module applies its own default or derivation.
  environment = {
    HYPERVISOR_LISTEN = cfg.listen;
    HYPERVISOR_PUBLIC_ORIGIN = cfg.publicOrigin;
    HYPERVISOR_RP_ID = cfg.rpId;
    HYPERVISOR_STATE_DIR = cfg.stateDir;
    HYPERVISOR_SANDBOX_DATA_DIR = cfg.sandbox.dataDir;
    HYPERVISOR_RUNTIME = cfg.runtime;
    HYPERVISOR_PODMAN_SOCKET = cfg.podmanSocket;
    HYPERVISOR_SANDBOX_IMAGE = cfg.sandbox.image;
    HYPERVISOR_SANDBOX_MEMORY = cfg.sandbox.memory;
    HYPERVISOR_SANDBOX_CPUS = toString cfg.sandbox.cpus;
    HYPERVISOR_SANDBOX_PIDS = toString cfg.sandbox.pids;
    HYPERVISOR_SANDBOX_LOG_MAX = cfg.sandbox.logMax;
    HYPERVISOR_SANDBOX_DISK = cfg.sandbox.disk;
    HYPERVISOR_SANDBOX_ENV =
      if cfg.sandbox.environment == { } then
        null
      else
        concatStringsSep "," (mapAttrsToList (n: v: "${n}=${v}") cfg.sandbox.environment);
    HYPERVISOR_SANDBOX_DOMAIN = cfg.sandboxDomain;
    HYPERVISOR_OPERATOR_SOCKET = cfg.operatorSocket;
    HYPERVISOR_OPERATOR_LISTEN = cfg.operatorListen;
    # %d is the unit's credentials directory (systemd.unit(5), "Specifiers"); the file is
    # copied there by LoadCredential= below, readable by this service only.
    HYPERVISOR_OPERATOR_TOKEN_FILE =
      if cfg.operatorTokenFile == null then null else "%d/operator-token";
    # The ssh:// hosts' private key arrives the same way as the token, under the name the daemon
    # also looks for by itself ($CREDENTIALS_DIRECTORY/ssh-key).
    HYPERVISOR_SSH_KEY_FILE = if cfg.sshKeyFile == null then null else "%d/ssh-key";
    HYPERVISOR_SSH_KNOWN_HOSTS_FILE = cfg.sshKnownHostsFile;
    # Egress routes (docs/egress.md): the routes file and the user-key key as credentials too; each
    # route's secret is the credential egress-<secret>, which the daemon finds by itself.
    HYPERVISOR_EGRESS_ROUTES_FILE = if cfg.egressRoutesFile == null then null else "%d/egress-routes";
    HYPERVISOR_EGRESS_SECRETS_KEY_FILE =
      if cfg.egressSecretsKeyFile == null then null else "%d/egress-secrets-key";
    HYPERVISOR_REGISTRATION = cfg.registration;
    HYPERVISOR_START_TIMEOUT_MS = toString cfg.startTimeoutMs;
    HYPERVISOR_IDLE_STOP_MS = toString cfg.idleStopMs;
    HYPERVISOR_IDLE_FREEZE_MS = toString cfg.idleFreezeMs;
    HYPERVISOR_MEMORY_RESERVE = cfg.memoryReserve;
    HYPERVISOR_MAX_SANDBOXES = toString cfg.maxSandboxes;
    HYPERVISOR_USER_MAX_REQUESTS = toString cfg.userMaxRequests;
    HYPERVISOR_USER_MAX_WEBSOCKETS = toString cfg.userMaxWebSockets;
    HYPERVISOR_DRAIN_MS = toString cfg.drainMs;
    HYPERVISOR_ROLLBACK_DEADLINE_MS = toString cfg.rollbackDeadlineMs;
    HYPERVISOR_SNAPSHOT_KEEP = toString cfg.snapshotKeep;
    HYPERVISOR_PROMOTE_DEADLINE_MS = toString cfg.promoteDeadlineMs;
    HYPERVISOR_KNOWN_GOOD_AFTER_MS = toString cfg.knownGoodAfterMs;
    HYPERVISOR_LOG_LEVEL = cfg.logLevel;
    HYPERVISOR_SHUTDOWN_GRACE_MS = toString cfg.shutdownGraceMs;
    HYPERVISOR_PROCESS_UNCONTAINED = if cfg.processUncontained then "accept" else null;
    HYPERVISOR_PROCESS_NETWORK = cfg.processNetwork;
    HYPERVISOR_TRUSTED_PROXIES =
      if cfg.trustedProxies == [ ] then null else concatStringsSep "," cfg.trustedProxies;
    HYPERVISOR_EGRESS = cfg.egress.mode;
    HYPERVISOR_EGRESS_ALLOW = if cfg.egress.allow == [ ] then null else concatStringsSep "," cfg.egress.allow;
    HYPERVISOR_EGRESS_LISTEN = cfg.egress.listen;
    HYPERVISOR_EGRESS_REMOTE_LISTEN = cfg.egress.remoteListen;
    HYPERVISOR_EGRESS_PROXY_RPM = toString cfg.egress.proxyRpm;
    HYPERVISOR_EGRESS_PROXY_DAILY_BYTES = cfg.egress.proxyDailyBytes;
    HYPERVISOR_EGRESS_SANDBOX_RATE = cfg.egress.sandboxRate;
  };

  # systemd expands %-specifiers in Environment= values (systemd.unit(5) "Specifiers") and NixOS
  # writes them as given, so a literal % (a sandbox variable "50%", a %-encoded origin) is
  # doubled. The credential paths are the values that mean their specifier (%d).
  escapedEnvironment = mapAttrs (
    name: value:
    if
      value == null
      || elem name [
        "HYPERVISOR_OPERATOR_TOKEN_FILE"
        "HYPERVISOR_SSH_KEY_FILE"
        "HYPERVISOR_EGRESS_ROUTES_FILE"
        "HYPERVISOR_EGRESS_SECRETS_KEY_FILE"
      ]
    then
      value
    else
      replaceStrings [ "%" ] [ "%%" ] value
  ) environment;

  # Every file the service reads as a credential, LoadCredential= lines in this order.
  credentials =
    optional (cfg.operatorTokenFile != null) "operator-token:${cfg.operatorTokenFile}"
    ++ optional (cfg.sshKeyFile != null) "ssh-key:${cfg.sshKeyFile}"
    ++ optional (cfg.egressRoutesFile != null) "egress-routes:${cfg.egressRoutesFile}"
    ++ optional (cfg.egressSecretsKeyFile != null) "egress-secrets-key:${cfg.egressSecretsKeyFile}"
    ++ mapAttrsToList (name: path: "egress-${name}:${path}") cfg.egressSecrets;

  # `hypervisorctl` on the PATH, pointed at this host's operator socket.
  hypervisorctl = pkgs.writeShellScriptBin "hypervisorctl" ''
    export HYPERVISOR_OPERATOR_SOCKET="''${HYPERVISOR_OPERATOR_SOCKET:-${operatorSocket}}"
    exec ${cfg.package}/bin/hypervisorctl "$@"
  '';

  # The numeric bounds of hypervisor/config.ts's table (test/deploy/nix.test.ts walks it and
  # holds each option to it), so a value the daemon would refuse fails evaluation instead of
  # the service. The daemon reads numbers into JavaScript numbers, hence this ceiling.
  maxSafeInteger = 9007199254740991;
  boundedMilliseconds =
    min: max: default: description:
    mkOption {
      type = types.ints.between min max;
      inherit default description;
    };
  # The range of most deadlines and graces: up to an hour.
  milliseconds = boundedMilliseconds 0 3600000;

  # HYPERVISOR_SANDBOX_MEMORY and _CPUS read as config.ts reads them (parseFloat, then
  # Math.round), for the assertions on their minimums. The option types guarantee the shape.
  # fromJSON refuses leading zeros ("012"), which parseFloat skips.
  parseDecimal =
    s:
    if builtins.stringLength s > 1 && builtins.substring 0 1 s == "0" && builtins.substring 1 1 s != "." then
      parseDecimal (builtins.substring 1 (builtins.stringLength s) s)
    else
      builtins.fromJSON s;
  roundHalfUp = x: builtins.floor (x + 0.5);
  sizeUnits = {
    "" = 1;
    b = 1;
    k = 1024;
    m = 1024 * 1024;
    g = 1024 * 1024 * 1024;
  };
  memoryParts = builtins.match "([0-9]+(\\.[0-9]+)?)([bkmgBKMG]?)" cfg.sandbox.memory;
  memoryBytes = roundHalfUp (
    parseDecimal (builtins.elemAt memoryParts 0) * sizeUnits.${toLower (builtins.elemAt memoryParts 2)}
  );
  minMemoryBytes = 6 * 1024 * 1024;
  logMaxParts = builtins.match "([0-9]+(\\.[0-9]+)?)([bkmgBKMG]?)" cfg.sandbox.logMax;
  logMaxBytes = roundHalfUp (
    parseDecimal (builtins.elemAt logMaxParts 0) * sizeUnits.${toLower (builtins.elemAt logMaxParts 2)}
  );
  minLogMaxBytes = 1024 * 1024;
  proxyDailyParts = builtins.match "([0-9]+(\\.[0-9]+)?)([bkmgBKMG]?)" cfg.egress.proxyDailyBytes;
  proxyDailyBytes = roundHalfUp (
    parseDecimal (builtins.elemAt proxyDailyParts 0) * sizeUnits.${toLower (builtins.elemAt proxyDailyParts 2)}
  );
  minProxyDailyBytes = 1024 * 1024;
  # The egress modes, the daemon's (HYPERVISOR_EGRESS) and a sandbox host's firewall's alike.
  egressMode = types.enum [
    "gateway"
    "none"
    "open"
  ];
  sandboxRateParts = builtins.match "([0-9]+(\\.[0-9]+)?)([bkmgBKMG]?)" cfg.egress.sandboxRate;
  sandboxRateBytes = roundHalfUp (
    parseDecimal (builtins.elemAt sandboxRateParts 0) * sizeUnits.${toLower (builtins.elemAt sandboxRateParts 2)}
  );
  minSandboxRateBytes = 1024 * 1024;
  diskParts = builtins.match "([0-9]+(\\.[0-9]+)?)([bkmgBKMG]?)" cfg.sandbox.disk;
  diskBytes = roundHalfUp (
    parseDecimal (builtins.elemAt diskParts 0) * sizeUnits.${toLower (builtins.elemAt diskParts 2)}
  );
  minDiskBytes = 16 * 1024 * 1024;
  cpusValue = if builtins.isInt cfg.sandbox.cpus then cfg.sandbox.cpus else parseDecimal cfg.sandbox.cpus;
  nanoCpus = roundHalfUp (cpusValue * 1.0e9);
  minNanoCpus = 10000000;

  # The sandbox-host role (docs/hosts.md): this machine runs sandboxes for a hypervisor elsewhere.
  host = cfg.sandboxHost;
  hostAddress = host.hypervisorAddress;
  hostApi = if host.apiListen == null then null else splitListen host.apiListen;
  isWildcard =
    h:
    elem h [
      "0.0.0.0"
      "[::]"
      "::"
      "*"
    ];
  ports = host.publishedPorts;
  # New connections to this host's own addresses on the published ports: from the hypervisor's
  # address only. Matched before Podman's DNAT (netavark rewrites them to the container, so they
  # never reach the INPUT chain) and after connection tracking, so replies to this host's own
  # outgoing connections, whose local ports lie in the same kernel range, still pass.
  firewallChain = "hypervisor-sandbox-host";
  ip6Hypervisor = hostAddress != null && builtins.match ".*:.*" hostAddress != null;
  iptablesMatch = "-p tcp --dport ${toString ports.from}:${toString ports.to} -m addrtype --dst-type LOCAL -m conntrack --ctstate NEW";
  iptablesRules =
    tool: admit:
    ''
      ${tool} -w -t mangle -N ${firewallChain} 2>/dev/null || ${tool} -w -t mangle -F ${firewallChain}
    ''
    + (if admit then ''
      ${tool} -w -t mangle -A ${firewallChain} ${iptablesMatch} -s ${hostAddress} -j RETURN
    '' else "")
    + ''
      ${tool} -w -t mangle -A ${firewallChain} ${iptablesMatch} -j DROP
      ${tool} -w -t mangle -C PREROUTING -j ${firewallChain} 2>/dev/null || ${tool} -w -t mangle -I PREROUTING -j ${firewallChain}
    '';
  iptablesStop = tool: ''
    ${tool} -w -t mangle -D PREROUTING -j ${firewallChain} 2>/dev/null || true
    ${tool} -w -t mangle -F ${firewallChain} 2>/dev/null || true
    ${tool} -w -t mangle -X ${firewallChain} 2>/dev/null || true
  '';
  nftMatch = "tcp dport ${toString ports.from}-${toString ports.to} fib daddr type local ct state new";

  # The sandboxes' egress (docs/egress.md): new connections from Podman's bridges go to the
  # hypervisor's egress gateway only (gateway), nowhere (none) or to public addresses only (open);
  # to this host itself, replies only. As deploy/sandbox-host/firewall.sh: in mangle, before the
  # filter table where Podman puts its own ACCEPTs first whenever it makes a network.
  egress = host.egress;
  gatewayParts = if egress.gateway == null then null else builtins.match "\\[?([0-9A-Fa-f:.]+)]?:([0-9]{1,5})" egress.gateway;
  gatewayAddress = builtins.elemAt gatewayParts 0;
  gatewayPort = builtins.elemAt gatewayParts 1;
  ip6Gateway = builtins.match ".*:.*" gatewayAddress != null;
  sandboxBridges = [
    "cni-podman+"
    "podman+"
  ];
  egressOut = "hypervisor-sandbox-out";
  egressIn = "hypervisor-sandbox-in";
  # Loopback, link-local (the cloud's metadata service), private and shared ranges, multicast, reserved.
  never4 = [ "0.0.0.0/8" "10.0.0.0/8" "100.64.0.0/10" "127.0.0.0/8" "169.254.0.0/16" "172.16.0.0/12" "192.0.0.0/24" "192.168.0.0/16" "198.18.0.0/15" "224.0.0.0/4" "240.0.0.0/4" ];
  never6 = [ "::/128" "::1/128" "::ffff:0:0/96" "64:ff9b::/96" "fc00::/7" "fe80::/10" "ff00::/8" ];
  lines = concatStringsSep "";
  egressRules =
    tool: v6:
    let
      add = chain: rule: "${tool} -w -t mangle -A ${chain} ${rule}\n";
    in
    lines [
      "${tool} -w -t mangle -N ${egressOut} 2>/dev/null || ${tool} -w -t mangle -F ${egressOut}\n"
      "${tool} -w -t mangle -N ${egressIn} 2>/dev/null || ${tool} -w -t mangle -F ${egressIn}\n"
      (add egressOut "-m conntrack --ctstate ESTABLISHED,RELATED -j RETURN")
      (if egress.mode == "gateway" && gatewayParts != null && ip6Gateway == v6 then add egressOut "-d ${gatewayAddress} -p tcp --dport ${gatewayPort} -j RETURN" else "")
      (
        if egress.mode == "open" then
          lines (map (block: add egressOut "-d ${block} -j DROP") (if v6 then never6 else never4)) + add egressOut "-j RETURN"
        else
          add egressOut "-j DROP"
      )
      (add egressIn "-m conntrack --ctstate ESTABLISHED,RELATED -j RETURN")
      (if v6 then lines (map (type: add egressIn "-p ipv6-icmp --icmpv6-type ${type} -j RETURN") [ "neighbour-solicitation" "neighbour-advertisement" ]) else "")
      (add egressIn "-j DROP")
      (lines (map (bridge: ''
        ${tool} -w -t mangle -C FORWARD -i ${bridge} -j ${egressOut} 2>/dev/null || ${tool} -w -t mangle -I FORWARD -i ${bridge} -j ${egressOut}
        ${tool} -w -t mangle -C INPUT -i ${bridge} -j ${egressIn} 2>/dev/null || ${tool} -w -t mangle -I INPUT -i ${bridge} -j ${egressIn}
      '') sandboxBridges))
    ];
  egressStop =
    tool:
    lines (map (bridge: ''
      ${tool} -w -t mangle -D FORWARD -i ${bridge} -j ${egressOut} 2>/dev/null || true
      ${tool} -w -t mangle -D INPUT -i ${bridge} -j ${egressIn} 2>/dev/null || true
    '') sandboxBridges)
    + lines (map (chain: ''
      ${tool} -w -t mangle -F ${chain} 2>/dev/null || true
      ${tool} -w -t mangle -X ${chain} 2>/dev/null || true
    '') [ egressOut egressIn ]);
  nftIifs = map (bridge: "iifname \"${builtins.replaceStrings [ "+" ] [ "*" ] bridge}\"") sandboxBridges;
  nftEgress = ''
    chain sandbox-out-rules {
      ct state established,related return
      ${
        if egress.mode == "gateway" && gatewayParts != null then
          "${if ip6Gateway then "ip6" else "ip"} daddr ${gatewayAddress} tcp dport ${gatewayPort} return"
        else if egress.mode == "open" then
          "ip daddr { ${concatStringsSep ", " never4} } drop\n      ip6 daddr { ${concatStringsSep ", " never6} } drop\n      return"
        else
          ""
      }
      drop
    }
    chain sandbox-out {
      type filter hook forward priority mangle; policy accept;
      ${concatStringsSep "\n      " (map (iif: "${iif} jump sandbox-out-rules") nftIifs)}
    }
    chain sandbox-in-rules {
      ct state established,related return
      icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } return
      drop
    }
    chain sandbox-in {
      type filter hook input priority mangle; policy accept;
      ${concatStringsSep "\n      " (map (iif: "${iif} jump sandbox-in-rules") nftIifs)}
    }
  '';
  # The transport's own port (sshd's, or the tcp API's) is admitted from the hypervisor too.
  apiPorts = if host.transport == "tcp" then optional (hostApi != null) hostApi.port else config.services.openssh.ports;

  # A string the host may leave unset; each description says what null means.
  nullableStr =
    example: description:
    mkOption {
      type = types.nullOr types.str;
      default = null;
      inherit example description;
    };
in
{
  options.services.hypervisor = {
    enable = mkEnableOption "hypervisor, per-user live/dev sandboxes behind passkeys";

    package = mkOption {
      type = types.package;
      default = pkgs.hypervisor;
      defaultText = literalExpression "pkgs.hypervisor (set by the flake's nixosModules.default)";
      description = "The hypervisor package; its `bin/hypervisor` is the daemon.";
    };

    listen = mkOption {
      type = types.str;
      default = "127.0.0.1:8080";
      example = "[::]:8080";
      description = ''
        Public listener for users, `host:port` (HYPERVISOR_LISTEN). Keep it on loopback behind
        a TLS reverse proxy.
      '';
    };

    publicOrigin = mkOption {
      type = types.str;
      default = "http://localhost:8080";
      example = "https://sandbox.example.org";
      description = ''
        The origin users see (HYPERVISOR_PUBLIC_ORIGIN): WebAuthn, cookie security and Origin
        checks. Passkeys need `https://` except on localhost.
      '';
    };

    rpId = nullableStr "example.org" ''
      WebAuthn relying party ID (HYPERVISOR_RP_ID). `null` derives it from the host of
      `publicOrigin`. Must be that host or a registrable suffix of it.
    '';

    sandboxDomain = mkOption {
      type = types.nullOr (types.strMatching "[a-z0-9]([a-z0-9-]*[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*");
      default = null;
      example = "sandboxes.example.org";
      description = ''
        Serve each user's sandboxes from their own origins, `live-<user>.<domain>` and
        `dev-<user>.<domain>`, with the scheme and port of `publicOrigin`
        (HYPERVISOR_SANDBOX_DOMAIN). Needs a wildcard DNS record and a wildcard certificate for
        `*.<domain>` at the TLS front; best a registrable domain of its own, so sandboxes are
        not same-site with the public origin. `null` keeps path mode (`/dev/...` on the public
        origin).
      '';
    };

    stateDir = mkOption {
      type = types.str;
      default = "/var/lib/hypervisor";
      description = ''
        SQLite database, operator socket and process-runtime records (HYPERVISOR_STATE_DIR).
        Under /var/lib it is created by systemd's StateDirectory=, elsewhere by tmpfiles.
      '';
    };

    runtime = mkOption {
      type = types.enum [
        "podman"
        "process"
      ];
      default = "podman";
      description = ''
        Where sandboxes run (HYPERVISOR_RUNTIME): Podman containers, or child processes of
        the daemon (development only: no isolation between sandboxes).
      '';
    };

    podmanSocket = mkOption {
      type = types.str;
      default = "/run/podman/podman.sock";
      description = ''
        Podman's Docker-compatible API socket (HYPERVISOR_PODMAN_SOCKET). The default is the
        rootful socket of NixOS's podman.socket.
      '';
    };

    operatorSocket = nullableStr "/run/hypervisor/operator.sock" ''
      Unix socket of the operator API (HYPERVISOR_OPERATOR_SOCKET). `null` means
      `<stateDir>/operator.sock`.
    '';

    operatorListen = nullableStr "127.0.0.1:9090" ''
      Optional TCP listener for the operator API (HYPERVISOR_OPERATOR_LISTEN); requests need
      `Authorization: Bearer` with the token from `operatorTokenFile`.
    '';

    operatorTokenFile = nullableStr "/run/keys/hypervisor-operator-token" ''
      Path on the host of the operator bearer token (HYPERVISOR_OPERATOR_TOKEN_FILE). It is
      passed with systemd's LoadCredential=, so the service reads a private copy and the
      secret never enters the Nix store. A string, not a Nix path: `./token` would be copied
      into the store.
    '';

    sshKeyFile = nullableStr "/run/keys/hypervisor-ssh-key" ''
      Path on the host of the private key the hypervisor uses for `ssh://` Podman hosts
      (HYPERVISOR_SSH_KEY_FILE), passed with LoadCredential= like `operatorTokenFile`. A
      string, not a Nix path, so the key never enters the Nix store.
    '';

    egressRoutesFile = nullableStr "/etc/hypervisor/egress-routes.json" ''
      Path on the host of the egress routes file (HYPERVISOR_EGRESS_ROUTES_FILE, docs/egress.md):
      a JSON array of routes naming their secrets, never holding them. Passed with
      LoadCredential= as egress-routes; `systemctl reload hypervisor` reads it again.
    '';

    egressSecrets = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = {
        openai = "/run/keys/hypervisor-egress-openai";
      };
      description = ''
        The routes' secrets: secret name → path on the host of the file holding it. Each is
        passed with LoadCredential= as egress-<name>, where the daemon reads it; none enters the
        Nix store or the unit. Strings, not Nix paths.
      '';
    };

    egressSecretsKeyFile = nullableStr "/run/keys/hypervisor-egress-secrets-key" ''
      Path on the host of the key that encrypts users' own egress keys
      (HYPERVISOR_EGRESS_SECRETS_KEY_FILE; e.g. `openssl rand -hex 32`), passed with
      LoadCredential= as egress-secrets-key. `null`: users cannot store their own keys.
    '';

    sshKnownHostsFile = nullableStr "/etc/hypervisor/known_hosts" ''
      known_hosts file the `ssh://` hosts' keys are checked against
      (HYPERVISOR_SSH_KNOWN_HOSTS_FILE); an unknown host key is refused. `null` means
      `<stateDir>/known_hosts`.
    '';

    environmentFile = nullableStr "/etc/hypervisor/hypervisor.env" ''
      Optional EnvironmentFile= read by systemd at start, for values that must stay out of
      the Nix store. Its variables override the options of this module.
    '';

    registration = mkOption {
      type = types.enum [
        "open"
        "invite"
        "closed"
      ];
      default = "open";
      description = "Who may register an account (HYPERVISOR_REGISTRATION).";
    };

    processUncontained = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Run process sandboxes even where this host cannot contain them (no bubblewrap, or no
        user namespaces for a non-root daemon), with open registration too
        (HYPERVISOR_PROCESS_UNCONTAINED=accept). Uncontained, sandbox code runs with the
        daemon's uid and sees its state: only for a trusted, single-tenant host.
      '';
    };

    processNetwork = mkOption {
      type = types.strMatching "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}/(1[6-9]|2[0-9]|30)";
      default = "10.252.0.0/16";
      description = ''
        Process runtime as root (HYPERVISOR_PROCESS_NETWORK): the IPv4 block, /16 to /30, cut into
        one /31 per running sandbox, the link between its own network namespace and the host. The
        block is routed unreachable on the host but through those links: pick one no network of
        this host uses.
      '';
    };

    egress = {
      mode = mkOption {
        type = egressMode;
        default = "gateway";
        description = ''
          Sandboxes' way out (HYPERVISOR_EGRESS): `gateway`, only the hypervisor's egress gateway;
          `none`, nothing; `open`, direct, but never the host, link-local or private ranges not
          allowed.
        '';
      };
      allow = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [
          "api.example.org"
          "*.pkg.example.net"
          "10.40.0.0/16"
        ];
        description = ''
          Hosts the gateway (and `open` mode) may reach (HYPERVISOR_EGRESS_ALLOW): exact names,
          `*.suffix` patterns, and CIDR blocks of private ranges. Link-local is never allowed.
        '';
      };
      listen = mkOption {
        type = types.strMatching "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}:[0-9]{1,5}";
        default = "10.253.0.1:3128";
        description = ''
          The egress gateway's IPv4 address and port (HYPERVISOR_EGRESS_LISTEN), put on a link of its own:
          pick an address no network of this host uses.
        '';
      };
      remoteListen = mkOption {
        type = types.nullOr (types.strMatching "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}:[0-9]{1,5}");
        default = null;
        example = "10.0.0.1:3129";
        description = ''
          A second listener of the egress gateway for remote sandbox hosts' sandboxes
          (HYPERVISOR_EGRESS_REMOTE_LISTEN): an IPv4 address of this host they reach, and a port.
          It admits registered hosts' addresses only; each host's own firewall
          (`sandboxHost.egress`) sends its sandboxes there and nowhere else. Unset, remote
          sandboxes get no way out (`none`).
        '';
      };
      proxyRpm = mkOption {
        type = types.ints.between 1 1000000;
        default = 600;
        description = "Calls one user's sandboxes may make through the forward proxy a minute; more get 429 (HYPERVISOR_EGRESS_PROXY_RPM).";
      };
      proxyDailyBytes = mkOption {
        type = types.strMatching "[0-9]+(\\.[0-9]+)?[bkmgBKMG]?";
        default = "10g";
        description = "Bytes one user's sandboxes may move through the forward proxy a day (UTC), Podman syntax; then 429 (HYPERVISOR_EGRESS_PROXY_DAILY_BYTES).";
      };
      sandboxRate = mkOption {
        type = types.strMatching "[0-9]+(\\.[0-9]+)?[bkmgBKMG]?";
        default = "32m";
        description = "Bytes a second one sandbox's forward-proxy calls may move, all its connections and both ways together, Podman syntax (HYPERVISOR_EGRESS_SANDBOX_RATE).";
      };
    };

    drainMs = milliseconds 30000 "Grace for WebSockets on the old target after a swap, in ms (HYPERVISOR_DRAIN_MS).";
    rollbackDeadlineMs = boundedMilliseconds 100 3600000 10000 "A rollback finishes or fails within this many ms (HYPERVISOR_ROLLBACK_DEADLINE_MS).";
    promoteDeadlineMs = boundedMilliseconds 1000 3600000 30000 "A promote is healthy within this many ms or backs out, live's data restored (HYPERVISOR_PROMOTE_DEADLINE_MS).";
    snapshotKeep = mkOption {
      type = types.ints.between 1 1000;
      default = 5;
      description = "Automatic snapshots of a slot's data kept per user and slot; manual and pinned ones are never pruned (HYPERVISOR_SNAPSHOT_KEEP).";
    };
    startTimeoutMs = boundedMilliseconds 100 3600000 30000 "Wait this many ms for a sandbox to become healthy (HYPERVISOR_START_TIMEOUT_MS).";
    idleStopMs = boundedMilliseconds 0 maxSafeInteger 1800000 "Stop a sandbox idle this many ms; 0 = never (HYPERVISOR_IDLE_STOP_MS).";
    idleFreezeMs = boundedMilliseconds 0 maxSafeInteger 300000 "Freeze a sandbox idle this many ms (memory kept, no CPU; the next request thaws it); 0 = never (HYPERVISOR_IDLE_FREEZE_MS).";

    memoryReserve = mkOption {
      type = types.strMatching "[0-9]+(\\.[0-9]+)?[bkmgBKMG]?";
      default = "512m";
      description = "Available memory kept free, Podman syntax: below it frozen sandboxes are stopped, least recently used first, then new starts are refused; 0 = no reserve (HYPERVISOR_MEMORY_RESERVE).";
    };
    knownGoodAfterMs = boundedMilliseconds 0 maxSafeInteger 600000 "Healthy live time in ms before a generation is known-good (HYPERVISOR_KNOWN_GOOD_AFTER_MS).";
    shutdownGraceMs = milliseconds 10000 "On stop, in-flight HTTP requests get this many ms to finish before their connections are cut (HYPERVISOR_SHUTDOWN_GRACE_MS); TimeoutStopSec follows it.";

    maxSandboxes = mkOption {
      type = types.ints.between 1 100000;
      default = 200;
      description = "Running sandboxes at most (HYPERVISOR_MAX_SANDBOXES).";
    };

    userMaxRequests = mkOption {
      type = types.ints.between 1 100000;
      default = 256;
      description = "Proxied HTTP requests one user may have in flight at once; more get 429 (HYPERVISOR_USER_MAX_REQUESTS).";
    };

    userMaxWebSockets = mkOption {
      type = types.ints.between 1 100000;
      default = 64;
      description = "WebSockets one user may have open through the proxy at once; more get 429 (HYPERVISOR_USER_MAX_WEBSOCKETS).";
    };

    logLevel = mkOption {
      type = types.enum [
        "fatal"
        "error"
        "warn"
        "info"
        "debug"
        "trace"
        "silent"
      ];
      default = "info";
      description = "pino log level (HYPERVISOR_LOG_LEVEL).";
    };

    trustedProxies = mkOption {
      type = types.listOf (types.strMatching "[0-9A-Fa-f:.]+(/[0-9]{1,3})?");
      default = [
        "127.0.0.1/32"
        "::1/128"
      ];
      example = [ "10.0.0.0/8" ];
      description = ''
        Peers whose X-Forwarded-For is believed (HYPERVISOR_TRUSTED_PROXIES), as CIDR blocks:
        by default the TLS reverse proxy on this host. Each must overwrite the header with the
        address it saw (nginx: `proxy_set_header X-Forwarded-For $remote_addr;`), not append to
        it. `[ ]`: the socket peer is the client and the header is ignored.
      '';
    };

    sandbox = {
      image = mkOption {
        type = types.str;
        default = "localhost/hypervisor-sandbox:latest";
        description = ''
          Image of the first generation on Podman (HYPERVISOR_SANDBOX_IMAGE). It must already
          be in local storage: the hypervisor never pulls (`podman load` the flake's
          `sandbox-image`).
        '';
      };

      memory = mkOption {
        type = types.strMatching "[0-9]+(\\.[0-9]+)?[bkmgBKMG]?";
        default = "512m";
        description = "Memory limit per sandbox, Podman syntax, at least 6m (HYPERVISOR_SANDBOX_MEMORY).";
      };

      cpus = mkOption {
        type = types.either types.ints.positive (types.strMatching "[0-9]+(\\.[0-9]+)?");
        default = "1";
        example = "0.5";
        description = "CPU limit per sandbox, in CPUs, at least 0.01 (HYPERVISOR_SANDBOX_CPUS).";
      };

      pids = mkOption {
        type = types.ints.between 16 1000000;
        default = 256;
        description = "Process/thread limit per sandbox, 16 to 1000000 (HYPERVISOR_SANDBOX_PIDS).";
      };

      disk = mkOption {
        type = types.strMatching "[0-9]+(\\.[0-9]+)?[bkmgBKMG]?";
        default = "2g";
        description = "Data per sandbox at most, at least 16m (HYPERVISOR_SANDBOX_DISK); the process runtime measures it and stops a sandbox over it.";
      };

      logMax = mkOption {
        type = types.strMatching "[0-9]+(\\.[0-9]+)?[bkmgBKMG]?";
        default = "10m";
        description = "A sandbox's log at most, rotated, at least 1m (HYPERVISOR_SANDBOX_LOG_MAX).";
      };

      dataDir = mkOption {
        type = types.str;
        default = "/var/lib/hypervisor-sandboxes";
        description = ''
          Process runtime: one data directory per sandbox (HYPERVISOR_SANDBOX_DATA_DIR). It must
          lie outside stateDir and not contain it: a sandbox sees its own data directory only.
        '';
      };

      environment = mkOption {
        type = types.attrsOf types.str;
        default = { };
        example = {
          TZ = "UTC";
        };
        description = ''
          Extra non-secret environment for every sandbox (HYPERVISOR_SANDBOX_ENV, rendered as
          `K=V,K2=V2`). Values cannot contain commas; names cannot be PORT, DATA_DIR or
          HYPERVISOR_*. These land in the Nix store: never put secrets here.
        '';
      };
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the TCP port of `listen` in the firewall.";
    };

    # Another role of this module: not the daemon, a machine whose Podman a hypervisor elsewhere
    # drives (docs/hosts.md). It sets no HYPERVISOR_* variable; the hypervisor learns of the host
    # through `hypervisorctl hosts add`.
    sandboxHost = {
      enable = mkEnableOption "the sandbox-host role: Podman's API for a hypervisor on another machine, its sandbox ports open to that hypervisor only";

      hypervisorAddress = mkOption {
        type = types.nullOr (types.strMatching "[0-9A-Fa-f:.]+");
        default = null;
        example = "10.0.0.1";
        description = ''
          The address the hypervisor connects from: the only source admitted to the published
          sandbox ports (and to the API's port). One IPv4 or IPv6 address, no name.
        '';
      };

      transport = mkOption {
        type = types.enum [
          "ssh"
          "tcp"
        ];
        default = "ssh";
        description = ''
          How the hypervisor reaches this Podman. `ssh`: Podman's own remote transport, the
          rootful API socket forwarded over ssh for a dedicated user (register the host with
          `--url ssh://<user>@<host>/run/podman/podman.sock`). `tcp`: `podman system service`
          on `apiListen`, unauthenticated and in clear text, so only inside a private network
          (`--url tcp://<apiListen>`).
        '';
      };

      user = mkOption {
        type = types.strMatching "[a-z_][a-z0-9_-]*";
        default = "hypervisor-remote";
        description = ''
          The account the hypervisor logs in as over ssh. It is in group `podman`, whose API
          socket is root-equivalent on this host: it may forward that socket and nothing else
          (no shell, no TTY, no TCP forwarding).
        '';
      };

      authorizedKeysFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/etc/hypervisor/hypervisor.pub";
        description = ''
          Path on this host of the file holding the hypervisor's ssh public key (one
          authorized_keys line), for the `ssh` transport. A string, not a Nix path: the host
          provides the file, so a new key needs no rebuild.
        '';
      };

      apiListen = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "10.0.0.2:8888";
        description = ''
          For the `tcp` transport: `address:port` of this host's private network on which
          `podman system service` listens. Never a wildcard address; the firewall admits only
          `hypervisorAddress` to the port.
        '';
      };

      egress = {
        mode = mkOption {
          type = egressMode;
          default = "none";
          description = ''
            What this host's sandboxes may connect to (docs/egress.md), held by this host's firewall,
            which the hypervisor cannot see: `gateway`, the hypervisor's egress gateway only
            (`gateway`, its HYPERVISOR_EGRESS_REMOTE_LISTEN); `none`, nothing; `open`, public
            addresses directly. Never this host itself, link-local or private ranges. Take the
            hypervisor's HYPERVISOR_EGRESS, or `none` when it has no listener for remote hosts.
          '';
        };
        gateway = mkOption {
          type = types.nullOr (types.strMatching "(\\[[0-9A-Fa-f:]+]|[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}):[0-9]{1,5}");
          default = null;
          example = "10.0.0.1:3129";
          description = "For `gateway`: the gateway's listener for remote hosts, `address:port` (`[v6]:port`), the hypervisor's HYPERVISOR_EGRESS_REMOTE_LISTEN.";
        };
      };

      publishedPorts = {
        from = mkOption {
          type = types.ints.between 1024 65535;
          default = 32768;
          description = ''
            First port of the range sandbox ports are published in: the kernel's
            `net.ipv4.ip_local_port_range`, where Podman picks a free port for each sandbox.
          '';
        };
        to = mkOption {
          type = types.ints.between 1024 65535;
          default = 60999;
          description = "Last port of the range sandbox ports are published in (see `publishedPorts.from`).";
        };
      };
    };
  };

  # Two roles, each on its own: the daemon (enable) and the sandbox host (sandboxHost.enable).
  config = mkMerge [
  (mkIf cfg.enable (mkMerge [
    (mkIf (cfg.egress.mode == "open") {
      # `open` forwards the sandboxes' block, and the unit's ProtectKernelTunables= keeps the
      # daemon from switching forwarding on by itself.
      boot.kernel.sysctl."net.ipv4.ip_forward" = mkDefault 1;
    })
    {
      assertions = [
        {
          assertion = validListen cfg.listen;
          message = "services.hypervisor.listen must be host:port (got \"${cfg.listen}\").";
        }
        {
          assertion = originParts != null;
          message = "services.hypervisor.publicOrigin must be an origin, http(s)://host[:port] without a path (got \"${cfg.publicOrigin}\").";
        }
        {
          # WebAuthn Level 3, §4 "RP ID": the origin's effective domain or a registrable suffix of it.
          assertion =
            cfg.rpId == null
            || originHost == null
            || originHost == cfg.rpId
            || hasSuffix ".${cfg.rpId}" originHost;
          message = "services.hypervisor.rpId (\"${toString cfg.rpId}\") must be the host of publicOrigin or a suffix of it.";
        }
        {
          assertion = isHostPath cfg.stateDir;
          message = "services.hypervisor.stateDir must be an absolute path outside the Nix store.";
        }
        {
          assertion = isHostPath cfg.sandbox.dataDir && dataDirApart;
          message = "services.hypervisor.sandbox.dataDir must be an absolute path outside the Nix store, outside stateDir and not containing it.";
        }
        {
          assertion = nullOrHostPath cfg.operatorSocket && hasPrefix "/" cfg.podmanSocket;
          message = "services.hypervisor.operatorSocket and podmanSocket must be absolute paths outside the Nix store.";
        }
        {
          assertion = cfg.operatorListen == null || validListen cfg.operatorListen;
          message = "services.hypervisor.operatorListen must be host:port.";
        }
        {
          assertion = cfg.operatorListen == null || cfg.operatorTokenFile != null;
          message = "services.hypervisor.operatorListen needs services.hypervisor.operatorTokenFile: the TCP operator listener only accepts a bearer token.";
        }
        {
          # Two planes, two listeners (STYLE.md principle 1).
          assertion = cfg.operatorListen != cfg.listen;
          message = "services.hypervisor.operatorListen must differ from listen: users and operators never share a listener.";
        }
        {
          assertion = nullOrHostPath cfg.operatorTokenFile;
          message = "services.hypervisor.operatorTokenFile must be an absolute path outside the Nix store (a string such as \"/run/keys/hypervisor-operator-token\"), so the secret never lands in the world-readable store.";
        }
        {
          assertion = builtins.all nullOrHostPath ([ cfg.egressRoutesFile cfg.egressSecretsKeyFile ] ++ builtins.attrValues cfg.egressSecrets);
          message = "services.hypervisor.egressRoutesFile, egressSecretsKeyFile and egressSecrets must be absolute paths outside the Nix store, so no secret lands in the world-readable store.";
        }
        {
          assertion = builtins.all (name: builtins.match "[a-z0-9][a-z0-9_.-]*" name != null && name != "routes" && name != "secrets-key") (attrNames cfg.egressSecrets);
          message = "services.hypervisor.egressSecrets: names are lower-case letters, digits, '-', '_' or '.', and not routes or secrets-key (those name other credentials).";
        }
        {
          assertion = nullOrHostPath cfg.sshKeyFile;
          message = "services.hypervisor.sshKeyFile must be an absolute path outside the Nix store, so the private key never lands in the world-readable store.";
        }
        {
          assertion = nullOrHostPath cfg.environmentFile;
          message = "services.hypervisor.environmentFile must be an absolute path outside the Nix store.";
        }
        {
          assertion = badSandboxEnvNames == [ ];
          message = "services.hypervisor.sandbox.environment: invalid or reserved names: ${concatStringsSep ", " badSandboxEnvNames} (names are [A-Za-z_][A-Za-z0-9_]*, not PORT, DATA_DIR or HYPERVISOR_*).";
        }
        {
          assertion = badSandboxEnvValues == [ ];
          message = "services.hypervisor.sandbox.environment: values of ${concatStringsSep ", " badSandboxEnvValues} contain a comma or newline, which HYPERVISOR_SANDBOX_ENV (K=V,K2=V2) cannot carry.";
        }
        {
          assertion = memoryBytes >= minMemoryBytes;
          message = "services.hypervisor.sandbox.memory must be at least 6m (got \"${cfg.sandbox.memory}\"): the daemon refuses less (HYPERVISOR_SANDBOX_MEMORY).";
        }
        {
          assertion = diskBytes >= minDiskBytes;
          message = "services.hypervisor.sandbox.disk must be at least 16m (got \"${cfg.sandbox.disk}\"): the daemon refuses less (HYPERVISOR_SANDBOX_DISK).";
        }
        {
          assertion = proxyDailyBytes >= minProxyDailyBytes;
          message = "services.hypervisor.egress.proxyDailyBytes must be at least 1m (got \"${cfg.egress.proxyDailyBytes}\"): the daemon refuses less (HYPERVISOR_EGRESS_PROXY_DAILY_BYTES).";
        }
        {
          assertion = sandboxRateBytes >= minSandboxRateBytes;
          message = "services.hypervisor.egress.sandboxRate must be at least 1m (got \"${cfg.egress.sandboxRate}\"): the daemon refuses less (HYPERVISOR_EGRESS_SANDBOX_RATE).";
        }
        {
          assertion = logMaxBytes >= minLogMaxBytes;
          message = "services.hypervisor.sandbox.logMax must be at least 1m (got \"${cfg.sandbox.logMax}\"): the daemon refuses less (HYPERVISOR_SANDBOX_LOG_MAX).";
        }
        {
          assertion = nanoCpus >= minNanoCpus;
          message = "services.hypervisor.sandbox.cpus must be at least 0.01 (got ${toString cfg.sandbox.cpus}): the daemon refuses less (HYPERVISOR_SANDBOX_CPUS).";
        }
        {
          assertion = !usePodman || config.virtualisation.podman.enable;
          message = "services.hypervisor.runtime = \"podman\" needs virtualisation.podman.enable = true.";
        }
        {
          assertion = !(cfg.openFirewall && listen != null && isLoopback listen.host);
          message = "services.hypervisor.openFirewall is set but listen (${cfg.listen}) is a loopback address: nothing outside the host could connect. Listen on a public address or drop openFirewall.";
        }
      ];

      warnings =
        optional (originScheme == "http" && originHost != "localhost")
          "services.hypervisor.publicOrigin (${cfg.publicOrigin}) is plain http: browsers only offer passkeys (WebAuthn) in secure contexts, so users cannot log in."
        ++ optional (
          cfg.operatorListen != null
          && splitListen cfg.operatorListen != null
          && !isLoopback (splitListen cfg.operatorListen).host
        ) "services.hypervisor.operatorListen (${cfg.operatorListen}) is not loopback: the bearer token crosses the network in clear text. Prefer loopback plus an SSH tunnel."
        ++ optional (cfg.runtime == "process")
          "services.hypervisor.runtime = \"process\": this unit's hardening (RestrictNamespaces=, no privilege but CAP_NET_ADMIN, which sandboxes never get) leaves bubblewrap no room, so sandboxes run uncontained with the daemon's uid (processUncontained is needed with open registration); use it for development only.";

      users.users.hypervisor = {
        isSystemUser = true;
        group = "hypervisor";
        description = "hypervisor daemon";
        # The rootful Podman socket is group `podman` (NixOS podman module: SocketGroup).
        # Access to it is root-equivalent: it is the one privilege this user holds.
        extraGroups = optional usePodman "podman";
      };
      users.groups.hypervisor = { };

      environment.systemPackages = [ hypervisorctl ];

      systemd.tmpfiles.rules =
        optionals (!stateUnderVarLib) [
          "d ${cfg.stateDir} 0700 hypervisor hypervisor - -"
        ]
        ++ optionals (cfg.runtime == "process") [
          "d ${cfg.sandbox.dataDir} 0700 hypervisor hypervisor - -"
        ];

      networking.firewall.allowedTCPPorts = optionals (cfg.openFirewall && listen != null) [
        listen.port
      ];

      systemd.services.hypervisor = {
        description = "hypervisor: per-user live/dev sandboxes behind passkeys";
        wantedBy = [ "multi-user.target" ];
        # Wants= the socket, not podman.service: Podman stays socket-activated. Not Requires=:
        # a restart of podman.socket must not stop the daemon, which keeps serving what runs
        # and reports Podman's absence in /_hv/readyz.
        after = [ "network.target" ] ++ optional usePodman "podman.socket";
        wants = optional usePodman "podman.socket";
        # A crash loop stops after 30 starts in 5 minutes and stays failed for a human; manual
        # restarts count too, hence not fewer (the Debian unit says why, RUNBOOK "Restart policy").
        startLimitIntervalSec = 300;
        startLimitBurst = 30;

        environment = escapedEnvironment // {
          NODE_ENV = "production";
        };
        # What the daemon runs for egress: the gateway's link (ip) and the host's rules (iptables);
        # and setpriv, which clears the capability it holds for those from a sandbox's process.
        path = [
          pkgs.iproute2
          pkgs.iptables
          pkgs.util-linux
        ];

        serviceConfig = {
          Type = "exec";
          ExecStart = "${cfg.package}/bin/hypervisor";
          # The egress routes file and secrets are read again, no restart (docs/egress.md), as
          # SIGHUP does; through the operator socket, so a broken file fails the reload visibly.
          ExecReload = "${hypervisorctl}/bin/hypervisorctl egress reload";
          # Socket activation (docs/operating.md): the listeners outlive the daemon, so a restart
          # refuses no connection. Implies Wants= and After= on both.
          Sockets = "hypervisor.socket hypervisor-operator.socket";
          # Why a dedicated user and not DynamicUser=: the daemon needs a stable identity that
          # the podman group can contain, and its state outlives the unit. Why not root: access
          # to the rootful Podman socket is root-equivalent anyway, but everything else the
          # Node process could do as root (files, kernel interfaces) is denied to this user.
          User = "hypervisor";
          Group = "hypervisor";
          # The code's own read-only directory, as /opt/hypervisor on Debian.
          WorkingDirectory = "${cfg.package}/lib/node_modules/hypervisor";
          Restart = "on-failure";
          RestartSec = "2s";
          # SIGTERM closes WebSockets at once and gives in-flight HTTP up to shutdownGraceMs;
          # that (rounded up) plus a margin before SIGKILL.
          TimeoutStopSec = "${toString ((cfg.shutdownGraceMs + 999) / 1000 + 10)}s";
          # Why KillMode=process: sandboxes must survive a restart of the daemon, which adopts
          # them by label (docs/operating.md). Podman containers live in podman's cgroup anyway; the
          # process runtime's children are detached but stay in this unit's cgroup and would
          # be killed on every stop or restart by the default control-group mode.
          KillMode = "process";
          # Why delegated: the process runtime makes each sandbox's cgroup (its limits,
          # docs/operating.md) below this unit's group on a unified host; the daemon itself lives in the leaf
          # `daemon`, since a group that hands controllers down may hold no process.
          Delegate = true;
          DelegateSubgroup = "daemon";
          # "Never self-heal" concerns state: the daemon never moves, recreates or repairs
          # sandboxes by itself. Restarting the process after a crash is waived from it: it
          # changes no state (sandboxes are adopted as they are) and is bounded by the start
          # limit above. A configuration error (exit 2) is never retried. RUNBOOK "Restart policy".
          RestartPreventExitStatus = 2;

          StateDirectory = mkIf stateUnderVarLib (removePrefix "/var/lib/" cfg.stateDir);
          # The state dir holds the SQLite database and the operator socket: owner only.
          StateDirectoryMode = "0700";
          UMask = "0077";
          ProtectSystem = "strict";
          # Not the operator socket's directory: the socket, wherever it is, and its directory are
          # made by hypervisor-operator.socket (DirectoryMode=) before the daemon starts.
          ReadWritePaths = [
            cfg.stateDir
          ]
          ++ optional (cfg.runtime == "process") cfg.sandbox.dataDir;
          ProtectHome = true;
          PrivateTmp = true;
          PrivateMounts = true;
          PrivateDevices = true;
          # Only this user's processes: all the process runtime reads to adopt its children.
          ProtectProc = "invisible";
          # No ProcSubset = "pid": it hides /proc/meminfo, which the memory reserve reads.
          ProtectKernelTunables = true;
          ProtectKernelModules = true;
          ProtectKernelLogs = true;
          ProtectControlGroups = true;
          ProtectClock = true;
          ProtectHostname = true;

          NoNewPrivileges = true;
          # CAP_NET_ADMIN alone, for egress (docs/egress.md): the gateway's own link and the host
          # firewall rules holding sandbox networks to the egress mode (`ip` and `iptables`
          # inherit it). Unprivileged port, group-accessible Podman socket: nothing else.
          CapabilityBoundingSet = "CAP_NET_ADMIN";
          AmbientCapabilities = "CAP_NET_ADMIN";
          RestrictSUIDSGID = true;
          LockPersonality = true;
          RestrictRealtime = true;
          RestrictNamespaces = true;
          # No PrivateUsers: a capability inside a user namespace of its own does not reach the
          # host's network namespace, whose firewall and links egress changes.
          RemoveIPC = true;
          # V8's JIT writes then executes code pages: MemoryDenyWriteExecute=yes crashes node.
          MemoryDenyWriteExecute = false;

          # AF_UNIX: Podman API and operator sockets; AF_INET/6: listeners and sandbox ports;
          # AF_NETLINK: `ip` and `iptables` for egress.
          RestrictAddressFamilies = [
            "AF_UNIX"
            "AF_INET"
            "AF_INET6"
            "AF_NETLINK"
          ];
          SystemCallArchitectures = "native";
          # @resources stays allowed: the process runtime may lower its children's
          # priority or limits (setpriority, setrlimit).
          SystemCallFilter = [
            "@system-service"
            "~@privileged"
          ];
          SystemCallErrorNumber = "EPERM";
          DevicePolicy = "closed";
          # Many proxied connections at once, two descriptors each.
          LimitNOFILE = 65536;
        }
        // optionalAttrs (credentials != [ ]) {
          # systemd.exec(5) "Credentials": a private, non-swappable copy for this unit only.
          LoadCredential = credentials;
        }
        // optionalAttrs (cfg.environmentFile != null) {
          EnvironmentFile = cfg.environmentFile;
        };
      };
    }

    {
      # The listeners, held by systemd across restarts of the daemon: one unit per descriptor
      # name (FileDescriptorName= names every descriptor of its unit), as the daemon expects.
      systemd.sockets.hypervisor = {
        description = "hypervisor: public listener (socket activation)";
        wantedBy = [ "sockets.target" ];
        listenStreams = [ cfg.listen ];
        socketConfig = {
          FileDescriptorName = "public";
          Service = "hypervisor.service";
        };
      };
      systemd.sockets.hypervisor-operator = {
        description = "hypervisor: operator API socket (socket activation)";
        wantedBy = [ "sockets.target" ];
        listenStreams = [ operatorSocket ];
        socketConfig = {
          FileDescriptorName = "operator";
          Service = "hypervisor.service";
          # Owner only, as when the daemon binds it itself; the daemon leaves systemd's file alone.
          SocketUser = "hypervisor";
          SocketGroup = "hypervisor";
          SocketMode = "0600";
          DirectoryMode = "0700";
          RemoveOnStop = true;
        };
      };
    }

    (mkIf usePodman {
      virtualisation.podman.enable = mkDefault true;
      # The podman module ships podman.socket (rootful API at /run/podman/podman.sock, group
      # podman) and already wants it; stated here so the daemon never depends on that default.
      systemd.sockets.podman.wantedBy = [ "sockets.target" ];
      # Bounded open files per sandbox. Deliberately no nproc ulimit: RLIMIT_NPROC counts all
      # processes of a host UID, so one limit would be shared by every sandbox running as the
      # same user. Processes per sandbox are bounded by the pids cgroup (sandbox.pids).
      virtualisation.containers.containersConf.settings.containers.default_ulimits = mkDefault [
        "nofile=8192:8192"
      ];
    })
  ]))

  (mkIf host.enable (mkMerge [
    {
      assertions = [
        {
          assertion = hostAddress != null;
          message = "services.hypervisor.sandboxHost.hypervisorAddress must be set: the firewall admits only that address to the sandbox ports.";
        }
        {
          assertion = egress.mode != "gateway" || egress.gateway != null;
          message = "services.hypervisor.sandboxHost.egress.mode = \"gateway\" needs egress.gateway, the hypervisor's HYPERVISOR_EGRESS_REMOTE_LISTEN (address:port): without it, use mode \"none\".";
        }
        {
          assertion = ports.from <= ports.to;
          message = "services.hypervisor.sandboxHost.publishedPorts: from (${toString ports.from}) must not be above to (${toString ports.to}).";
        }
        {
          assertion = host.transport != "ssh" || (host.authorizedKeysFile != null && isHostPath host.authorizedKeysFile);
          message = "services.hypervisor.sandboxHost.transport = \"ssh\" needs authorizedKeysFile, an absolute path on this host outside the Nix store holding the hypervisor's public key.";
        }
        {
          assertion = host.transport != "tcp" || (hostApi != null && !isWildcard hostApi.host && !isLoopback hostApi.host);
          message = "services.hypervisor.sandboxHost.transport = \"tcp\" needs apiListen, address:port of a private network (not a wildcard, not loopback): the API has no authentication.";
        }
      ];

      warnings = optional (host.transport == "tcp")
        "services.hypervisor.sandboxHost.transport = \"tcp\": Podman's API (${toString host.apiListen}) has no authentication and no encryption; keep it on a private network only the hypervisor shares, or use ssh.";

      virtualisation.podman.enable = true;
      # The rootful API socket (/run/podman/podman.sock, group podman), started on demand.
      systemd.sockets.podman.wantedBy = [ "sockets.target" ];
      virtualisation.containers.containersConf.settings.containers.default_ulimits = mkIf (!(cfg.enable && usePodman)) (mkDefault [
        "nofile=8192:8192"
      ]);

      networking.firewall.enable = true;
    }

    (mkIf (host.transport == "ssh") {
      users.users.${host.user} = {
        isSystemUser = true;
        group = host.user;
        description = "hypervisor on another machine, driving this host's Podman";
        extraGroups = [ "podman" ];
        # A system user's shell is nologin: a session, had sshd allowed one, would run nothing.
      };
      users.groups.${host.user} = { };
      services.openssh.enable = true;
      # The hypervisor forwards the API socket (ssh's direct-streamlocal channel, as Podman's
      # remote client does) and needs nothing else.
      services.openssh.extraConfig = ''
        Match User ${host.user}
          AuthorizedKeysFile ${toString host.authorizedKeysFile}
          AuthenticationMethods publickey
          AllowStreamLocalForwarding local
          AllowTcpForwarding no
          AllowAgentForwarding no
          X11Forwarding no
          PermitTTY no
          PermitListen none
      '';
    })

    (mkIf (host.transport == "tcp" && hostApi != null) {
      systemd.services.podman-api-tcp = {
        description = "Podman API on ${host.apiListen} for the hypervisor (private network only)";
        wantedBy = [ "multi-user.target" ];
        after = [ "network-online.target" ];
        wants = [ "network-online.target" ];
        serviceConfig = {
          ExecStart = "${config.virtualisation.podman.package}/bin/podman system service --time=0 tcp://${host.apiListen}";
          Restart = "on-failure";
        };
      };
    })

    # Without an address there is nothing to admit; the assertion above says so.
    (mkIf (hostAddress != null && !config.networking.nftables.enable) {
      networking.firewall.extraCommands =
        iptablesRules "iptables" (!ip6Hypervisor) + iptablesRules "ip6tables" ip6Hypervisor
        + egressRules "iptables" false + egressRules "ip6tables" true
        + concatStringsSep "" (map (port: ''
          ${if ip6Hypervisor then "ip6tables" else "iptables"} -w -I nixos-fw -p tcp --dport ${toString port} -s ${hostAddress} -j nixos-fw-accept
        '') apiPorts);
      networking.firewall.extraStopCommands = iptablesStop "iptables" + iptablesStop "ip6tables" + egressStop "iptables" + egressStop "ip6tables";
    })

    (mkIf (hostAddress != null && config.networking.nftables.enable) {
      networking.nftables.tables.${firewallChain} = {
        family = "inet";
        content = ''
          chain published-ports {
            type filter hook prerouting priority mangle; policy accept;
            ${nftMatch} ${if ip6Hypervisor then "ip6" else "ip"} saddr ${toString hostAddress} accept
            ${nftMatch} drop
          }
        '' + nftEgress;
      };
      networking.firewall.extraInputRules = concatStringsSep "\n" (map (port:
        "tcp dport ${toString port} ${if ip6Hypervisor then "ip6" else "ip"} saddr ${toString hostAddress} accept"
      ) apiPorts);
    })
  ]))

  # Wherever sandbox containers run (this machine's Podman, or a sandbox host's): each runs in a
  # user namespace of its own (--userns=auto), its root an unprivileged host uid. Podman takes
  # the ranges from the subordinate ids of the user `containers`.
  (mkIf ((cfg.enable && usePodman) || host.enable) {
    users.users.containers = {
      isSystemUser = true;
      group = "containers";
      description = "subordinate uid and gid ranges of Podman's user namespaces";
      subUidRanges = [ { startUid = 2147483647; count = 2147483648; } ];
      subGidRanges = [ { startGid = 2147483647; count = 2147483648; } ];
    };
    users.groups.containers = { };
  })
  ];
}
