import { readFile, realpath, stat } from "node:fs/promises";
import path from "node:path";
import ini from "ini";
import { errnoCode, UsageError } from "./errors.js";
import { DURATION_FORMS, parseDuration, parseSize, SIZE_FORMS } from "./units.js";
import { LOG_FORMATS, type LogFormat } from "./log.js";
import { validName } from "./names.js";
import { didYouMean } from "./lib/suggest.js";

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
  /** The node's name in Slurm, to advertise the datasets it holds as node features (src/slurm/features.ts); off when unset. "auto": the host name. */
  slurmNode?: string;
  /** This daemon reads the Slurm queue for the cluster and hands each node the datasets of its coming jobs (src/slurm/stager.ts). */
  slurmStage: "no" | "features" | "yes";
  verbose: boolean;
}

/** Raw key/value pairs as they come from the file or the flags, before validation. */
export type RawConfig = Partial<Record<ConfigKey, string>>;

export type ConfigKey = (typeof CONFIG_TABLE)[number]["key"];


const DEFAULT_STATE_DIR = "/var/lib/scratch_manager";
export const DEFAULT_RUNTIME_DIR = "/run/scratch_manager";


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

/** Where each key of a file was set: "FILE:LINE", for the messages about its value. */
const keyLines = new WeakMap<RawConfig, Map<string, string>>();
/** Keys of a file that this version does not know and ignores (configWarnings). */
const ignoredKeys = new WeakMap<RawConfig, string[]>();

/**
 * Lines that are not "key = value" (nor "key: value", a comment, blank or a
 * section), which `ini` would take as a key set to true: named, with their line.
 */
function checkLines(text: string, source: string): Map<string, string> {
  const lines = new Map<string, string>();
  text.split("\n").forEach((line, i) => {
    const where = `${source}:${i + 1}`;
    const t = line.trim();
    if (t === "" || t.startsWith("#") || t.startsWith(";") || t.startsWith("[")) return;
    const m = /^([^=:]+?)\s*[=:]/.exec(t);
    if (!m) throw new UsageError(`config: ${where}: ${JSON.stringify(t)} is not "key = value"${t.includes(" ") ? `; write ${JSON.stringify(t.replace(/\s+/, " = "))}` : ""}`);
    lines.set((m[1] as string).toLowerCase(), where);
  });
  return lines;
}

/** Parse the file format: INI without a section header (the original prepends one). */
export function parseConfigText(text: string, source: string): RawConfig {
  const lines = checkLines(text, source);
  const parsed: unknown = ini.parse(normaliseConfigparser(text));
  const raw: RawConfig = {};
  const ignored: string[] = [];
  for (const [key, value] of Object.entries(parsed as Record<string, unknown>)) {
    const where = lines.get(key) ?? source;
    if (typeof value === "object" && value !== null) {
      throw new UsageError(`config: ${where}: section [${key}] is not supported; write the keys without a section header`);
    }
    if (!(CONFIG_KEYS as readonly string[]).includes(key)) {
      // A key close to a known one is a typo: refused, since its value would be silently lost. Another
      // is taken for a newer version's key and ignored with a warning, so that an older build (a
      // rollback) still starts on a newer file, as systemd does with unknown settings.
      const hint = didYouMean(key, CONFIG_KEYS);
      if (hint) throw new UsageError(`config: ${where}: unknown key ${JSON.stringify(key)}${hint}`);
      ignored.push(`config: ${where}: unknown key ${JSON.stringify(key)} ignored (a newer version's? see man scratch_manager for this version's keys)`);
      continue;
    }
    raw[key as ConfigKey] = String(value).trim();
  }
  keyLines.set(raw, lines);
  ignoredKeys.set(raw, ignored);
  return raw;
}

/** What a file had that this version ignores, one line each, for the log and `check`. */
export function configWarnings(raw: RawConfig): string[] {
  return ignoredKeys.get(raw) ?? [];
}

