/**
 * What a tick found that an administrator should read once in the log: a
 * directory's condition that changed, an image refused, a problem the diff
 * cannot fix, a pin that cannot be honoured.
 */
import type { Logger } from "pino";
import type { DirCondition } from "../plan/availability.js";
import type { Reconciled } from "../plan/reconcile.js";
import type { LogOnce } from "./log-once.js";

/** Refused images and problems: logged once each, and again when they change. */
export function tellNotices(log: Logger, once: LogOnce, notices: NonNullable<Reconciled["notices"]>): void {
  const { refusals, problems, pinProblems } = notices;
  once.report(
    "refused",
    refusals.map((r) => ({ key: r.file, signature: `${r.signature}:${r.reason}`, log: () => log.error({ file: r.file, reason: r.reason }, "image refused") })),
  );
  once.report("problem", [
    ...problems.map((p) => ({ key: p.key, signature: p.message, log: () => log.warn({ dataset: p.dataset, key: p.key }, p.message) })),
    ...pinProblems.map((message) => ({ key: message, signature: message, log: () => log.warn(message) })),
  ]);
}

/** A directory's condition changed: said once. */
export function logCondition(logger: Logger, before: DirCondition, c: DirCondition): void {
  const fields = { dir: c.dir, path: c.path, reason: c.reason };
  if (c.available) {
    // The first scan after start: nothing was wrong.
    if (before.reason === "Starting") return;
    logger.info({ ...fields, outageMs: c.since - before.since, was: before.reason }, `${c.dir} available again`);
    return;
  }
  const doing = c.dir === "datadir" ? "serving what is mounted and cached, changing nothing until it is back" : "changing nothing in the cache until it is back";
  logger.warn({ ...fields, cause: c.message }, `${c.dir} unavailable: ${c.message}; ${doing}`);
}
