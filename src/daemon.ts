import type { Logger } from "pino";
import { act } from "./act/apply.js";
import { run as realRun, type Runner } from "./act/exec.js";
import { TransferPool, type CopyOutcome } from "./act/transfers.js";
import type { Config } from "./config.js";
import { errorMessage } from "./errors.js";
import { Observer, type ObserveRoots, type Snapshot } from "./observe/snapshot.js";
import { catalogue, type Catalog } from "./plan/catalog.js";
import { actionDataset, diff, type Action } from "./plan/diff.js";
import { layerStacks, mountedImages } from "./plan/layers.js";
import { readLoopAt } from "./observe/loops.js";
import { admitCopies, capacityBytes, ghostBytes, occupiedBytes, plan, writableBytes } from "./plan/policy.js";
import { Stats } from "./plan/stats.js";

export interface DaemonOptions {
  config: Config;
  logger: Logger;
  run?: Runner;
  roots?: ObserveRoots;
  clock?: () => number;
  maxCopies?: number;
}

/** After a failure a dataset is left alone for interval x 2^failures, at most this long. */
const MAX_BACKOFF_MS = 3600 * 1000;

/** What the last tick decided, for status reports and tests. */
export interface TickSummary {
  datasets: number;
  cached: number;
  copying: number;
  budgetBytes: number;
  usedBytes: number;
  actions: number;
  ms: number;
}

/**
 * The reconciler: each tick observes the machine, plans what it wants, and
 * acts on the difference. It remembers only statistics, back-off and what it
 * has already reported, never what it did: a restart loses nothing.
 */
export class Daemon {
  config: Config;
  readonly logger: Logger;
  readonly stats: Stats;
  readonly transfers: TransferPool;
  private readonly observer: Observer;
  private readonly run: Runner;
  private readonly clock: () => number;
  private readonly roots: ObserveRoots;
  private previous?: Snapshot;
  private readonly backoff = new Map<string, { failures: number; until: number }>();
  private readonly reported = new Map<string, string>();
  private stopping = false;
  private wakeUp?: () => void;
  lastTick?: TickSummary;
  ticks = 0;

  constructor(options: DaemonOptions) {
    this.config = options.config;
    this.logger = options.logger;
    this.run = options.run ?? realRun;
    this.clock = options.clock ?? Date.now;
    this.roots = options.roots ?? { proc: "/proc", sys: "/sys" };
    this.observer = new Observer(this.roots, this.clock);
    this.stats = new Stats(this.config.period * 1000);
    this.transfers = new TransferPool({
      run: this.run,
      commandTimeoutS: this.config.commandTimeout,
      maxCopies: options.maxCopies ?? 2,
      logger: this.logger,
      clock: this.clock,
      onSettled: (name, outcome) => this.onCopySettled(name, outcome),
    });
  }

  /** One pass of observe -> plan -> diff -> act. */
  async tick(): Promise<TickSummary> {
    const started = performance.now();
    const config = this.config;

    // 1. Observe the machine.
    const snapshot = await this.observer.observe(config);
    const stacks = layerStacks(snapshot, config);

    // 2. Which images are datasets, which are refused, which are still being written.
    const catalog = catalogue(snapshot, this.previous, config, mountedImages(stacks));
    this.reportRefusals(catalog);

    // 3. Read statistics over the window.
    this.stats.update(snapshot, config, catalog.nameOfFile, [...catalog.datasets.keys(), ...catalog.pending]);

    // 4. Choose what to cache within the budget.
    const ghosts = ghostBytes(snapshot, config);
    const capacity = capacityBytes(config.capacity, snapshot.cacheFs.totalBytes);
    const budgetBytes = Math.max(0, capacity - ghosts);
    const rate = (name: string) => this.stats.rate(name);
    const cached = plan({ datasets: catalog.datasets.values(), rate, budgetBytes });
    const admitted = admitCopies({
      candidates: [...catalog.datasets.values()]
        .filter((d) => cached.has(d.name) && d.cache !== "valid" && !this.transfers.all.has(d.name))
        .sort((a, b) => rate(b.name).slow + rate(b.name).cache - (rate(a.name).slow + rate(a.name).cache)),
      occupiedBytes: ghosts + occupiedBytes(snapshot, this.transfers.all),
      capacityBytes: capacity,
      writableBytes: writableBytes(snapshot, this.transfers.all),
    });

    // 5. The difference between what is and what should be.
    const now = snapshot.now;
    const frozen = new Set([...this.backoff].filter(([, b]) => b.until > now).map(([name]) => name));
    const { actions, problems } = diff({ config, catalog, stacks, cacheFiles: snapshot.cacheFiles, cached, transfers: this.transfers.all, frozen, admitted });
    this.reportAll(
      "problem",
      problems.map((p) => ({ key: p.key, signature: p.message, log: () => this.logger.warn({ dataset: p.dataset, key: p.key }, p.message) })),
    );

    // 6. Act on it; failures put the dataset in back-off instead of blacklisting it forever.
    const failures = await act(actions, {
      run: this.run,
      transfers: this.transfers,
      logger: this.logger,
      procRoot: this.roots.proc,
      commandTimeoutMs: config.commandTimeout * 1000,
      onMounted: (target) => this.noteAttached(target),
    });
    this.updateBackoff(actions, failures.map((f) => f.action), now);

    this.previous = snapshot;
    this.ticks++;
    const usedBytes = [...catalog.datasets.values()].filter((d) => cached.has(d.name)).reduce((s, d) => s + d.size, 0);
    this.lastTick = {
      datasets: catalog.datasets.size,
      cached: [...catalog.datasets.values()].filter((d) => d.cache === "valid" && cached.has(d.name)).length,
      copying: this.transfers.all.size,
      budgetBytes,
      usedBytes,
      actions: actions.length,
      ms: Math.round(performance.now() - started),
    };
    this.logger.debug({ ...this.lastTick, ghostBytes: ghosts }, "tick");
    return this.lastTick;
  }

