import { errorMessage } from "../errors.js";
import type { FleetContext } from "./context.js";
import { readFleetKey, runFleetIo } from "./shared-dir.js";

/** The key is read again this often (an administrator may replace it), ... */
const REFRESH_MS = 60_000;
/** ... and at once, at most this often, when a request's signature does not match it (the other node may have the new one). */
const RECHECK_MS = 5_000;
/** After the key changed, the previous one is still accepted (never used to sign) for this long: a fleet rotates without failed transfers. */
export const KEY_GRACE_MS = 10 * 60_000;

/**
 * The fleet key, as this node holds it: read through datadir's channel from
 * one open that follows no link (shared-dir.ts), with the records'
 * directory checked at the same time. Any refusal turns peer fill off, said
 * once with the path and the command that fixes it (`problem`).
 */
export class FleetKey {
  private current?: Buffer;
  private previous?: { key: Buffer; until: number };
  /** Why there is no usable key (or records' directory), if so. */
  problem?: string;
  private readAt = -Infinity;
  private reading?: Promise<void>;
  private recheckWanted = false;

  constructor(private readonly ctx: FleetContext) {}

  /** The key that signs. */
  get key(): Buffer | undefined {
    return this.current;
  }

  /** The keys a signature may be made with: the current one first, the previous one during its grace. */
  keys(): Buffer[] {
    const keys = this.current ? [this.current] : [];
    if (this.previous && this.previous.until > this.ctx.clock.now()) keys.push(this.previous.key);
    return keys;
  }

  /** Peer fill switched off (peer_listen unset): no key held. */
  forget(): void {
    this.current = undefined;
  }

  /** A reloaded configuration: read again at the next tick. */
  readSoon(): void {
    this.readAt = -Infinity;
  }

  /** A signature that did not match: the key may have changed; read again soon (at most every RECHECK_MS). */
  recheck(): void {
    this.recheckWanted = true;
  }

  /** Each tick: read again when due, in the background (a read stuck behind a dead file server must not hold the tick). */
  refreshWhenDue(): void {
    const since = this.ctx.clock.now() - this.readAt;
    if ((since >= REFRESH_MS || (this.recheckWanted && since >= RECHECK_MS)) && !this.reading) {
      this.recheckWanted = false;
      this.startReading();
    }
  }

  /** A copy started by the first ticks, before the key was first read: peer fill is not off, only not ready yet. */
  async ready(): Promise<void> {
    if (this.current) return;
    if (this.readAt === -Infinity && !this.reading) this.startReading();
    await this.reading;
  }

  /** A directory on the way to the records was refused: off, as for the key, until the next read finds it right. */
  refuse(problem: string): void {
    if (problem !== this.problem) this.ctx.logger.warn({ records: this.ctx.layout().recordsPath }, `peer fill off: ${problem}`);
    this.problem = problem;
    this.current = undefined;
  }

  private startReading(): void {
    this.reading = this.read().finally(() => (this.reading = undefined));
  }

  private async read(): Promise<void> {
    const layout = this.ctx.layout();
    this.readAt = this.ctx.clock.now();
    let problem: string | undefined;
    let key: Buffer | undefined;
    try {
      ({ key, problem } = await this.readChecked());
    } catch (err) {
      // Not answering: keep the key we have (peers are how the node fills while the server is slow).
      if (this.current) return;
      problem = errorMessage(err);
      if (/EROFS|EACCES|EPERM/.test(problem)) problem += "; on a read-only or root_squash export, set peer_key to a local copy of the key and peer_dir to a directory the nodes can write (SECURITY.md)";
    }
    if (problem !== this.problem) {
      if (problem) this.ctx.logger.warn({ key: layout.keyPath, records: layout.recordsPath }, `peer fill off: ${problem}`);
      else this.ctx.logger.info({ key: layout.keyPath, records: layout.recordsPath }, "peer fill on: the fleet key is usable");
      this.problem = problem;
    }
    if (problem) key = undefined;
    if (key && this.current && !key.equals(this.current)) {
      this.ctx.logger.info({ key: layout.keyPath }, `the fleet key changed; the previous one is accepted for ${KEY_GRACE_MS / 60_000} more minutes`);
      this.previous = { key: this.current, until: this.ctx.clock.now() + KEY_GRACE_MS };
    }
    this.current = key;
  }

  /** The key, and the records' directory walked (and made if missing), each through the channel. */
  private async readChecked(): Promise<{ key?: Buffer; problem?: string }> {
    const { ctx } = this;
    const layout = ctx.layout();
    const read = await ctx.channel(() => readFleetKey(ctx.run, layout, process.getuid?.() ?? 0, ctx.timeoutMs(), ctx.lifetime), ctx.lifetime);
    if (read.kind === "problem") return { problem: read.problem };
    const walk = { op: "read-records" as const, walk: layout.recordsDir, maxFiles: 0, maxFileBytes: 0, maxTotalBytes: 0 };
    const dir = await ctx.channel(() => runFleetIo(ctx.run, walk, { timeoutMs: ctx.timeoutMs(), signal: ctx.lifetime }), ctx.lifetime);
    if (!dir.ok) return { problem: `${dir.refused.path} ${dir.refused.problem}; ${dir.refused.fix}` };
    return { key: read.bytes };
  }
}
