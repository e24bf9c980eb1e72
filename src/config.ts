import { readFile, realpath, stat } from "node:fs/promises";
import path from "node:path";
import ini from "ini";
import { errnoCode, UsageError } from "./errors.js";
import { DURATION_FORMS, parseDuration, parseSize, SIZE_FORMS } from "./units.js";
import { LOG_FORMATS, type LogFormat } from "./log.js";
import { validName } from "./names.js";

export const DEFAULT_CONFIG_PATH = "/etc/scratch_manager.conf";

/** How an image's file name becomes its mount name (plan/naming.ts). */
export const NAMINGS = ["first-dot", "strip-extension"] as const;
export type Naming = (typeof NAMINGS)[number];

/**
 * How datasets are chosen. `adaptive`: planValue over the fast window, then
 * fillSlack (BENCHMARKS.md, section 5). `original`: the Python daemon's rule,
 * the knapsack over the period's rate, +1 MiB/s if cached, so that a site
 * can keep its old behaviour, or compare the two on its own workload.
 */
export const POLICIES = ["adaptive", "original"] as const;
export type PolicyName = (typeof POLICIES)[number];

export type Capacity = { kind: "bytes"; bytes: number } | { kind: "percent"; percent: number };

export interface Config {
  /** Where administrators drop images (shared, slow storage). Real path. */
  datadir: string;
  /** Where cached copies live (local SSD). Real path. */
  cachedir: string;
  /** Where each dataset is mounted, at mountdir/<name>. Real path. */
  mountdir: string;
  capacity: Capacity;
  /** Sliding window of the throughput statistics, seconds. */
  period: number;
  /** Seconds between two ticks of the loop. */
  interval: number;
  naming: Naming;
  /** Seconds a mount or umount may take, and an rsync may go without moving data, before it is cut. */
  commandTimeout: number;
  /** Seconds a scan of datadir or cachedir may take before the directory is taken as not responding. */
  scanTimeout: number;
  /** More than this share (0..1) of the known images vanishing in one scan is held back; undefined: never. */
  vanishShare?: number;
  /** Seconds between two full listings of an unchanged datadir (the safety net of observe/snapshot.ts: unchanged). */
  rescanInterval: number;
  /** Datasets always cached (if they fit) and never evicted. */
  pins: string[];
  /** Where run-time pins are kept (scratch_manager pin). */
  stateDir: string;
  /** Where the status file is written each tick. */
  runtimeDir: string;
  /** Seconds a cached dataset may go unread before it is evicted; 0: never (the original's behaviour). */
  maxIdle: number;
  /** Bytes of the cache file system the cache never fills, counting other programs' files. */
  keepFree: Capacity;
  /** Bytes per second of each copy; 0: unlimited. */
  copyBwlimit: number;
  maxCopies: number;
  /** How datasets are chosen (POLICIES). */
  policy: PolicyName;
  /** Prometheus text file for node_exporter's textfile collector, if set. */
  metricsFile?: string;
  /** HOST:PORT of the HTTP metrics endpoint, if set (checked by parseHostPort). */
  metricsListen?: string;
  /** How log lines are written (LOG_FORMATS): journal, json, or auto (journal under systemd). */
  logFormat: LogFormat;
  /** HOST:PORT this node serves its cached images to peers on; peer fill is off when unset (fleet/). */
  peerListen?: string;
  /** HOST:PORT the other nodes reach this one at, published in its record; from peer_listen and the host name by default. */
  peerAdvertise?: string;
  /** Transfers this node serves to peers at once; more are told 503 (busy). */
  peerUploads: number;
  /** The fleet key, when not datadir/.scratch_manager/peer.key (a local copy, for read-only or root_squash exports). */
  peerKey?: string;
  /** The directory of the peers' records, when not datadir/.scratch_manager/peers. */
  peerDir?: string;
  /** Who may own the records' directories besides root: a uid (a user name is resolved by resolveDirectories). */
  peerDirOwner: number | string;
  verbose: boolean;
}