  /** Tick every `interval` seconds until stop(); a finished copy wakes it early so the copy is mounted at once. */
  async runLoop(): Promise<void> {
    while (!this.stopping) {
      const started = this.clock();
      try {
        await this.tick();
      } catch (err) {
        // A transient failure (NFS hiccup, a file vanishing mid-read) must not kill the daemon; nothing was half-done.
        this.logger.error({ err: errorMessage(err) }, "tick failed");
      }
      if (this.stopping) break;
      const delay = Math.max(0, this.config.interval * 1000 - (this.clock() - started));
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, delay);
        this.wakeUp = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wakeUp = undefined;
    }
  }

  wake(): void {
    this.wakeUp?.();
  }

  /** SIGTERM: cancel copies (their temporary files are removed), leave every mount in place. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.wake();
    await this.transfers.cancelAll("daemon stopping");
  }

  logCacheBytes(): void {
    this.logger.info({ bytes: this.stats.cacheBytesServed }, "bytes served from cache");
  }

  private async noteAttached(target: string): Promise<void> {
    const loop = await readLoopAt(target, this.roots);
    if (loop) this.stats.noteAttached(loop.device.name, loop.device.backingFile, loop.readBytes);
  }

  private onCopySettled(name: string, outcome: CopyOutcome): void {
    if (outcome.ok) this.backoff.delete(name);
    else if (!outcome.cancelled) this.fail(name, this.clock());
    this.wake();
  }

  private fail(name: string, now: number): void {
    const failures = (this.backoff.get(name)?.failures ?? 0) + 1;
    const delay = Math.min(this.config.interval * 1000 * 2 ** failures, MAX_BACKOFF_MS);
    this.backoff.set(name, { failures, until: now + delay });
    this.logger.warn({ dataset: name, failures, retryInMs: delay }, "dataset in back-off");
  }

  private updateBackoff(actions: readonly Action[], failed: readonly Action[], now: number): void {
    const failedNames = new Set(failed.map(actionDataset).filter((n): n is string => n !== undefined));
    for (const name of failedNames) this.fail(name, now);
    for (const a of actions) {
      const name = actionDataset(a);
      if (name !== undefined && !failedNames.has(name) && a.kind !== "start-copy") this.backoff.delete(name);
    }
  }

  private reportRefusals(catalog: Catalog): void {
    this.reportAll(
      "refused",
      catalog.refusals.map((r) => ({
        key: r.file,
        signature: `${r.signature}:${r.reason}`,
        log: () => this.logger.error({ file: r.file, reason: r.reason }, "image refused"),
      })),
    );
  }

  /** Log each condition once, and again only when it changes; forget those that are gone. */
  private reportAll(scope: string, items: { key: string; signature: string; log: () => void }[]): void {
    const live = new Set<string>();
    for (const item of items) {
      const key = `${scope}:${item.key}`;
      live.add(key);
      if (this.reported.get(key) === item.signature) continue;
      this.reported.set(key, item.signature);
      item.log();
    }
    for (const key of this.reported.keys()) if (key.startsWith(`${scope}:`) && !live.has(key)) this.reported.delete(key);
  }
}
