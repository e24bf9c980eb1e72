import type { DirCondition } from "../plan/availability.js";

/**
 * The status report: what the daemon knows after each tick, written
 * atomically as JSON to <runtime_dir>/status.json for `scratch_manager
 * status` (any user may read it) and turned into Prometheus metrics. Plain
 * data: bytes, bytes per second, and milliseconds since the epoch.
 */

export const STATUS_VERSION = 1;

export type DatasetState =
  /** Served from the image on shared storage. */
  | "slow"
  /** Being copied to the cache; still served from the slow tier. */
  | "copying"
  /** Waiting for a copy slot (max_copies) or for free space. */
  | "queued"
  /** Its cached copy is mounted over the slow mount. */
  | "cached";

export interface CopyProgress {
  doneBytes: number;
  totalBytes: number;
  /** Average since the copy started. */
  bytesPerSecond: number;
  startedAt: number;
  /** Where the bytes come from: "server" (the file server), or the peer's HOST:PORT (peer fill). */
  from?: string;
}

export interface DatasetStatus {
  name: string;
  imageFile: string;
  sizeBytes: number;
  state: DatasetState;
  pinned: boolean;
  /** When a pin given with --for ends; absent for a permanent pin. */
  pinExpiresAt?: number;
  copy?: CopyProgress;
  /** Read throughput over the window, per tier. */
  slowBytesPerSecond: number;
  cacheBytesPerSecond: number;
  /** Bytes read through each tier since the daemon started. */
  slowBytesRead: number;
  cacheBytesRead: number;
  /** Last time either tier was read, if ever since start. */
  lastReadAt?: number;
  /** Why it is not where the policy wants it (back-off after a failure, pin that does not fit). */
  note?: string;
  /** Staged for a job about to start here (Slurm pre-staging): the job and its expected start (ms). */
  staged?: { jobId: number; startAt: number };
}

export interface RefusedImage {
  file: string;
  reason: string;
}

export interface StatusReport {
  version: typeof STATUS_VERSION;
  pid: number;
  writtenAt: number;
  /** Seconds between ticks: a report older than a few intervals means the daemon is gone or stuck. */
  intervalSeconds: number;
  periodSeconds: number;
  datasets: DatasetStatus[];
  refused: RefusedImage[];
  cache: {
    dir: string;
    /** Bytes of the cached copies and running copies' targets. */
    usedBytes: number;
    capacityBytes: number;
    /** Space of dropped copies still held open by readers. */
    ghostBytes: number;
    fsTotalBytes: number;
    fsFreeBytes: number;
  };
  /** Totals since the daemon started. */
  cacheBytesServed: number;
  copies: { started: number; finished: number; failed: number; cancelled: number; bytes: number };
  tick: { count: number; ms: number };
  /** Conditions an administrator should know about: pins that do not fit, pins of unknown datasets, ... */
  problems: string[];
  /**
   * Whether datadir and cachedir answer (plan/availability.ts). Absent in a
   * report of a daemon from before it was added.
   */
  storage?: { datadir: DirCondition; cachedir: DirCondition };
  /** Peer fill (fleet/), when peer_listen is set. */
  peers?: PeerStatus;
  /**
   * Whether the cache device can be read (plan/cache-device.ts): while it
   * cannot, every dataset is served from the slow tier. Absent in a report of
   * a daemon from before it was added.
   */
  cacheDevice?: {
    up: boolean;
    reason: string;
    message: string;
    since: number;
    /** Its identity and SMART verdict (systeminformation), read rarely; absent until first read. */
    health?: { device: string; disk?: string; model?: string; smart: "ok" | "predicted-failure" | "unknown"; message: string };
  };
  /** Pre-staging: staged datasets whose job was due with them cached (hits) or not (misses); the stager's state on the daemon that reads the queue. */
  staging?: { hits: number; misses: number; stager?: { listings: number; listedAt?: number; jobs: number; nodes: number; sent: number; errors: Record<string, string>; error?: string } };
  /** The datasets held, as this node's Slurm features (slurm_node): what slurmctld was last told, and when. */
  slurm?: { node: string; features: string[]; sentAt?: number; calls: number; error?: string };
  /** Slow layers whose reads fail while their image in datadir reads (plan/slow-layers.ts): dead now, and found since start. */
  slowLayers?: { dead: number; foundTotal: number };
  /** While datasets are still being mounted (a first start with thousands of new images): how far. */
  mounting?: { mounted: number; total: number };
}

/** Peer fill, as status and the metrics show it. */
export interface PeerStatus {
  enabled: boolean;
  /** This node's HOST:PORT in the fleet. */
  node?: string;
  /** Why peer fill is off although peer_listen is set (the key, the port). */
  problem?: string;
  /** Other nodes with a fresh record. */
  peersLive: number;
  /** Transfers this node is serving now. */
  serving: number;
  /** Why the records cannot be published or read now (a read-only peer_dir, a file server not answering); the rest of peer fill goes on. */
  recordsProblem?: string;
  counters: {
    fromPeersBytes: number;
    fromServerBytes: number;
    servedBytes: number;
    refusedBusy: number;
    refusedAuth: number;
    refusedUnknown: number;
    checksumMismatches: number;
    /** Two different signed checksums for one image: neither was used. */
    checksumConflicts: number;
    /** Records ignored, each counted once, by why (records.ts IgnoredReason). */
    recordsIgnored: Record<string, number>;
  };
}
