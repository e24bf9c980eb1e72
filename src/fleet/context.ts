import type { Logger } from "pino";
import type { Runner } from "../lib/exec.js";
import type { Clock } from "../lib/clock.js";
import type { FleetLayout } from "./shared-dir.js";

/** What the parts of peer fill share: how to reach datadir, the time, the log, and where the fleet's files are. */
export interface FleetContext {
  run: Runner;
  logger: Logger;
  /** datadir's one-at-a-time channel (observe/dir-watch.ts): every record and key read or write goes through it. */
  channel: <R>(op: () => Promise<R>, signal?: AbortSignal) => Promise<R>;
  clock: Clock;
  /** Aborted when the daemon stops. */
  lifetime: AbortSignal;
  layout: () => FleetLayout;
  /** A child's deadline: scan_timeout. */
  timeoutMs: () => number;
}
