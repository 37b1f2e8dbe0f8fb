export interface OptionSpec {
  name: string;
  /** As shown in help, e.g. `--users a,b`. */
  flag: string;
  help: string;
}

/** Options every command takes: where the operator API is, and how to print. */
export const GLOBAL_OPTIONS: OptionSpec[] = [
  {
    name: "socket",
    flag: "--socket PATH",
    help: "operator unix socket (default: $HYPERVISOR_OPERATOR_SOCKET, else <$HYPERVISOR_STATE_DIR or ./var>/operator.sock)",
  },
  { name: "url", flag: "--url URL", help: "the operator TCP listener instead, e.g. http://127.0.0.1:9090" },
  {
    name: "token-file",
    flag: "--token-file FILE",
    help: "bearer token for --url (default: $HYPERVISOR_OPERATOR_TOKEN_FILE); a token is never taken on the command line",
  },
  { name: "json", flag: "--json", help: "print the API's JSON response, for scripts" },
  { name: "help", flag: "-h, --help", help: "show help (also: hypervisorctl COMMAND --help)" },
];
