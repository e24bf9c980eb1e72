import http from "node:http";
import type { AddressInfo } from "node:net";
import type { Logger } from "pino";
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import { parseHostPort } from "../config.js";
import { errorMessage } from "../errors.js";
import { writeFileAtomic } from "../lib/atomic-file.js";
import type { DirName, DirReason } from "../plan/availability.js";
import type { DatasetState, DatasetStatus, StatusReport } from "./status.js";
import { IGNORED_REASONS } from "../fleet/records.js";

const PREFIX = "scratch_manager_";

/** Every state, checked by the compiler: a new DatasetState must be added here, or this does not build. */
const STATE_SET: Record<DatasetState, true> = { slow: true, queued: true, copying: true, cached: true };
const STATES = Object.keys(STATE_SET) as DatasetState[];

/** Every reason, checked by the compiler as STATE_SET is. */
const DIR_REASON_SET: Record<DirReason, true> = { Starting: true, Available: true, NotResponding: true, IOError: true, Missing: true, FilesystemChanged: true, MassDisappearance: true };
const DIR_REASONS = Object.keys(DIR_REASON_SET) as DirReason[];

const TIERS = ["slow", "cache"] as const;
type Tier = (typeof TIERS)[number];

/** The cache device's conditions (plan/cache-device.ts). */
const CACHE_DEVICE_REASONS = ["Working", "CacheDeviceFailing", "ReadOnly"] as const;

/** From a tick that only lists directories (ms) to one that probes many new images (s). */
const TICK_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export interface MetricsOptions {
  /**
   * Also export Node's process metrics (CPU, memory, event loop lag),
   * named scratch_manager_process_* so that they do not collide with
   * node_exporter's own process_* when read through its textfile collector.
   */
  processMetrics?: boolean;
}

export interface MetricsServer {
  /** The port actually bound (useful with port 0). */
  port: number;
  close(): Promise<void>;
}

/**
 * How much a cumulative total grew since the previous report. Totals restart
 * from 0 when the daemon restarts, or may when a dataset leaves and comes
 * back: a total below the previous one is then counted whole, never as a
 * negative increase (which a Prometheus counter cannot take).
 */
export function growth(previous: number | undefined, current: number): number {
  if (previous === undefined || current < previous) return Math.max(0, current);
  return current - previous;
}

interface Totals {
  slow: number;
  cache: number;
}

type Copies = StatusReport["copies"];

/**
 * The status report as Prometheus metrics, in a registry of its own (no
 * global state: tests and a reload can make a fresh one). `update` is
 * called once per tick with the new report; gauges are set, counters are
 * increased by what the report's cumulative totals grew.
 */
export class Metrics {
  readonly registry = new Registry();

  private readonly readBytes: Counter<"dataset" | "tier">;
  private readonly sizeBytes: Gauge<"dataset">;
  private readonly state: Gauge<"dataset" | "state">;
  private readonly pinned: Gauge<"dataset">;
  private readonly readRate: Gauge<"dataset" | "tier">;
  private readonly cacheUsed: Gauge;
  private readonly cacheCapacity: Gauge;
  private readonly cacheGhost: Gauge;
  private readonly cacheFsSize: Gauge;
  private readonly cacheFsFree: Gauge;
  private readonly copiesStarted: Counter;
  private readonly copiesFinished: Counter;
  private readonly copiesFailed: Counter;
  private readonly copiesCancelled: Counter;
  private readonly copyBytes: Counter;
  private readonly refusedImages: Gauge;
  private readonly cacheBytesServed: Counter;
  private readonly tickDuration: Histogram;
  private readonly lastUpdate: Gauge;
  private readonly dirUp: Record<DirName, Gauge>;
  private readonly dirLastScan: Record<DirName, Gauge>;
  private readonly dirReason: Gauge<"dir" | "reason">;
  private readonly cacheDeviceUp: Gauge;
  private readonly slowLayersDead: Gauge;
  private readonly stagedDatasets: Gauge;
  private readonly stageHits: Counter;
  private readonly stageMisses: Counter;
  private previousStage = { hits: 0, misses: 0 };
  private readonly cacheDeviceCondition: Gauge<"reason">;
  private readonly cacheDeviceSmart: Gauge<"verdict">;
  private readonly slowLayersFound: Counter;
  private previousSlowFound = 0;
  private readonly problems: Gauge;
  private readonly peerEnabled: Gauge;
  private readonly peerConfigured: Gauge;
  private readonly peersLive: Gauge;
  private readonly peerServing: Gauge;
  private readonly peerFillBytes: Counter<"source">;
  private readonly peerServedBytes: Counter;
  private readonly peerRefused: Counter<"reason">;
  private readonly peerMismatches: Counter;
  private readonly peerConflicts: Counter;
  private readonly peerRecordsIgnored: Counter<"reason">;
  private readonly peerRecordsFailing: Gauge;
  private previousPeers?: NonNullable<StatusReport["peers"]>["counters"];

