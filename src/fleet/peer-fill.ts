import { hostname } from "node:os";
import { sendStage } from "./stage.js";
import type { StagedEntry } from "../slurm/queue.js";
import { unlink } from "node:fs/promises";
import type { Logger } from "pino";
import type { Runner } from "../lib/exec.js";
import { parseHostPort, type Config } from "../config.js";
import { errnoCode, errorMessage } from "../errors.js";
import type { PeerStatus } from "../report/status.js";
import { Checksums } from "./checksums.js";
import { hashFile, hashFollowing } from "./follow.js";
import type { FleetContext } from "./context.js";
import { FleetKey } from "./fleet-key.js";
import { Avoidance, PeerCopy, type CopyState } from "./peer-copy.js";
import { EMPTY_IGNORED, RecordBoard } from "./record-board.js";
import { RECORD_VERSION, type ImageIdentity, type PeerRecord, type RecordImage } from "./records.js";
import { formatPeerName } from "./peer-name.js";
import { PeerServer, type Holding } from "./server.js";
import { fleetLayout, type FleetLayout } from "./shared-dir.js";
import { systemClock, type Clock } from "../lib/clock.js";

/** The transfer pool's copy, as peer fill needs it. */
export interface FillJob {
  name: string;
  imageFile: string;
  size: number;
  mtimeMs: number;
  tmpPath: string;
  /** Where the copy goes once verified (cachedir/<image>): served from there afterwards. */
  dest: string;
  abort: AbortController;
}

export interface FillResult {
  from: string;
  sha256?: string;
}

interface ActiveCopy extends CopyState {
  /** Bumped when the copy starts over (from the file server after peers failed): a follower of the old file stops. */
  generation: number;
  ended: boolean;
  sha: Promise<string | undefined>;
  settleSha: (sha: string | undefined) => void;
}

/** Totals since start, for status and metrics. */
export type PeerCounters = PeerStatus["counters"];

export interface PeerFillOptions {
  run: Runner;
  logger: Logger;
  /** datadir's one-at-a-time channel (observe/dir-watch.ts): every record and key read or write goes through it. */
  channel: <R>(op: () => Promise<R>, signal?: AbortSignal) => Promise<R>;
  clock?: Clock;
  /** Called when a record says something new may be fetched (a copy finished): the daemon wakes its loop. */
  lifetime: AbortSignal;
  /** A stager's signed request: the datasets of jobs about to start on this node (fleet/stage.ts). */
  onStage?: (by: string, entries: StagedEntry[]) => void;
}

/**
 * Peer fill (issue 13): each image leaves the file server about once, however
 * many nodes cache it. The node that reads it from the file server publishes
 * that it does (records.ts) and serves its copy as it grows (server.ts); the
 * others copy from it, or from one another, over HTTP, each verifying the
 * bytes against the SHA-256 the first node computed on the way.
 */
export class PeerFill {
  private config: Config;
  private server?: { server: PeerServer; listen: string };
  private starting?: Promise<void>;
  private readonly active = new Map<string, ActiveCopy>();
  private holdings = new Map<string, Holding>();
  private readonly checksums: Checksums;
  private readonly ctx: FleetContext;
  private readonly fleetKey: FleetKey;
  private readonly board: RecordBoard;
  private readonly avoidance: Avoidance;
  private hashing?: Promise<void>;
  readonly counters: PeerCounters = {
    fromPeersBytes: 0,
    fromServerBytes: 0,
    servedBytes: 0,
    refusedBusy: 0,
    refusedAuth: 0,
    refusedUnknown: 0,
    checksumMismatches: 0,
    checksumConflicts: 0,
    recordsIgnored: EMPTY_IGNORED(),
  };

  constructor(
    config: Config,
    private readonly options: PeerFillOptions,
  ) {
    this.config = config;
    this.checksums = new Checksums(config.stateDir);
    this.ctx = { ...options, clock: options.clock ?? systemClock, layout: () => this.layout, timeoutMs: () => this.timeoutMs() };
    this.fleetKey = new FleetKey(this.ctx);
    this.avoidance = new Avoidance(this.ctx.clock);
    this.board = new RecordBoard(this.ctx, {
      key: () => this.fleetKey.key,
      keys: () => this.fleetKey.keys(),
      record: () => this.record(),
      node: () => this.node,
      enabled: () => this.enabled,
      refused: (problem) => this.fleetKey.refuse(problem),
      ignoredCounts: this.counters.recordsIgnored,
    });
  }

