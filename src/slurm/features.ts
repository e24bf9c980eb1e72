/**
 * Jobs placed where their data is (issue 21): the datasets this node holds
 * (cached, or being copied) are node features of its Slurm node, `ds_<name>`,
 * which a job asks for softly with `--prefer=ds_<name>` (Slurm 22.05+; the
 * shipped job_submit.lua adds it from `--comment datasets:<name>,...`).
 *
 * `scontrol update NodeName=N AvailableFeatures=... ActiveFeatures=...`
 * replaces the whole list: the node's other features (the site's: gpu, ib,
 * ...) are read first and kept. slurmctld is called only when the set
 * changed, at most once per MIN_INTERVAL_MS (changes meanwhile go in the
 * next call), and again every REFRESH_MS (a restarted slurmctld, or an
 * administrator's update, loses ours): at 1,000 nodes whose caches change a
 * few times an hour, a few calls a minute for the cluster.
 */
import type { Clock } from "../lib/clock.js";
import { CommandFailedError, type Runner } from "../lib/exec.js";
import type { StatusReport } from "../report/status.js";

export const FEATURE_PREFIX = "ds_";
/** Changes are batched: one call at most this often. */
export const MIN_INTERVAL_MS = 30_000;
/** The features are set again this often, changed or not. */
export const REFRESH_MS = 600_000;

/** A dataset's feature: `ds_` and its name, every character Slurm would not take in a feature as `_`. Pure. */
export function featureOf(dataset: string): string {
  return FEATURE_PREFIX + dataset.replace(/[^A-Za-z0-9_]/g, "_");
}

/** The features of what this node holds: datasets cached, or being copied (they will be, soon). Sorted. Pure. */
export function heldFeatures(report: Pick<StatusReport, "datasets">): string[] {
  return [...new Set(report.datasets.filter((d) => d.state === "cached" || d.state === "copying").map((d) => featureOf(d.name)))].sort();
}

/**
 * Available and active alike: slurmctld refuses a job that prefers a feature
 * no node has ("Invalid preferred feature specification"), and finds no
 * node for one that is available somewhere but active nowhere ("Requested
 * node configuration is not available", there being no node features
 * plugin to activate it). So job_submit.lua prefers only features active
 * somewhere (the stager's list: slurm/stager.ts, writeActiveFeatures).
 */
/** The node's features from `scontrol show node N -o` (one line). Pure. */
export function parseNodeFeatures(line: string): { available: string[]; active: string[] } {
  const field = (key: string) => (new RegExp(`(?:^|\\s)${key}=(\\S*)`).exec(line)?.[1] ?? "").split(",").filter((f) => f !== "" && f !== "(null)");
  return { available: field("AvailableFeatures"), active: field("ActiveFeatures") };
}

/** The node's features with ours replaced by `ours`: the others kept, in their order. Pure. */
export function withOurs(current: readonly string[], ours: readonly string[]): string[] {
  return [...current.filter((f) => !f.startsWith(FEATURE_PREFIX)), ...ours];
}

export interface AdvertiserState {
  node: string;
  /** What slurmctld was last told (sorted), and when. */
  features: string[];
  sentAt?: number;
  calls: number;
  /** The last call's error, until one succeeds. */
  error?: string;
}

/**
 * Keeps the node's ds_ features in step with the cache, in the background
 * (the tick never waits for slurmctld).
 */
export class FeatureAdvertiser {
  private sent?: string;
  private lastAttempt = -Infinity;
  private running = false;
  readonly state: AdvertiserState;

  constructor(
    private readonly run: Runner,
    private readonly clock: Clock,
    node: string,
    private readonly timeoutMs: number,
    private readonly onError: (message: string) => void = () => undefined,
  ) {
    this.state = { node, features: [], calls: 0 };
  }

  /** Tells slurmctld if the held set changed (batched) or the refresh is due. */
  update(report: Pick<StatusReport, "datasets">): void {
    const wanted = heldFeatures(report);
    const known = wanted;
    const now = this.clock.monotonic();
    const changed = this.sent !== `${wanted.join(",")}|${known.join(",")}`;
    if (this.running || now - this.lastAttempt < (changed ? MIN_INTERVAL_MS : REFRESH_MS)) return;
    this.lastAttempt = now;
    this.running = true;
    void this.send(wanted, known).finally(() => {
      this.running = false;
    });
  }

  private async send(wanted: string[], known: string[]): Promise<void> {
    const node = this.state.node;
    try {
      this.state.calls++;
      const { stdout } = await this.run("scontrol", ["show", "node", node, "-o"], { timeoutMs: this.timeoutMs });
      const current = parseNodeFeatures(stdout);
      const available = withOurs(current.available, known);
      const active = withOurs(current.active, wanted);
      this.state.calls++;
      // An empty list is given as such: the node's ds_ features all go.
      await this.run("scontrol", ["update", `NodeName=${node}`, `AvailableFeatures=${available.join(",")}`, `ActiveFeatures=${active.join(",")}`], { timeoutMs: this.timeoutMs });
      this.sent = `${wanted.join(",")}|${known.join(",")}`;
      this.state.features = wanted;
      this.state.sentAt = this.clock.now();
      if (this.state.error !== undefined) this.state.error = undefined;
    } catch (err) {
      const message = err instanceof CommandFailedError ? `${err.argv.slice(0, 3).join(" ")}: ${err.stderr.trim().split("\n").at(-1) ?? err.message}` : err instanceof Error ? err.message : String(err);
      if (this.state.error === undefined) this.onError(message);
      this.state.error = message;
    }
  }
}