  /** The previous report's totals, per dataset, to turn totals into increments. */
  private readonly previousRead = new Map<string, Totals>();
  private previousCopies: Copies = { started: 0, finished: 0, failed: 0, cancelled: 0, bytes: 0 };
  private previousServed = 0;
  private previousTick: number | undefined;

  constructor(options: MetricsOptions = {}) {
    const registers = [this.registry];
    const gauge = (name: string, help: string): Gauge => new Gauge({ name: PREFIX + name, help, registers });
    const counter = (name: string, help: string): Counter => new Counter({ name: PREFIX + name, help, registers });

    this.readBytes = new Counter({
      name: `${PREFIX}dataset_read_bytes_total`,
      help: "Bytes read from a dataset through each tier (slow: the image on shared storage, cache: the local copy).",
      labelNames: ["dataset", "tier"],
      registers,
    });
    this.sizeBytes = new Gauge({ name: `${PREFIX}dataset_size_bytes`, help: "Size of the dataset's image.", labelNames: ["dataset"], registers });
    this.state = new Gauge({
      name: `${PREFIX}dataset_state`,
      help: `1 for the dataset's current state, 0 for the others (${STATES.join(", ")}).`,
      labelNames: ["dataset", "state"],
      registers,
    });
    this.pinned = new Gauge({ name: `${PREFIX}dataset_pinned`, help: "1 if the dataset is pinned in the cache.", labelNames: ["dataset"], registers });
    this.readRate = new Gauge({
      name: `${PREFIX}dataset_read_rate_bytes_per_second`,
      help: "Read throughput of the dataset through each tier over the statistics window, as the cache policy sees it.",
      labelNames: ["dataset", "tier"],
      registers,
    });
    this.cacheUsed = gauge("cache_used_bytes", "Bytes of the cached copies and of the running copies' targets.");
    this.cacheCapacity = gauge("cache_capacity_bytes", "Most bytes the cached copies may take.");
    this.cacheGhost = gauge("cache_ghost_bytes", "Bytes of dropped copies still held open by readers.");
    this.cacheFsSize = gauge("cache_fs_size_bytes", "Size of the file system holding the cache directory.");
    this.cacheFsFree = gauge("cache_fs_free_bytes", "Free bytes on the file system holding the cache directory.");
    this.copiesStarted = counter("copies_started_total", "Copies to the cache started.");
    this.copiesFinished = counter("copies_finished_total", "Copies to the cache finished.");
    this.copiesFailed = counter("copies_failed_total", "Copies to the cache that failed.");
    this.copiesCancelled = counter("copies_cancelled_total", "Copies to the cache cancelled (dataset gone or no longer wanted, daemon stopping).");
    this.copyBytes = counter("copy_bytes_total", "Bytes written to the cache by copies.");
    this.refusedImages = gauge("refused_images", "Files in the data directory refused as images.");
    this.cacheBytesServed = counter("cache_bytes_served_total", "Bytes read from cached copies, all datasets.");
    this.peerEnabled = gauge("peer_fill_enabled", "1 when peer fill is on (peer_listen set and the fleet key usable).");
    this.peerConfigured = gauge("peer_fill_configured", "1 when peer_listen is set (peer fill wanted), whether or not it is on.");
    this.peersLive = gauge("peers_live", "Other nodes whose peer record is fresh.");
    this.peerServing = gauge("peer_transfers_serving", "Transfers this node is serving to peers now.");
    this.peerFillBytes = new Counter({
      name: `${PREFIX}peer_fill_bytes_total`,
      help: "Bytes of finished copies, by where they came from: source=peer (other nodes) or source=server (the file server).",
      labelNames: ["source"],
      registers,
    });
    this.peerServedBytes = counter("peer_served_bytes_total", "Bytes this node sent to peers.");
    this.peerRefused = new Counter({
      name: `${PREFIX}peer_refused_total`,
      help: "Peer requests this node refused: reason=busy (no slot free), auth (key), unknown (an image it does not hold).",
      labelNames: ["reason"],
      registers,
    });
    this.peerMismatches = counter("peer_checksum_mismatches_total", "Copies from peers discarded because their SHA-256 did not match the image's.");
    this.peerConflicts = counter("peer_checksum_conflicts_total", "Images for which two different checksums signed with the fleet key were seen (a node with the key lies, or the image changed within a second); neither was used.");
    this.peerRecordsIgnored = new Counter({
      name: `${PREFIX}peer_records_ignored_total`,
      help: "Peer records ignored, each counted once: reason=unsigned, bad_signature, too_large, future, too_many_images, malformed.",
      labelNames: ["reason"],
      registers,
    });
    this.peerRecordsFailing = gauge("peer_records_failing", "1 while this node cannot publish or read the peer records (a read-only or unreachable peer_dir).");
    for (const reason of IGNORED_REASONS) this.peerRecordsIgnored.inc({ reason }, 0);
    // Every label value at 0 from the start: a rate() over a series that appears later misses its first increase.
    for (const source of ["peer", "server"]) this.peerFillBytes.inc({ source }, 0);
    for (const reason of ["busy", "auth", "unknown"]) this.peerRefused.inc({ reason }, 0);
    this.tickDuration = new Histogram({
      name: `${PREFIX}tick_duration_seconds`,
      help: "Time one pass of the loop took.",
      buckets: TICK_BUCKETS,
      registers,
    });
    this.lastUpdate = gauge("status_timestamp_seconds", "When the daemon wrote the status these metrics come from (Unix time), to alert on a stuck daemon.");
    this.problems = gauge("problems", "Conditions listed under problems in scratch_manager status (pins that do not fit, pins of unknown datasets, name conflicts, ...), to alert on.");

    this.dirUp = {
      datadir: gauge("datadir_up", "1 when the last scan of the data directory (shared storage) was believed, 0 while it is unavailable (not answering, I/O errors, another file system, images vanished)."),
      cachedir: gauge("cachedir_up", "1 when the last scan of the cache directory was believed, 0 while it is unavailable."),
    };
    this.dirLastScan = {
      datadir: gauge("datadir_last_scan_timestamp_seconds", "When a scan of the data directory was last believed (Unix time)."),
      cachedir: gauge("cachedir_last_scan_timestamp_seconds", "When a scan of the cache directory was last believed (Unix time)."),
    };
    this.cacheDeviceUp = gauge("cache_device_up", "1 while reads of the cache device succeed, 0 while it fails (its cache mounts are taken off; jobs read the slow tier).");
    this.cacheDeviceCondition = new Gauge({
      name: `${PREFIX}cache_device_condition`,
      help: `1 for the cache device's current condition, 0 for the others (${CACHE_DEVICE_REASONS.join(", ")}).`,
      labelNames: ["reason"],
      registers,
    });
    this.cacheDeviceSmart = new Gauge({
      name: `${PREFIX}cache_device_smart`,
      help: "1 for the cache device's SMART verdict (systeminformation, read hourly), 0 for the others (ok, predicted-failure, unknown: also before the first read).",
      labelNames: ["verdict"],
      registers,
    });
    this.stagedDatasets = gauge("staged_datasets", "Datasets staged for jobs the Slurm scheduler plans to start on this node soon (pre-staging, slurm_stage on one daemon).");
    this.stageHits = counter("stage_hits_total", "Staged datasets that were cached when their job was due to start.");
    this.stageMisses = counter("stage_misses_total", "Staged datasets that were not cached when their job was due to start (no room, the copy too slow, the image refused).");
    this.slowLayersDead = gauge("slow_layers_dead", "Slow layers whose reads fail while their image in datadir reads (a dead file handle after the file server reconnected), not yet attached again.");
    this.slowLayersFound = counter("slow_layers_dead_found_total", "Slow layers found dead since start; each is attached again from datadir (at once, or when its cache layer comes off).");
    this.dirReason = new Gauge({
      name: `${PREFIX}directory_condition`,
      help: `1 for the current reason of each directory's condition, 0 for the others (${DIR_REASONS.join(", ")}).`,
      labelNames: ["dir", "reason"],
      registers,
    });

    if (options.processMetrics === true) collectDefaultMetrics({ register: this.registry, prefix: PREFIX });
  }