  private get clock(): Clock {
    return this.ctx.clock;
  }

  private now(): number {
    return this.clock.now();
  }

  /** This node's name in the fleet: the HOST:PORT the others reach it at. */
  get node(): string {
    if (this.config.peerAdvertise) return this.config.peerAdvertise;
    const { host, port } = parseHostPort(this.config.peerListen ?? ":0", "peer_listen");
    const actual = this.server ? this.serverPort : port;
    return formatPeerName(host === "" || host === "0.0.0.0" || host === "::" ? hostname() : host, actual);
  }

  private serverPort = 0;

  get enabled(): boolean {
    return this.fleetKey.key !== undefined && this.server !== undefined;
  }

  private get layout(): FleetLayout {
    const owner = this.config.peerDirOwner;
    return fleetLayout({ datadir: this.config.datadir, peerKey: this.config.peerKey, peerDir: this.config.peerDir, peerDirOwner: typeof owner === "number" ? owner : 0 });
  }


  private timeoutMs(): number {
    return this.config.scanTimeout * 1000;
  }

  private stallMs(): number {
    return this.config.commandTimeout * 1000;
  }

  view(): PeerStatus {
    return {
      enabled: this.enabled,
      node: this.config.peerListen ? this.node : undefined,
      problem: this.fleetKey.problem,
      peersLive: this.board.live(this.config.interval).length,
      serving: this.server?.server.serving ?? 0,
      recordsProblem: this.board.problem,
      counters: { ...this.counters, recordsIgnored: { ...this.counters.recordsIgnored } },
    };
  }

  /** The peers whose records are live: their names (HOST:PORT). */
  peers(): string[] {
    return this.board.live(this.config.interval).map((r) => r.node);
  }

  /** Hands `to` its part of the staging plan, signed with the fleet key; "ok", or why not. */
  async stage(to: string, entries: readonly StagedEntry[]): Promise<"ok" | string> {
    const key = this.fleetKey.key;
    if (!key || !this.enabled) return "peer fill is off on this node (no key or no listener)";
    return sendStage(key, this.node, to, entries, this.now(), this.timeoutMs());
  }

  /** Where a running copy comes from ("server" or a peer's HOST:PORT), for status. */
  sourceOf(file: string): string | undefined {
    return this.active.get(file)?.from;
  }

  async init(): Promise<void> {
    try {
      await this.checksums.load();
    } catch (err) {
      this.options.logger.warn({ err: errorMessage(err) }, "cannot read the checksums of the cached copies; they will be computed again");
    }
  }

  /** A reloaded configuration: the listener follows peer_listen. */
  reconfigure(config: Config): void {
    this.config = config;
    this.fleetKey.readSoon();
  }

  /**
   * Each tick: the copies this node holds (its cached datasets), the key read
   * again now and then, the listener started or stopped, the record
   * rewritten when due. Nothing here waits on the file server: reads and
   * writes of datadir go through its channel, in the background.
   */
  async tick(config: Config, cached: readonly Holding[]): Promise<void> {
    // The daemon's configuration, with datadir as it resolved it.
    this.config = config;
    const holdings = new Map(cached.map((h) => [h.file, { ...h, sha256: this.checksums.get(h) }]));
    if ([...holdings.keys()].some((f) => !this.holdings.has(f)) || [...this.holdings.keys()].some((f) => !holdings.has(f))) this.board.changed();
    this.holdings = holdings;
    if (!this.config.peerListen) {
      await this.shutdownServer();
      this.fleetKey.forget();
      return;
    }
    this.fleetKey.refreshWhenDue();
    const key = this.fleetKey.key;
    if (key && !this.server) await this.startServer();
    if (!key && this.server) await this.shutdownServer();
    if (this.server && this.server.listen !== this.config.peerListen) {
      await this.shutdownServer();
      await this.startServer();
    }
    if (!this.enabled) return;
    this.hashMissing();
    this.board.publishWhenDue(this.config.interval);
  }

  /**
   * Start the listener, once: the tick and a copy's first fill may both
   * ask for it while it is binding, and a second bind of the same port
   * would fail and turn peer fill off.
   */
  private startServer(): Promise<void> {
    this.starting ??= this.bindServer().finally(() => (this.starting = undefined));
    return this.starting;
  }

