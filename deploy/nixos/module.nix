# services.hypervisor: the hypervisor daemon on NixOS.
#
# Every option but enable/package/environmentFile/openFirewall maps to exactly one HYPERVISOR_*
# variable of the config module (DESIGN §10); test/deploy/nix.test.ts holds the two lists
# together. Secrets only arrive as paths to files the host provides (LoadCredential= or an
# EnvironmentFile= outside the store); no option accepts a secret value, so none can be copied
# into the world-readable Nix store.
#
# The hardening mirrors deploy/systemd/hypervisor.service (exposure 1.2 by
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

  # Variables a sandbox receives from the hypervisor itself (DESIGN §3); extra environment
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
  # Neither inside the other: a sandbox sees its data dir, never the state beside it (DESIGN §5a).
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
    HYPERVISOR_REGISTRATION = cfg.registration;
    HYPERVISOR_START_TIMEOUT_MS = toString cfg.startTimeoutMs;
    HYPERVISOR_IDLE_STOP_MS = toString cfg.idleStopMs;
    HYPERVISOR_MAX_SANDBOXES = toString cfg.maxSandboxes;
    HYPERVISOR_DRAIN_MS = toString cfg.drainMs;
    HYPERVISOR_ROLLBACK_DEADLINE_MS = toString cfg.rollbackDeadlineMs;
    HYPERVISOR_KNOWN_GOOD_AFTER_MS = toString cfg.knownGoodAfterMs;
    HYPERVISOR_LOG_LEVEL = cfg.logLevel;
    HYPERVISOR_SHUTDOWN_GRACE_MS = toString cfg.shutdownGraceMs;
    HYPERVISOR_PROCESS_UNCONTAINED = if cfg.processUncontained then "accept" else null;
    HYPERVISOR_TRUSTED_PROXIES =
      if cfg.trustedProxies == [ ] then null else concatStringsSep "," cfg.trustedProxies;
  };

  # systemd expands %-specifiers in Environment= values (systemd.unit(5) "Specifiers") and NixOS
  # writes them as given, so a literal % (a sandbox variable "50%", a %-encoded origin) is
  # doubled. The token path is the one value that means its specifier (%d).
  escapedEnvironment = mapAttrs (
    name: value:
    if value == null || name == "HYPERVISOR_OPERATOR_TOKEN_FILE" then
      value
    else
      replaceStrings [ "%" ] [ "%%" ] value
  ) environment;

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
  cpusValue = if builtins.isInt cfg.sandbox.cpus then cfg.sandbox.cpus else parseDecimal cfg.sandbox.cpus;
  nanoCpus = roundHalfUp (cpusValue * 1.0e9);
  minNanoCpus = 10000000;

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

    drainMs = milliseconds 30000 "Grace for WebSockets on the old target after a swap, in ms (HYPERVISOR_DRAIN_MS).";
    rollbackDeadlineMs = boundedMilliseconds 100 3600000 10000 "A rollback finishes or fails within this many ms (HYPERVISOR_ROLLBACK_DEADLINE_MS).";
    startTimeoutMs = boundedMilliseconds 100 3600000 30000 "Wait this many ms for a sandbox to become healthy (HYPERVISOR_START_TIMEOUT_MS).";
    idleStopMs = boundedMilliseconds 0 maxSafeInteger 1800000 "Stop a sandbox idle this many ms; 0 = never (HYPERVISOR_IDLE_STOP_MS).";
    knownGoodAfterMs = boundedMilliseconds 0 maxSafeInteger 600000 "Healthy live time in ms before a generation is known-good (HYPERVISOR_KNOWN_GOOD_AFTER_MS).";
    shutdownGraceMs = milliseconds 10000 "On stop, in-flight HTTP requests get this many ms to finish before their connections are cut (HYPERVISOR_SHUTDOWN_GRACE_MS); TimeoutStopSec follows it.";

    maxSandboxes = mkOption {
      type = types.ints.between 1 100000;
      default = 200;
      description = "Running sandboxes at most (HYPERVISOR_MAX_SANDBOXES).";
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
  };

  config = mkIf cfg.enable (mkMerge [
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
          "services.hypervisor.runtime = \"process\": this unit's hardening (RestrictNamespaces=, no capabilities) leaves bubblewrap no room, so sandboxes run uncontained with the daemon's uid (processUncontained is needed with open registration); use it for development only.";

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
        # A crash loop stops after 5 starts in 5 minutes and pages a human (RUNBOOK).
        startLimitIntervalSec = 300;
        startLimitBurst = 5;

        environment = escapedEnvironment // {
          NODE_ENV = "production";
        };

        serviceConfig = {
          Type = "exec";
          ExecStart = "${cfg.package}/bin/hypervisor";
          # Socket activation (DESIGN §7a): the listeners outlive the daemon, so a restart
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
          # them by label (DESIGN §7). Podman containers live in podman's cgroup anyway; the
          # process runtime's children are detached but stay in this unit's cgroup and would
          # be killed on every stop or restart by the default control-group mode.
          KillMode = "process";
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
          ProcSubset = "pid";
          ProtectKernelTunables = true;
          ProtectKernelModules = true;
          ProtectKernelLogs = true;
          ProtectControlGroups = true;
          ProtectClock = true;
          ProtectHostname = true;

          NoNewPrivileges = true;
          # No capability: unprivileged port, group-accessible Podman socket.
          CapabilityBoundingSet = "";
          AmbientCapabilities = "";
          RestrictSUIDSGID = true;
          LockPersonality = true;
          RestrictRealtime = true;
          RestrictNamespaces = true;
          # Only root and this user are mapped; group checks on the Podman socket still use
          # the host credentials, so its access keeps working.
          PrivateUsers = true;
          RemoveIPC = true;
          # V8's JIT writes then executes code pages: MemoryDenyWriteExecute=yes crashes node.
          MemoryDenyWriteExecute = false;

          # AF_UNIX: Podman API and operator sockets; AF_INET/6: listeners and sandbox ports.
          RestrictAddressFamilies = [
            "AF_UNIX"
            "AF_INET"
            "AF_INET6"
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
        // optionalAttrs (cfg.operatorTokenFile != null) {
          # systemd.exec(5) "Credentials": a private, non-swappable copy for this unit only.
          LoadCredential = "operator-token:${cfg.operatorTokenFile}";
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
  ]);
}
