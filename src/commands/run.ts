import { FLAGGED_KEYS, loadConfigAndWarnings, type Config, type RawConfig } from "../config.js";
import { Daemon } from "../daemon.js";
import { errorMessage, UsageError } from "../errors.js";
import { createLogger, LogDestination, resolveLogFormat } from "../log.js";
import { formatBytes } from "../units.js";

/** The daemon's flags: --config, --verbose, and a flag for each key of the table that has one (FLAGGED_KEYS), by commander's name for it. */
export interface RunFlags {
  config?: string;
  verbose?: boolean;
  [option: string]: string | boolean | undefined;
}

function describe(config: Config): Record<string, unknown> {
  return {
    datadir: config.datadir,
    cachedir: config.cachedir,
    mountdir: config.mountdir,
    capacity: config.capacity.kind === "bytes" ? formatBytes(config.capacity.bytes) : `${config.capacity.percent}%`,
    period: config.period,
    interval: config.interval,
    naming: config.naming,
    pins: config.pins,
    maxIdle: config.maxIdle,
    maxCopies: config.maxCopies,
    policy: config.policy,
    logFormat: config.logFormat,
    peerListen: config.peerListen,
  };
}

/** How long SIGTERM waits for the loop to end; the unit's TimeoutStopSec is 30 s. */
const STOP_GRACE_MS = 15_000;

/** `scratch_manager [run]`: the daemon. Configuration errors throw UsageError before anything is touched. */
export async function runCommand(flags: RunFlags): Promise<void> {
  const raw: RawConfig = {};
  for (const { key, option } of FLAGGED_KEYS) {
    const value = flags[option];
    if (typeof value === "string") raw[key] = value;
  }
  const loadWithWarnings = () => loadConfigAndWarnings({ configPath: flags.config, flags: raw, verbose: flags.verbose === true });
  const { config, warnings } = await loadWithWarnings();
  const destination = new LogDestination(resolveLogFormat(config.logFormat));
  const logger = createLogger(config.verbose, destination);
  for (const w of warnings) logger.warn(w);
  const load = async () => {
    const loaded = await loadWithWarnings();
    for (const w of loaded.warnings) logger.warn(w);
    return loaded.config;
  };
  // Cache files and mount points are created readable by all, writable by root only.
  process.umask(0o022);
  const daemon = new Daemon({ config, logger });
  logger.info(describe(config), "starting");

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, "stopping");
    void daemon.stop();
    // Whatever is still running then (a mount stuck on a dead server, which
    // the runner abandons after command_timeout) must not keep the unit in
    // "deactivating" past TimeoutStopSec: the mounts stay, the next start adopts them.
    setTimeout(() => {
      logger.warn({ ms: STOP_GRACE_MS }, "not stopped in time; exiting, every mount left in place");
      process.exit(0);
    }, STOP_GRACE_MS).unref();
  };
  // SIGHUP (systemctl reload): the new file applies at the next tick, or is rejected whole.
  const reload = async () => {
    try {
      const next = await load();
      // Against the file as first loaded: the daemon has since resolved datadir to its real path.
      for (const key of ["datadir", "cachedir", "mountdir"] as const) {
        if (next[key] !== config[key]) {
          throw new UsageError(`config: ${key} cannot change on reload (${config[key]} -> ${next[key]}); restart the service to move it`);
        }
      }
      daemon.reconfigure(next);
      destination.format = resolveLogFormat(next.logFormat);
      logger.info(describe(next), "configuration reloaded");
    } catch (err) {
      logger.error({ err: errorMessage(err) }, "configuration reload rejected; keeping the current one");
    }
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  process.on("SIGHUP", () => void reload());
  process.on("SIGUSR1", () => daemon.logCacheBytes());
  // SIGUSR2: `scratch_manager evict` or `release` left a request (state/requests.ts).
  process.on("SIGUSR2", () => daemon.wake());

  await daemon.init();
  const loop = daemon.runLoop();
  await loop;
  await daemon.stop();
  daemon.logCacheBytes();
  logger.info("stopped");
}