/** A message about a key's value ("config: key = ..."), told where the file set it. */
function located(err: unknown, fromFile: RawConfig, flags: RawConfig): unknown {
  if (!(err instanceof UsageError)) return err;
  const m = /^config: ([a-z_]+) = /.exec(err.message);
  const key = m?.[1];
  const where = key === undefined || flags[key as ConfigKey] !== undefined ? undefined : keyLines.get(fromFile)?.get(key);
  return where === undefined ? err : new UsageError(err.message.replace(/^config: /, `config: ${where}: `), err.exitCode);
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
  for (const spec of CONFIG_TABLE) {
    if ("required" in spec && (merged[spec.key] === undefined || merged[spec.key] === "")) {
      throw new UsageError(`config: missing key ${spec.key}; set it in the config file or with --${spec.key}`);
    }
  }
  const values: Partial<Record<keyof Config, unknown>> = { verbose };
  for (const spec of CONFIG_TABLE) values[spec.field] = spec.parse(merged[spec.key] ?? "");
  // Every field but verbose comes from one row of the table (checked by the type below), each parsed to its field's type.
  return values as Config;
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

/** slurm_stage: no; features (the list of features active in the cluster only, for job_submit.lua); yes (that, and pre-staging). */
function parseSlurmStage(text: string): "no" | "features" | "yes" {
  const value = text.trim().toLowerCase();
  if (value === "features") return "features";
  return yesNo("slurm_stage", value) ? "yes" : "no";
}

/** A yes/no key. */
function yesNo(key: string, text: string): boolean {
  const value = text.trim().toLowerCase();
  if (["yes", "true", "on", "1"].includes(value)) return true;
  if (["no", "false", "off", "0"].includes(value)) return false;
  throw bad(key, text, "yes or no");
}

/** slurm_node: a Slurm node name (letters, digits, ".", "_", "-"), or auto (the host name). */
function parseSlurmNode(text: string): string {
  const value = text.trim();
  if (/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(value)) return value;
  throw bad("slurm_node", text, "a Slurm node name (letters, digits, '.', '_', '-'), or auto for the host name");
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
  return (await loadConfigAndWarnings(options)).config;
}

/** loadConfig, and the warnings about the file (keys this version ignores). */
export async function loadConfigAndWarnings(options: LoadOptions): Promise<{ config: Config; warnings: string[] }> {
  const fromFile = await readConfigFile(options.configPath ?? DEFAULT_CONFIG_PATH, options.configPath !== undefined);
  return { config: await loadValidated(fromFile, options), warnings: configWarnings(fromFile) };
}

async function loadValidated(fromFile: RawConfig, options: LoadOptions): Promise<Config> {
  const raw: RawConfig = { ...fromFile };
  for (const [key, value] of Object.entries(options.flags)) {
    if (value !== undefined) raw[key as ConfigKey] = value;
  }
  try {
    return await resolveDirectories(validateConfig(raw, options.verbose));
  } catch (err) {
    throw located(err, fromFile, options.flags);
  }
}

/** One key of the configuration file: the one place it is spelled. */
interface KeySpec<K extends string, F extends keyof Config> {
  key: K;
  field: F;
  /** Its value when the file and the flags say nothing; absent with `required`, or for a key that is then unset. */
  default?: string;
  required?: true;
  /** The command-line flag that sets it, if any (commander's syntax), and its choices. */
  flag?: string;
  choices?: readonly string[];
  /** One line: what it means (--help, the man page). */
  help: string;
  /** Its text (after defaults, "" when unset) to its value; a bad one throws a UsageError naming the key and what is accepted. */
  parse: (value: string) => Config[F];
}

function spec<K extends string, F extends keyof Config>(s: KeySpec<K, F>): KeySpec<K, F> {
  return s;
}

const optional = <T>(value: string, parse: (v: string) => T): T | undefined => (value ? parse(value) : undefined);
const hostPort = (key: string) => (value: string) => (parseHostPort(value, key), value.trim());
const dir = (key: "datadir" | "cachedir" | "mountdir") => (value: string) => {
  if (!path.isAbsolute(value)) throw bad(key, value, key === "datadir" ? "an absolute path to a directory" : "an absolute path to an existing directory");
  return path.resolve(value);
};

/**
 * Every key: its name, the Config field it sets, its default (the
 * original's, where it had the key, so that existing files work unchanged),
 * its flag, what it means and how it is read. The type, the defaults,
 * validation, the flags and the man page's reference all come from here.
 */
export const CONFIG_TABLE = [
  spec({ key: "datadir", field: "datadir", required: true, flag: "--datadir <dir>", help: "directory of dataset images (shared, slow storage)", parse: dir("datadir") }),
  spec({ key: "cachedir", field: "cachedir", required: true, flag: "--cachedir <dir>", help: "directory for cached copies (local, fast storage); files there that belong to no image are deleted", parse: dir("cachedir") }),
  spec({ key: "mountdir", field: "mountdir", required: true, flag: "--mountdir <dir>", help: "directory under which each dataset is mounted at <name>", parse: dir("mountdir") }),
  spec({ key: "capacity", field: "capacity", required: true, flag: "--capacity <size>", help: "cache capacity: NMB, NGB, NTB (powers of 1024), bytes, or N% of the cache file system", parse: parseCapacity }),
  spec({ key: "period", field: "period", default: "1200", flag: "--period <seconds>", help: "sliding window of the read statistics, seconds or a duration (10m, 1h)", parse: (v) => positiveDuration("period", v) }),
  spec({ key: "interval", field: "interval", default: "5", flag: "--interval <seconds>", help: "seconds between two passes of the loop", parse: (v) => positiveDuration("interval", v) }),
  spec({ key: "naming", field: "naming", default: "first-dot", flag: "--naming <rule>", choices: NAMINGS, help: "mount name of an image file: first-dot (coco.2017.sqfs -> coco) or strip-extension (-> coco.2017)", parse: (v) => oneOf("naming", v, NAMINGS) }),
  spec({ key: "command_timeout", field: "commandTimeout", default: "60", help: "seconds a mount or umount may take, and a copy may go without moving data, before it is cut", parse: (v) => positiveDuration("command_timeout", v) }),
  spec({ key: "scan_timeout", field: "scanTimeout", default: "30", help: "seconds a scan of datadir or cachedir may take before the directory is taken as not responding", parse: (v) => positiveDuration("scan_timeout", v) }),
  spec({ key: "vanish_threshold", field: "vanishShare", default: "50%", help: "more than this share of the images vanishing from datadir in one scan is held back as an outage: N% or off", parse: parseVanishThreshold }),
  spec({ key: "rescan_interval", field: "rescanInterval", default: "1800", help: "datadir is listed in full at least this often, even when it did not change", parse: (v) => positiveDuration("rescan_interval", v) }),
  spec({ key: "pin", field: "pins", default: "", help: "datasets always cached (if they fit) and never evicted, comma-separated", parse: parsePins }),
  spec({ key: "state_dir", field: "stateDir", default: DEFAULT_STATE_DIR, help: "where run-time pins and other state are kept", parse: (v) => absolutePath("state_dir", v) }),
  spec({ key: "runtime_dir", field: "runtimeDir", default: DEFAULT_RUNTIME_DIR, help: "where status.json is rewritten each tick", parse: (v) => absolutePath("runtime_dir", v) }),
  spec({ key: "max_idle", field: "maxIdle", default: "0", help: "a cached dataset unread this long is evicted even if it fits; 0: never", parse: (v) => nonNegativeDuration("max_idle", v) }),
  spec({ key: "keep_free", field: "keepFree", default: "0", help: "space of the cache file system the cache never takes, counting other programs' files (50GB, 10%)", parse: parseKeepFree }),
  spec({ key: "copy_bwlimit", field: "copyBwlimit", default: "0", help: "bytes per second of each copy (200MB); 0: unlimited", parse: (v) => parseRate("copy_bwlimit", v) }),
  spec({ key: "max_copies", field: "maxCopies", default: "2", help: "copies running at once", parse: (v) => parseCount("max_copies", v) }),
  spec({ key: "policy", field: "policy", default: "adaptive", help: "how datasets are chosen: adaptive or original", parse: (v) => oneOf("policy", v.trim(), POLICIES) }),
  spec({ key: "metrics_file", field: "metricsFile", default: "", help: "Prometheus text file for node_exporter's textfile collector", parse: (v) => optional(v, (p) => absolutePath("metrics_file", p)) }),
  spec({ key: "metrics_listen", field: "metricsListen", default: "", help: "serve Prometheus metrics at http://HOST:PORT/metrics", parse: (v) => optional(v, hostPort("metrics_listen")) }),
  spec({ key: "log_format", field: "logFormat", default: "auto", help: "journal, json, or auto (journal when standard output is the journal)", parse: (v) => oneOf("log_format", v.trim(), LOG_FORMATS) }),
  spec({ key: "peer_listen", field: "peerListen", default: "", flag: "--peer-listen <host:port>", help: "serve cached images to the other nodes and fill from them (peer_listen; needs the fleet key)", parse: (v) => optional(v, hostPort("peer_listen")) }),
  spec({ key: "peer_advertise", field: "peerAdvertise", default: "", help: "the HOST:PORT other nodes reach this one at", parse: (v) => optional(v, parseAdvertise) }),
  spec({ key: "peer_uploads", field: "peerUploads", default: "4", help: "transfers served to peers at once; more are told 503", parse: (v) => parseCount("peer_uploads", v) }),
  spec({ key: "peer_key", field: "peerKey", default: "", help: "the fleet key, if not datadir/.scratch_manager/peer.key (a local copy, for read-only or root_squash exports)", parse: (v) => optional(v, (p) => absolutePath("peer_key", p)) }),
  spec({ key: "peer_dir", field: "peerDir", default: "", help: "directory of the peers' records, if not datadir/.scratch_manager/peers", parse: (v) => optional(v, (p) => absolutePath("peer_dir", p)) }),
  spec({ key: "peer_dir_owner", field: "peerDirOwner", default: "root", help: "who may own peer_dir besides root: a user name or a uid (nobody for root_squash)", parse: parseOwner }),
  spec({ key: "slurm_node", field: "slurmNode", default: "", help: "advertise the datasets held (cached or copying) to Slurm as features ds_<name> of this node (auto: the host name), for jobs' --prefer; off when empty", parse: (v) => optional(v, parseSlurmNode) }),
  spec({ key: "slurm_stage", field: "slurmStage", default: "no", help: "on one daemon (on slurmctld's host): features writes runtime_dir/slurm-features, the ds_ features active in the cluster, for job_submit.lua; yes also reads the queue and hands each node, over peer fill's signed channel, the datasets of the jobs planned there within the hour", parse: parseSlurmStage }),
] as const;

/** Every field of Config but verbose has its row: a field added without one does not compile. */
type Unspecified = Exclude<keyof Config, "verbose" | (typeof CONFIG_TABLE)[number]["field"]>;
const everyFieldHasARow: [Unspecified] extends [never] ? true : Unspecified = true;
void everyFieldHasARow;

export const CONFIG_KEYS: readonly ConfigKey[] = CONFIG_TABLE.map((s) => s.key);

const DEFAULTS: RawConfig = Object.fromEntries(CONFIG_TABLE.flatMap((s) => ("default" in s ? [[s.key, s.default]] : [])));

/** The keys that have a flag, as commander names its value (--peer-listen -> peerListen). */
export const FLAGGED_KEYS: readonly { key: ConfigKey; flag: string; help: string; choices?: readonly string[]; option: string }[] = CONFIG_TABLE.flatMap((s: KeySpec<ConfigKey, keyof Config>) =>
  s.flag === undefined ? [] : [{ key: s.key, flag: s.flag, help: s.default ? `${s.help} (default ${s.default})` : s.help, choices: s.choices, option: camelCase(s.key) }],
);

function camelCase(key: string): string {
  return key.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
}