  private async bindServer(): Promise<void> {
    const listen = this.config.peerListen;
    if (!listen || this.server) return;
    const server = new PeerServer({
      keys: () => this.fleetKey.keys(),
      self: () => this.node,
      lookup: (file) => this.lookup(file),
      maxUploads: () => this.config.peerUploads,
      stallMs: () => this.stallMs(),
      logger: this.options.logger,
      onServed: (n) => (this.counters.servedBytes += n),
      onRefused: (why) => {
        if (why === "busy") this.counters.refusedBusy++;
        else if (why === "auth") {
          this.counters.refusedAuth++;
          this.fleetKey.recheck();
        }
        else this.counters.refusedUnknown++;
      },
      onStage: this.options.onStage,
      clock: this.clock,
    });
    try {
      this.serverPort = await server.listen(listen);
    } catch (err) {
      const problem = `cannot listen on peer_listen = ${listen}: ${errorMessage(err)}`;
      if (problem !== this.fleetKey.problem) this.options.logger.error(`peer fill off: ${problem}`);
      this.fleetKey.problem = problem;
      return;
    }
    this.server = { server, listen };
    this.board.changed();
    this.options.logger.info({ listen, node: this.node }, "serving cached images to peers");
  }

  private async shutdownServer(): Promise<void> {
    if (!this.server) return;
    const { server } = this.server;
    this.server = undefined;
    await server.close();
  }

  /** What this node can serve of an image: a copy it is making (followed as it grows), or its verified cached copy. */
  private lookup(file: string): Holding | undefined {
    const a = this.active.get(file);
    if (a && !a.ended) {
      const generation = a.generation;
      return { ...a.id, path: a.tmpPath, copying: { growing: () => !a.ended && a.generation === generation, sha: a.sha } };
    }
    const h = this.holdings.get(file);
    // Never a copy whose checksum is unknown: the receiver could not verify it.
    return h?.sha256 !== undefined ? h : undefined;
  }

  /** Cached copies made before peer fill was on have no checksum yet: computed here, one at a time, from the local SSD. */
  private hashMissing(): void {
    if (this.hashing) return;
    const missing = [...this.holdings.values()].find((h) => h.sha256 === undefined);
    if (!missing) return;
    this.hashing = (async () => {
      try {
        const sha = await hashFile(missing.path, this.options.lifetime);
        await this.checksums.set(missing, sha);
        const h = this.holdings.get(missing.file);
        if (h) h.sha256 = sha;
        this.board.changed();
        this.options.logger.info({ image: missing.file }, "checksum of a cached copy computed");
      } catch (err) {
        this.options.logger.warn({ image: missing.file, err: errorMessage(err) }, "cannot compute the checksum of a cached copy");
      } finally {
        this.hashing = undefined;
      }
    })();
  }

  private record(): PeerRecord {
    const images: RecordImage[] = [];
    for (const h of this.holdings.values()) {
      images.push({ file: h.file, size: h.size, mtimeMs: h.mtimeMs, sha256: h.sha256, state: "cached", progress: h.size, from: "server", since: 0 });
    }
    for (const a of this.active.values()) {
      if (a.ended || this.holdings.has(a.id.file)) continue;
      images.push({ ...a.id, state: "copying", progress: a.written, from: a.from, since: a.since });
    }
    return { v: RECORD_VERSION, node: this.node, updatedAt: this.now(), images };
  }

  /** Called by the daemon when the pool is done with a copy, whatever the outcome. */
  async settled(file: string, dest: string, ok: boolean): Promise<void> {
    const a = this.active.get(file);
    if (!a) return;
    a.ended = true;
    this.active.delete(file);
    if (ok) {
      const sha = await a.sha;
      if (sha !== undefined) {
        // Served from its place in the cache at once, not from the next tick on.
        this.holdings.set(file, { ...a.id, path: dest, sha256: sha });
        await this.checksums.set(a.id, sha).catch((err: unknown) => this.options.logger.warn({ err: errorMessage(err) }, "cannot save a checksum"));
      }
    }
    if (this.enabled) this.board.publishSoon();
  }