/** Raw key/value pairs as they come from the file or the flags, before validation. */
export type RawConfig = Partial<Record<ConfigKey, string>>;

export const CONFIG_KEYS = [
  "datadir",
  "cachedir",
  "mountdir",
  "capacity",
  "period",
  "interval",
  "naming",
  "command_timeout",
  "scan_timeout",
  "vanish_threshold",
  "rescan_interval",
  "pin",
  "state_dir",
  "runtime_dir",
  "max_idle",
  "keep_free",
  "copy_bwlimit",
  "max_copies",
  "policy",
  "metrics_file",
  "metrics_listen",
  "log_format",
  "peer_listen",
  "peer_advertise",
  "peer_uploads",
  "peer_key",
  "peer_dir",
  "peer_dir_owner",
] as const;
export type ConfigKey = (typeof CONFIG_KEYS)[number];

const REQUIRED: readonly ConfigKey[] = ["datadir", "cachedir", "mountdir", "capacity"];

const DEFAULT_STATE_DIR = "/var/lib/scratch_manager";
export const DEFAULT_RUNTIME_DIR = "/run/scratch_manager";

/** The original's defaults, kept so that existing files work unchanged. */
const DEFAULTS: RawConfig = {
  period: "1200",
  interval: "5",
  naming: "first-dot",
  command_timeout: "60",
  scan_timeout: "30",
  vanish_threshold: "50%",
  rescan_interval: "1800",
  pin: "",
  state_dir: DEFAULT_STATE_DIR,
  runtime_dir: DEFAULT_RUNTIME_DIR,
  max_idle: "0",
  keep_free: "0",
  copy_bwlimit: "0",
  max_copies: "2",
  policy: "adaptive",
  metrics_file: "",
  metrics_listen: "",
  log_format: "auto",
  peer_listen: "",
  peer_advertise: "",
  peer_uploads: "4",
  peer_key: "",
  peer_dir: "",
  peer_dir_owner: "root",
};

function bad(key: string, value: string, forms: string): UsageError {
  return new UsageError(`config: ${key} = ${JSON.stringify(value)} is not valid; expected ${forms}`);
}

/**
 * The original read its file with Python's configparser, which also accepts
 * "key: value" and ignores the case of keys. Rewrite such lines as
 * "key = value" before `ini` parses them, so that existing files keep working.
 */