  /** Apply one tick's report. */
  update(report: StatusReport): void {
    const present = new Set<string>();
    for (const d of report.datasets) {
      present.add(d.name);
      this.updateDataset(d);
    }
    for (const name of [...this.previousRead.keys()]) {
      if (!present.has(name)) this.removeDataset(name);
    }

    const { cache } = report;
    this.cacheUsed.set(cache.usedBytes);
    this.cacheCapacity.set(cache.capacityBytes);
    this.cacheGhost.set(cache.ghostBytes);
    this.cacheFsSize.set(cache.fsTotalBytes);
    this.cacheFsFree.set(cache.fsFreeBytes);
    this.refusedImages.set(report.refused.length);

    const was = this.previousCopies;
    const now = report.copies;
    this.copiesStarted.inc(growth(was.started, now.started));
    this.copiesFinished.inc(growth(was.finished, now.finished));
    this.copiesFailed.inc(growth(was.failed, now.failed));
    this.copiesCancelled.inc(growth(was.cancelled, now.cancelled));
    this.copyBytes.inc(growth(was.bytes, now.bytes));
    this.previousCopies = { ...now };

    this.cacheBytesServed.inc(growth(this.previousServed, report.cacheBytesServed));
    this.previousServed = report.cacheBytesServed;

    // The daemon may write the same tick's report twice (e.g. on a signal); observe each tick once.
    if (report.tick.count !== this.previousTick) {
      this.tickDuration.observe(report.tick.ms / 1000);
      this.previousTick = report.tick.count;
    }
    this.lastUpdate.set(report.writtenAt / 1000);

    for (const c of [report.storage?.datadir, report.storage?.cachedir]) {
      if (!c) continue;
      this.dirUp[c.dir].set(c.available ? 1 : 0);
      if (c.lastGoodScanAt !== undefined) this.dirLastScan[c.dir].set(c.lastGoodScanAt / 1000);
      for (const reason of DIR_REASONS) this.dirReason.set({ dir: c.dir, reason }, reason === c.reason ? 1 : 0);
    }
    this.problems.set(report.problems.length);
    this.cacheDeviceUp.set(report.cacheDevice?.up === false ? 0 : 1);
    for (const reason of CACHE_DEVICE_REASONS) this.cacheDeviceCondition.set({ reason }, reason === (report.cacheDevice?.reason ?? "Working") ? 1 : 0);
    // Unknown until the first read (an hour's wait at most, observe/device-health.ts).
    const smart = report.cacheDevice?.health?.smart ?? "unknown";
    for (const verdict of ["ok", "predicted-failure", "unknown"]) this.cacheDeviceSmart.set({ verdict }, verdict === smart ? 1 : 0);
    this.slowLayersDead.set(report.slowLayers?.dead ?? 0);
    this.stagedDatasets.set(report.datasets.filter((d) => d.staged !== undefined).length);
    const stage = report.staging ?? { hits: 0, misses: 0 };
    this.stageHits.inc(growth(this.previousStage.hits, stage.hits));
    this.stageMisses.inc(growth(this.previousStage.misses, stage.misses));
    this.previousStage = { hits: stage.hits, misses: stage.misses };
    this.slowLayersFound.inc(growth(this.previousSlowFound, report.slowLayers?.foundTotal ?? 0));
    this.previousSlowFound = report.slowLayers?.foundTotal ?? 0;

    const peers = report.peers;
    this.peerConfigured.set(peers ? 1 : 0);
    if (peers) {
      const was = this.previousPeers ?? { fromPeersBytes: 0, fromServerBytes: 0, servedBytes: 0, refusedBusy: 0, refusedAuth: 0, refusedUnknown: 0, checksumMismatches: 0, checksumConflicts: 0, recordsIgnored: {} };
      const c = peers.counters;
      this.peerEnabled.set(peers.enabled ? 1 : 0);
      this.peersLive.set(peers.peersLive);
      this.peerServing.set(peers.serving);
      this.peerFillBytes.inc({ source: "peer" }, growth(was.fromPeersBytes, c.fromPeersBytes));
      this.peerFillBytes.inc({ source: "server" }, growth(was.fromServerBytes, c.fromServerBytes));
      this.peerServedBytes.inc(growth(was.servedBytes, c.servedBytes));
      this.peerRefused.inc({ reason: "busy" }, growth(was.refusedBusy, c.refusedBusy));
      this.peerRefused.inc({ reason: "auth" }, growth(was.refusedAuth, c.refusedAuth));
      this.peerRefused.inc({ reason: "unknown" }, growth(was.refusedUnknown, c.refusedUnknown));
      this.peerMismatches.inc(growth(was.checksumMismatches, c.checksumMismatches));
      this.peerConflicts.inc(growth(was.checksumConflicts ?? 0, c.checksumConflicts ?? 0));
      for (const reason of IGNORED_REASONS) this.peerRecordsIgnored.inc({ reason }, growth(was.recordsIgnored?.[reason] ?? 0, c.recordsIgnored?.[reason] ?? 0));
      this.peerRecordsFailing.set(peers.recordsProblem ? 1 : 0);
      this.previousPeers = { ...c, recordsIgnored: { ...c.recordsIgnored } };
    }
  }

