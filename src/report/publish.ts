/**
 * Publishing a tick's report: the status file, the metrics (file and
 * listener), systemd's STATUS= and watchdog. A failure of one is logged once
 * (and again when it changes) and never stops the loop or the others.
 */
import type { Logger } from "pino";
import type { Notifier } from "../act/notify.js";
import type { Config } from "../config.js";
import { errorMessage } from "../errors.js";
import { formatBytes } from "../units.js";
import { countStates } from "./build.js";
import type { LogOnce } from "./log-once.js";
import { Metrics } from "./metrics.js";
import type { StatusReport } from "./status.js";
import { statusBody, writeStatusFile } from "./status-file.js";

export class Publisher {
  private readonly metrics = new Metrics();
  private metricsServer?: { close(): Promise<void>; port: number; listen: string };
  /** The status file's body (all but the per-tick fields) for the report of `key`. */
  private body?: { key: string; json: string };

  constructor(
    private readonly logger: Logger,
    private readonly notifier: Notifier,
    private readonly once: LogOnce,
  ) {}

  /** @param bodyKey names a report whose body does not change (a run of quiet ticks): serialized once. */
  async publish(report: StatusReport, config: Config, bodyKey?: string): Promise<void> {
    // Each tick's report sets a few series per dataset: not done when nobody reads them.
    if (config.metricsFile || config.metricsListen) this.metrics.update(report);
    await Promise.all([
      this.attempt("status file", () => writeStatusFile(config.runtimeDir, report, this.bodyFor(report, bodyKey))),
      this.attempt("metrics file", async () => {
        if (config.metricsFile) await this.metrics.writeFile(config.metricsFile);
      }),
      this.attempt("metrics listener", () => this.ensureMetricsServer(config.metricsListen)),
      this.attempt("systemd notify", () => this.notifier.sendChanged({ READY: "1", STATUS: summary(report), WATCHDOG: "1" })),
    ]);
  }

  /** systemd shows "deactivating" with this status while the daemon stops. */
  async stopping(status: string): Promise<void> {
    await this.attempt("systemd notify", () => this.notifier.send({ STOPPING: "1", STATUS: status }));
  }

  async close(): Promise<void> {
    const server = this.metricsServer;
    this.metricsServer = undefined;
    await server?.close();
  }

  /** Runs `fn`; a failure is logged once per message under `what`, and forgotten once `what` succeeds. */
  async attempt(what: string, fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
      this.once.report(`publish:${what}`, []);
    } catch (err) {
      const message = errorMessage(err);
      this.once.report(`publish:${what}`, [{ key: what, signature: message, log: () => this.logger.error({ err: message }, `${what} failed`) }]);
    }
  }

  /**
   * The status file's stable part, serialized once for a run of quiet ticks
   * (10,000 datasets make megabytes of JSON: once, not every tick).
   */
  private bodyFor(report: StatusReport, key: string | undefined): string | undefined {
    if (key === undefined) return undefined;
    if (this.body?.key !== key) this.body = { key, json: statusBody(report) };
    return this.body.json;
  }

  private async ensureMetricsServer(want: string | undefined): Promise<void> {
    if (this.metricsServer?.listen === want) return;
    await this.close();
    if (want === undefined) return;
    const server = await this.metrics.listen(want, this.logger);
    this.metricsServer = { ...server, listen: want };
    this.logger.info({ listen: want, port: server.port }, "serving metrics");
  }
}

/** systemd's STATUS= line: storage trouble first, then the mounting progress, the datasets and the cache. */
export function summary(report: StatusReport): string {
  const { cached, copying } = countStates(report);
  const pct = report.cache.capacityBytes > 0 ? Math.round((100 * report.cache.usedBytes) / report.cache.capacityBytes) : 0;
  const conditions = report.storage ? [report.storage.datadir, report.storage.cachedir] : [];
  const trouble = conditions
    .filter((c) => !c.available && c.reason !== "Starting")
    .map((c) => `${c.dir} unavailable (${c.message}), holding: `)
    .join("");
  const mounting = report.mounting ? `mounting ${report.mounting.mounted} of ${report.mounting.total}, ` : "";
  return `${trouble}${mounting}${report.datasets.length} datasets, ${cached} cached, ${copying} copying, ${pct}% of ${formatBytes(report.cache.capacityBytes)}`;
}