function normaliseConfigparser(text: string): string {
  return text
    .split("\n")
    .map((line) => {
      const m = /^(\s*)([^=:;#[\s][^=:]*?)\s*([=:])(.*)$/.exec(line);
      return m ? `${m[1]}${(m[2] as string).toLowerCase()} =${m[4]}` : line;
    })
    .join("\n");
}

/** Parse the file format: INI without a section header (the original prepends one). */
export function parseConfigText(text: string, source: string): RawConfig {
  const parsed: unknown = ini.parse(normaliseConfigparser(text));
  const raw: RawConfig = {};
  for (const [key, value] of Object.entries(parsed as Record<string, unknown>)) {
    if (typeof value === "object" && value !== null) {
      throw new UsageError(`config: ${source}: section [${key}] is not supported; write the keys without a section header`);
    }
    if (!(CONFIG_KEYS as readonly string[]).includes(key)) {
      throw new UsageError(`config: ${source}: unknown key ${JSON.stringify(key)}; known keys are ${CONFIG_KEYS.join(", ")}`);
    }
    raw[key as ConfigKey] = String(value).trim();
  }
  return raw;
}

export function parseCapacity(value: string): Capacity {
  const forms = `${SIZE_FORMS}, or N% of the cache file system (0 < N <= 100)`;
  const pct = /^\s*(\d+(?:\.\d+)?)\s*%\s*$/.exec(value);
  if (pct) {
    const percent = Number(pct[1]);
    if (!(percent > 0 && percent <= 100)) throw bad("capacity", value, forms);
    return { kind: "percent", percent };
  }
  const bytes = parseSize(value);
  if (bytes === undefined || bytes <= 0) throw bad("capacity", value, forms);
  return { kind: "bytes", bytes };
}

function positiveDuration(key: string, value: string): number {
  const seconds = parseDuration(value);
  if (seconds === undefined || !(seconds > 0)) throw bad(key, value, `a positive duration: ${DURATION_FORMS}`);
  return seconds;
}

/** Validate values (pure: no file system). Directories are checked by resolveDirectories. */
export function validateConfig(raw: RawConfig, verbose = false): Config {
  const merged: RawConfig = { ...DEFAULTS, ...raw };
  for (const key of REQUIRED) {
    if (merged[key] === undefined || merged[key] === "") {
      throw new UsageError(`config: missing key ${key}; set it in the config file or with --${key}`);
    }
  }
  const dirs = {} as Record<"datadir" | "cachedir" | "mountdir", string>;
  for (const key of ["datadir", "cachedir", "mountdir"] as const) {
    const value = merged[key] as string;
    if (!path.isAbsolute(value)) throw bad(key, value, key === "datadir" ? "an absolute path to a directory" : "an absolute path to an existing directory");
    dirs[key] = path.resolve(value);
  }
  return {
    ...dirs,
    capacity: parseCapacity(merged.capacity as string),
    period: positiveDuration("period", merged.period as string),
    interval: positiveDuration("interval", merged.interval as string),
    naming: oneOf("naming", merged.naming as string, NAMINGS),
    commandTimeout: positiveDuration("command_timeout", merged.command_timeout as string),
    scanTimeout: positiveDuration("scan_timeout", merged.scan_timeout as string),
    vanishShare: parseVanishThreshold(merged.vanish_threshold as string),
    rescanInterval: positiveDuration("rescan_interval", merged.rescan_interval as string),
    pins: parsePins(merged.pin as string),
    stateDir: absolutePath("state_dir", merged.state_dir as string),
    runtimeDir: absolutePath("runtime_dir", merged.runtime_dir as string),
    maxIdle: nonNegativeDuration("max_idle", merged.max_idle as string),
    keepFree: parseKeepFree(merged.keep_free as string),
    copyBwlimit: parseRate("copy_bwlimit", merged.copy_bwlimit as string),
    maxCopies: parseCount("max_copies", merged.max_copies as string),
    policy: oneOf("policy", (merged.policy as string).trim(), POLICIES),
    metricsFile: merged.metrics_file ? absolutePath("metrics_file", merged.metrics_file) : undefined,
    metricsListen: merged.metrics_listen ? (parseHostPort(merged.metrics_listen, "metrics_listen"), merged.metrics_listen.trim()) : undefined,
    peerListen: merged.peer_listen ? (parseHostPort(merged.peer_listen, "peer_listen"), merged.peer_listen.trim()) : undefined,
    peerAdvertise: merged.peer_advertise ? parseAdvertise(merged.peer_advertise) : undefined,
    peerUploads: parseCount("peer_uploads", merged.peer_uploads as string),
    peerKey: merged.peer_key ? absolutePath("peer_key", merged.peer_key) : undefined,
    peerDir: merged.peer_dir ? absolutePath("peer_dir", merged.peer_dir) : undefined,
    peerDirOwner: parseOwner(merged.peer_dir_owner as string),
    logFormat: oneOf("log_format", (merged.log_format as string).trim(), LOG_FORMATS),
    verbose,
  };
}

function oneOf<T extends string>(key: string, value: string, choices: readonly T[]): T {
  if (!(choices as readonly string[]).includes(value)) throw bad(key, value, choices.join(" or "));
  return value as T;
}

function absolutePath(key: string, value: string): string {
  if (!path.isAbsolute(value)) throw bad(key, value, "an absolute path");
  return path.resolve(value);
}

function nonNegativeDuration(key: string, value: string): number {
  const seconds = parseDuration(value);
  if (seconds === undefined || !(seconds >= 0)) throw bad(key, value, `0 (off) or a duration: ${DURATION_FORMS}`);
  return seconds;
}

/** Names as the daemon mounts them (mountdir/<name>), comma- or space-separated. */
export function parsePins(value: string): string[] {
  const names = value.split(/[,\s]+/).filter((n) => n !== "");
  for (const name of names) {
    const invalid = validName(name);
    if (invalid) throw bad("pin", value, `dataset names separated by commas (${JSON.stringify(name)}: ${invalid})`);
  }
  return [...new Set(names)];
}

function parseKeepFree(value: string): Capacity {
  const pct = /^\s*(\d+(?:\.\d+)?)\s*%\s*$/.exec(value);
  if (pct) {
    const percent = Number(pct[1]);
    if (!(percent >= 0 && percent < 100)) throw bad("keep_free", value, `${SIZE_FORMS}, or N% of the cache file system (0 <= N < 100)`);
    return { kind: "percent", percent };
  }
  const bytes = parseSize(value);
  if (bytes === undefined) throw bad("keep_free", value, `0, ${SIZE_FORMS}, or N% of the cache file system`);
  return { kind: "bytes", bytes };
}

/** vanish_threshold: "50%" (a share of the known images), or "off". */
function parseVanishThreshold(value: string): number | undefined {
  if (value.trim().toLowerCase() === "off") return undefined;
  const pct = /^\s*(\d+(?:\.\d+)?)\s*%\s*$/.exec(value);
  const percent = Number(pct?.[1]);
  if (!pct || !(percent >= 0 && percent < 100)) throw bad("vanish_threshold", value, "N% of the known images (0 <= N < 100), e.g. 50%, or off");
  return percent / 100;
}

/** A rate per second: "200MB" or "200MB/s"; 0 for unlimited. */
function parseRate(key: string, value: string): number {
  const bytes = parseSize(value.replace(/\/s\s*$/i, ""));
  if (bytes === undefined) throw bad(key, value, `0 (unlimited) or bytes per second: ${SIZE_FORMS}, e.g. 200MB`);
  return bytes;
}

function parseCount(key: string, value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 64) throw bad(key, value, "a whole number from 1 to 64");
  return n;
}

/**
 * metrics_listen: "127.0.0.1:9456", "[::1]:9456", ":9456" (every address).
 * Shared with the metrics server, so that what the config accepts is what it binds.
 */
export function parseHostPort(text: string, key = "metrics_listen"): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(text.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw bad(key, text, "HOST:PORT, e.g. 127.0.0.1:9456 or [::1]:9456");
  return { host: m[1] ?? m[2] ?? "", port };
}

/** peer_dir_owner: a uid, or a user name (resolved later, from the passwd database). */
function parseOwner(text: string): number | string {
  const value = text.trim();
  if (/^\d{1,10}$/.test(value) && Number(value) < 2 ** 32) return Number(value);
  if (value === "root") return 0;
  if (/^[a-z_][a-z0-9_.-]{0,31}\$?$/i.test(value)) return value;
  throw bad("peer_dir_owner", text, "a user name or a numeric uid, e.g. nobody or 65534");
}

/** A user name's uid from /etc/passwd (the daemon needs no NSS lookups for this: squashed uids are local users). */
async function uidOf(name: string): Promise<number> {
  const passwd = await readFile("/etc/passwd", "utf8").catch(() => "");
  for (const line of passwd.split("\n")) {
    const [user, , uid] = line.split(":");
    if (user === name && uid !== undefined && /^\d+$/.test(uid)) return Number(uid);
  }
  throw new UsageError(`config: peer_dir_owner = ${JSON.stringify(name)} is not a user of /etc/passwd; expected a user name or a numeric uid, e.g. nobody or 65534`);
}

/** peer_advertise: a HOST:PORT other nodes can connect to (a host name or address, never empty, port not 0). */
function parseAdvertise(text: string): string {
  const { host, port } = parseHostPort(text, "peer_advertise");
  if (host === "" || port === 0 || /^(0\.0\.0\.0|::)$/.test(host)) throw bad("peer_advertise", text, "HOST:PORT the other nodes can reach, e.g. node17.cluster:7823");
  return text.trim();
}

function isInside(child: string, parent: string): boolean {
  const rel = path.relative(parent, child);
  // "..cache" is a child named "..cache", not a way out: compare whole segments.
  return rel === "" || (rel !== ".." && !rel.startsWith(`..${path.sep}`) && !path.isAbsolute(rel));
}

/**
 * cachedir and mountdir must exist, and the three must not overlap: a cache
 * inside the data directory would be taken for images, a mount directory
 * inside either would be listed as files. Paths become real paths, because
 * the kernel reports loop backing files by their real path.
 *
 * datadir is not looked at here: it lives on a file server that may be down
 * (a stat would hang the daemon before it starts) or not mounted yet (an
 * automounter at boot), which is no reason to leave the node unmanaged. The
 * daemon resolves it at each scan, through a child process, and starts
 * anyway when it cannot (observe/snapshot.ts); here it is taken as written.
 */
export async function resolveDirectories(config: Config): Promise<Config> {
  const resolved = { ...config };
  for (const key of ["cachedir", "mountdir"] as const) {
    const value = config[key];
    try {
      const st = await stat(value);
      if (!st.isDirectory()) throw bad(key, value, "an absolute path to an existing directory");
      resolved[key] = await realpath(value);
    } catch (err) {
      if (err instanceof UsageError) throw err;
      throw new UsageError(`config: ${key} = ${JSON.stringify(value)} is not usable (${errnoCode(err) ?? String(err)}); expected an absolute path to an existing directory`);
    }
  }
  checkOverlap(resolved, config);
  if (typeof config.peerDirOwner === "string") resolved.peerDirOwner = await uidOf(config.peerDirOwner);
  return resolved;
}

/** The three directories must be distinct and not nested (resolved: their real paths, as far as known). */
export function checkOverlap(resolved: Pick<Config, "datadir" | "cachedir" | "mountdir">, written: Pick<Config, "datadir" | "cachedir" | "mountdir"> = resolved): void {
  const keys = ["datadir", "cachedir", "mountdir"] as const;
  for (const a of keys) {
    for (const b of keys) {
      if (a !== b && isInside(resolved[a], resolved[b])) {
        throw new UsageError(`config: ${a} = ${JSON.stringify(written[a])} overlaps ${b} = ${JSON.stringify(written[b])}; the three directories must be distinct and not nested`);
      }
    }
  }
}

export interface LoadOptions {
  /** Path given with --config, if any. */
  configPath?: string;
  /** Values given as flags; they override the file. */
  flags: RawConfig;
  verbose: boolean;
}

export async function readConfigFile(file: string, required: boolean): Promise<RawConfig> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    if (!required && errnoCode(err) === "ENOENT") return {};
    throw new UsageError(`config: cannot read ${file} (${errnoCode(err) ?? String(err)}); pass an existing file with --config`);
  }
  return parseConfigText(text, file);
}

/**
 * For the commands other than run (status, pin): the directory named by its
 * flag, else by the config file (the one given, else the default if it
 * exists), else the default, so that they find what the daemon uses
 * without needing the rest of the file to validate.
 */
export async function configuredDir(key: "state_dir" | "runtime_dir", flag: string | undefined, configPath: string | undefined): Promise<string> {
  if (flag) return flag;
  const raw = await readConfigFile(configPath ?? DEFAULT_CONFIG_PATH, configPath !== undefined);
  return raw[key] || (DEFAULTS[key] as string);
}

/** File (explicit, else the default if it exists) + flags -> validated, resolved Config. */
export async function loadConfig(options: LoadOptions): Promise<Config> {
  const fromFile = await readConfigFile(options.configPath ?? DEFAULT_CONFIG_PATH, options.configPath !== undefined);
  const raw: RawConfig = { ...fromFile };
  for (const [key, value] of Object.entries(options.flags)) {
    if (value !== undefined) raw[key as ConfigKey] = value;
  }
  return resolveDirectories(validateConfig(raw, options.verbose));
}
