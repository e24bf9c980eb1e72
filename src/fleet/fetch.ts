import type { Hash } from "node:crypto";
import type { FileHandle } from "node:fs/promises";
import http from "node:http";
import { parseHostPort } from "../config.js";
import { sign } from "./auth.js";
import type { ImageIdentity } from "./records.js";
import { imageUrl, SHA_TRAILER } from "./server.js";
import { systemClock, type Clock } from "../lib/clock.js";

export type FetchOutcome =
  /** Every byte up to the image's size arrived; the sender's checksum, if it sent one. */
  | { kind: "complete"; sha256?: string }
  /** The peer has no slot free (503): try another. */
  | { kind: "busy" }
  /** The peer refused (401: the key; 404: it does not hold this version; ...). */
  | { kind: "refused"; status: number }
  /** The transfer broke off (the peer died, stalled, or cut it): resume elsewhere from where it stopped. */
  | { kind: "broken"; error: string };

export interface FetchOptions {
  node: string;
  id: ImageIdentity;
  key: Buffer;
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

/**
 * One ranged GET of an image from a peer, its bytes written into the copy
 * at their offset and hashed, in order. Never throws for what the peer does:
 * the outcome says what happened and how far it got.
 */
export async function fetchFromPeer(o: FetchOptions): Promise<FetchOutcome> {
  const { host, port } = parseHostPort(o.node, "peer");
  const target = imageUrl(o.id);
  const range = o.offset > 0 ? `bytes=${o.offset}-` : undefined;
  const now = (o.clock ?? systemClock).now();
  const headers: Record<string, string> = { authorization: sign(o.key, { method: "GET", path: target, range }, now) };
  if (range) headers.range = range;
  const abort = new AbortController();
  const cancel = () => abort.abort();
  o.signal?.addEventListener("abort", cancel, { once: true });
  let offset = o.offset;
  let stall: NodeJS.Timeout | undefined;
  const arm = () => {
    clearTimeout(stall);
    stall = setTimeout(() => abort.abort(new Error(`no data from ${o.node} for ${Math.round(o.stallMs / 1000)} s`)), o.stallMs);
  };
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
    for await (const chunk of res as AsyncIterable<Buffer>) {
      arm();
      if (offset + chunk.length > o.id.size) return { kind: "broken", error: `${o.node} sent more than the image's ${o.id.size} bytes` };
      await o.handle.write(chunk, 0, chunk.length, offset);
      o.hash.update(chunk);
      offset += chunk.length;
      o.onBytes(chunk.length);
    }
    if (!res.complete || offset !== o.id.size) return { kind: "broken", error: `${o.node} stopped at byte ${offset} of ${o.id.size}` };
    const sha = res.trailers[SHA_TRAILER];
    return { kind: "complete", sha256: typeof sha === "string" && /^[0-9a-f]{64}$/.test(sha) ? sha : undefined };
  } catch (err) {
    const reason = abort.signal.reason instanceof Error ? abort.signal.reason.message : err instanceof Error ? err.message : String(err);
    return { kind: "broken", error: `${o.node}: ${reason}` };
  } finally {
    clearTimeout(stall);
    o.signal?.removeEventListener("abort", cancel);
  }
}