  private updateDataset(d: DatasetStatus): void {
    const dataset = d.name;
    const was = this.previousRead.get(dataset);
    const totals: Totals = { slow: d.slowBytesRead, cache: d.cacheBytesRead };
    const rates: Record<Tier, number> = { slow: d.slowBytesPerSecond, cache: d.cacheBytesPerSecond };
    for (const tier of TIERS) {
      // inc by 0 too: the series exists from the dataset's first report, so rate() sees its start.
      this.readBytes.inc({ dataset, tier }, growth(was?.[tier], totals[tier]));
      this.readRate.set({ dataset, tier }, rates[tier]);
    }
    this.previousRead.set(dataset, totals);
    this.sizeBytes.set({ dataset }, d.sizeBytes);
    for (const state of STATES) this.state.set({ dataset, state }, state === d.state ? 1 : 0);
    this.pinned.set({ dataset }, d.pinned ? 1 : 0);
  }

  /** A dataset gone from the report (image deleted) loses its series, so dashboards do not show it forever. */
  private removeDataset(dataset: string): void {
    for (const tier of TIERS) {
      this.readBytes.remove({ dataset, tier });
      this.readRate.remove({ dataset, tier });
    }
    for (const state of STATES) this.state.remove({ dataset, state });
    this.sizeBytes.remove({ dataset });
    this.pinned.remove({ dataset });
    this.previousRead.delete(dataset);
  }

