/**
 * The name a new passkey gets until its user renames it: what kind of authenticator holds it
 * (as its transports and backup flag tell), the browser and system it was added from (the
 * User-Agent of the request that added it), and the day; so a list of them says which is
 * which, where "Passkey 1, Passkey 2" said nothing. The user may rename any of them.
 */

const BROWSERS: [RegExp, string][] = [
  [/\bEdg(e|A|iOS)?\//, "Edge"],
  [/\b(Firefox|FxiOS)\//, "Firefox"],
  [/\b(Chrome|Chromium|HeadlessChrome|CriOS)\//, "Chrome"],
  [/\bVersion\/[\d.]+.*Safari\//, "Safari"],
];
// iOS and Android before Linux and macOS: their User-Agents name those too.
const SYSTEMS: [RegExp, string][] = [
  [/\b(iPhone|iPad|iPod)\b/, "iOS"],
  [/\bAndroid\b/, "Android"],
  [/\bCrOS\b/, "ChromeOS"],
  [/\bWindows\b/, "Windows"],
  [/\bMac OS X\b|\bMacintosh\b/, "macOS"],
  [/\bLinux\b/, "Linux"],
];
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

const first = (table: [RegExp, string][], text: string) => table.find(([re]) => re.test(text))?.[1];

function kindOf(transports: readonly string[], backedUp: boolean): string {
  if (backedUp) return "Synced passkey";
  if (transports.length && transports.every((t) => t === "usb" || t === "nfc" || t === "ble")) return "Security key";
  if (transports.length && transports.every((t) => t === "hybrid")) return "Passkey on a phone";
  return "Passkey";
}

/** "Passkey from Chrome on Linux, 7 Dec 2026"; `taken`: the user's other names, which it must differ from. */
export function passkeyName(o: {
  transports: readonly string[];
  backedUp: boolean;
  userAgent: string | undefined;
  at: number;
  taken: readonly string[];
}): string {
  const ua = o.userAgent ?? "";
  const browser = first(BROWSERS, ua);
  const system = first(SYSTEMS, ua);
  const from = browser && system ? `${browser} on ${system}` : (browser ?? system);
  const day = new Date(o.at);
  const date = `${day.getUTCDate()} ${MONTHS[day.getUTCMonth()]!} ${day.getUTCFullYear()}`;
  const name = `${kindOf(o.transports, o.backedUp)}${from ? ` from ${from}` : ""}, ${date}`;
  let unique = name;
  for (let n = 2; o.taken.includes(unique); n++) unique = `${name} (${n})`;
  return unique;
}