  /**
   * Fill `job.tmpPath` with the image: from peers when one holds it or is
   * ahead on it, else from the file server through `fromServer` (cp or
   * rsync), hashed as it is written. Throws when neither worked; leaves
   * nothing at tmpPath the pool would take for a good copy.
   */
  async fill(job: FillJob, fromServer: () => Promise<void>): Promise<FillResult> {
    // A copy started by the first ticks, before the key was first read: peer fill is not off, only not ready yet.
    if (this.config.peerListen) await this.fleetKey.ready();
    if (this.config.peerListen && this.fleetKey.key && !this.server) await this.startServer();
    if (!this.enabled) {
      await fromServer();
      return { from: "server" };
    }
    const id: ImageIdentity = { file: job.imageFile, size: job.size, mtimeMs: job.mtimeMs };
    let settleSha: (sha: string | undefined) => void = () => undefined;
    const sha = new Promise<string | undefined>((resolve) => (settleSha = resolve));
    const copy: ActiveCopy = { id, tmpPath: job.tmpPath, since: this.now(), from: "server", generation: 0, ended: false, opened: false, written: 0, sha, settleSha };
    this.active.set(id.file, copy);
    const log = this.options.logger.child({ dataset: job.name });
    try {
      const fromPeers = await this.fillFromPeers(job, copy, log).catch((err: unknown) => {
        log.warn({ err: errorMessage(err) }, "peer fill failed; copying from the file server");
        return undefined;
      });
      if (fromPeers) {
        copy.settleSha(fromPeers.sha256);
        return fromPeers;
      }
      if (job.abort.signal.aborted) throw new Error("cancelled");
      return await this.fillFromServer(job, copy, fromServer);
    } catch (err) {
      copy.settleSha(undefined);
      copy.ended = true;
      throw err;
    }
  }

  private async fillFromServer(job: FillJob, copy: ActiveCopy, fromServer: () => Promise<void>): Promise<FillResult> {
    // Whatever peers left is not this copy: cp starts a new file, which followers must not mix with the old.
    // (Followers that came while this node was still choosing, before any byte, just wait for cp's file.)
    if (copy.opened) copy.generation++;
    await unlink(job.tmpPath).catch((err: unknown) => {
      if (errnoCode(err) !== "ENOENT") throw err;
    });
    copy.from = "server";
    copy.written = 0;
    this.board.publishSoon();
    let done = false;
    const hashing = hashFollowing(job.tmpPath, { size: job.size, growing: () => !done, stallMs: this.stallMs(), signal: job.abort.signal });
    hashing.catch(() => undefined);
    try {
      await fromServer();
    } finally {
      done = true;
    }
    const sha = await hashing;
    copy.written = job.size;
    copy.settleSha(sha);
    this.counters.fromServerBytes += job.size;
    return { from: "server", sha256: sha };
  }

  /** Undefined when no peer could give the image (the caller reads the file server); throws only for local failures. */
  private async fillFromPeers(job: FillJob, copy: ActiveCopy, log: Logger): Promise<FillResult | undefined> {
    // Cancelled copy or stopping daemon: whichever comes first ends every wait on the file server.
    const { signal, dispose } = anySignal(job.abort.signal, this.options.lifetime);
    try {
      const deps = { self: this.node, board: this.board, fleetKey: this.fleetKey, avoidance: this.avoidance, clock: this.clock, intervalS: this.config.interval, stallMs: this.stallMs(), counters: this.counters, log };
      return await new PeerCopy(deps, copy, signal, job.abort.signal).run();
    } finally {
      dispose();
    }
  }

  /** Stop serving and take this node's record away (a clean stop: no one should ask it any more). */
  async stop(): Promise<void> {
    const wasEnabled = this.enabled;
    await this.shutdownServer();
    if (wasEnabled) await this.board.remove();
  }
}

/** Aborted when either is (AbortSignal.any is Node >= 20.3; the daemon runs on 18 too). */
function anySignal(a: AbortSignal, b: AbortSignal): { signal: AbortSignal; dispose: () => void } {
  const both = new AbortController();
  const abort = () => both.abort();
  for (const s of [a, b]) {
    if (s.aborted) both.abort();
    else s.addEventListener("abort", abort, { once: true });
  }
  // The daemon's lifetime signal outlives every copy: its listener goes with the copy.
  return { signal: both.signal, dispose: () => [a, b].forEach((s) => s.removeEventListener("abort", abort)) };
}