  /** The exposition text (Prometheus text format 0.0.4). */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  /**
   * Write the metrics to `file` atomically, mode 0644, for node_exporter's
   * textfile collector (which reads *.prom files of its directory and must
   * never see half a file).
   */
  async writeFile(file: string): Promise<void> {
    await writeFileAtomic(file, await this.text(), 0o644);
  }

  /** Serve GET /metrics on `hostPort` ("127.0.0.1:9456"; port 0 picks a free one). */
  async listen(hostPort: string, logger?: Logger): Promise<MetricsServer> {
    const { host, port } = parseHostPort(hostPort);
    const server = http.createServer((req, res) => {
      const pathname = new URL(req.url ?? "/", "http://localhost").pathname;
      if (pathname !== "/metrics") {
        res.writeHead(404, { "Content-Type": "text/plain; charset=utf-8" }).end("not found; metrics are at /metrics\n");
        return;
      }
      if (req.method !== "GET" && req.method !== "HEAD") {
        res.writeHead(405, { Allow: "GET, HEAD", "Content-Type": "text/plain; charset=utf-8" }).end("method not allowed\n");
        return;
      }
      this.text().then(
        (body) => {
          res.writeHead(200, { "Content-Type": this.registry.contentType });
          res.end(req.method === "HEAD" ? undefined : body);
        },
        (err: unknown) => {
          logger?.error({ err: errorMessage(err) }, "metrics scrape failed");
          res.writeHead(500, { "Content-Type": "text/plain; charset=utf-8" }).end("cannot collect metrics\n");
        },
      );
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      // An empty host (":9456") listens on every address, as Node does without one.
      server.listen({ host: host === "" ? undefined : host, port }, () => {
        server.off("error", reject);
        resolve();
      });
    });
    server.on("error", (err) => logger?.error({ err: errorMessage(err) }, "metrics server error"));
    const bound = (server.address() as AddressInfo).port;
    logger?.info({ host, port: bound }, "metrics server listening");
    return {
      port: bound,
      close: () =>
        new Promise<void>((resolve, reject) => {
          server.close((err) => (err ? reject(err) : resolve()));
          // Prometheus keeps its connection alive between scrapes; without this, close() waits for it to time out.
          server.closeAllConnections();
        }),
    };
  }
}
