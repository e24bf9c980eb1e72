import type { Hash } from "node:crypto";
import type { FileHandle } from "node:fs/promises";
import http from "node:http";
import { parseHostPort } from "../config.js";
import { newNonce, sign, verifyChecksum } from "./auth.js";
import type { ImageIdentity } from "./records.js";
import { imageUrl, MIN_RATE_BYTES_S, SHA_SIG_TRAILER, SHA_TRAILER } from "./server.js";
import { systemClock, type Clock } from "../lib/clock.js";

export type FetchOutcome =
  /** Every byte up to the image's size arrived; the sender's checksum, if it sent one signed for this request. */
  | { kind: "complete"; sha256?: string }
  /** Every byte arrived, but the checksum's signature is not the fleet's for this request: the bytes are not to be believed. */
  | { kind: "forged"; error: string }
  /** The peer has no slot free (503): try another. */
  | { kind: "busy" }
  /** The peer refused (401: the key; 404: it does not hold this version; ...). */
  | { kind: "refused"; status: number }
  /** The transfer broke off (the peer died, stalled, or cut it): resume elsewhere from where it stopped. */
  | { kind: "broken"; error: string };

export interface FetchOptions {
  node: string;
  id: ImageIdentity;
  /** Signs the request. */
  key: Buffer;
  /** Any of them may have signed the checksum (the current key, the previous one for a while after a change). */
  keys: readonly Buffer[];
  /** This node's name: the request says who asks. */
  self: string;
  /** The first byte wanted; what came before is in the file and the hash already. */
  offset: number;
  /** The copy's temporary file, open for writing. */
  handle: FileHandle;
  hash: Hash;
  /** Each write's bytes (the caller's offset moves with them). */
  onBytes: (n: number) => void;
  /** Give up when nothing arrives for this long. */
  stallMs: number;
  signal?: AbortSignal;
  clock?: Clock;
}

/** A transfer's deadline: this, plus its bytes at the minimum rate. */
const DEADLINE_BASE_MS = 120_000;
/** The minimum rate is checked over windows this long (the first starts with the request). */
const RATE_WINDOW_MS = 30_000;

/**
 * One ranged GET of an image from a peer, its bytes written into the copy
 * at their offset and hashed, in order. Never throws for what the peer does:
 * the outcome says what happened and how far it got.
 */
export async function fetchFromPeer(o: FetchOptions): Promise<FetchOutcome> {
  const { host, port } = parseHostPort(o.node, "peer");
  const target = imageUrl(o.id);
  const range = o.offset > 0 ? `bytes=${o.offset}-` : undefined;
  const clock = o.clock ?? systemClock;
  const nonce = newNonce();
  const signed = { by: o.self, to: o.node };
  const headers: Record<string, string> = { authorization: sign(o.key, { method: "GET", path: target, range, ...signed }, clock.now(), nonce) };
  if (range) headers.range = range;
  const abort = new AbortController();
  const cancel = () => abort.abort();
  o.signal?.addEventListener("abort", cancel, { once: true });
  let stall: NodeJS.Timeout | undefined;
  const arm = () => {
    clearTimeout(stall);
    stall = setTimeout(() => abort.abort(new Error(`no data from ${o.node} for ${Math.round(o.stallMs / 1000)} s`)), o.stallMs);
  };
  // Besides the stall: the whole transfer within a deadline, and at least a minimum rate over every window, so that a trickle cannot hold a copy.
  const wantBytes = o.id.size - o.offset;
  const deadlineMs = DEADLINE_BASE_MS + (wantBytes / MIN_RATE_BYTES_S) * 1000;
  const deadline = setTimeout(() => abort.abort(new Error(`${o.node} did not send the image within ${Math.round(deadlineMs / 1000)} s`)), deadlineMs);
  try {
    arm();
    const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
      const req = http.get({ host, port, path: target, headers, signal: abort.signal, agent: false }, resolve);
      req.on("error", reject);
    });
    if (res.statusCode === 503) {
      res.resume();
      return { kind: "busy" };
    }
    if (res.statusCode !== (o.offset > 0 ? 206 : 200)) {
      res.resume();
      return { kind: "refused", status: res.statusCode ?? 0 };
    }
    const broken = await receive(o, res, arm, clock);
    if (broken !== undefined) return { kind: "broken", error: broken };
    return checkedChecksum(o, res, { nonce, ...signed });
  } catch (err) {
    const reason = abort.signal.reason instanceof Error ? abort.signal.reason.message : err instanceof Error ? err.message : String(err);
    return { kind: "broken", error: `${o.node}: ${reason}` };
  } finally {
    clearTimeout(stall);
    clearTimeout(deadline);
    o.signal?.removeEventListener("abort", cancel);
  }
}

/**
 * The body, written at its offsets and hashed in order, within the image's
 * size and at the minimum rate over every window. @returns what broke, if anything.
 */
async function receive(o: FetchOptions, res: http.IncomingMessage, arm: () => void, clock: Clock): Promise<string | undefined> {
  let offset = o.offset;
  const rate = { from: clock.monotonic(), bytes: 0 };
  for await (const chunk of res as AsyncIterable<Buffer>) {
    arm();
    if (offset + chunk.length > o.id.size) return `${o.node} sent more than the image's ${o.id.size} bytes`;
    await o.handle.write(chunk, 0, chunk.length, offset);
    o.hash.update(chunk);
    offset += chunk.length;
    o.onBytes(chunk.length);
    rate.bytes += chunk.length;
    const windowMs = clock.monotonic() - rate.from;
    if (windowMs >= RATE_WINDOW_MS) {
      if ((rate.bytes * 1000) / windowMs < MIN_RATE_BYTES_S) return `${o.node} sent ${rate.bytes} bytes in ${Math.round(windowMs / 1000)} s, below the minimum rate`;
      rate.from = clock.monotonic();
      rate.bytes = 0;
    }
  }
  if (!res.complete || offset !== o.id.size) return `${o.node} stopped at byte ${offset} of ${o.id.size}`;
  return undefined;
}

/** The checksum trailer: none (an old peer, or a copy not yet verified), or one signed for this very request. */
function checkedChecksum(o: FetchOptions, res: http.IncomingMessage, request: { nonce: string; by: string; to: string }): FetchOutcome {
  const sha = res.trailers[SHA_TRAILER];
  if (sha === undefined) return { kind: "complete" };
  if (typeof sha !== "string" || !/^[0-9a-f]{64}$/.test(sha)) return { kind: "forged", error: `${o.node} sent a malformed checksum` };
  const sig = res.trailers[SHA_SIG_TRAILER];
  if (!verifyChecksum(o.keys, typeof sig === "string" ? sig : undefined, { id: o.id, sha256: sha, ...request })) return { kind: "forged", error: `${o.node} sent a checksum not signed with the fleet key for this request` };
  return { kind: "complete", sha256: sha };
}
