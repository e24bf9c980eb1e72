import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { parsePeerName } from "./peer-name.js";
import type { ImageIdentity } from "./records.js";

/**
 * Requests between peers carry an HMAC-SHA256, under the fleet's key, of
 * what they ask for, when, by whom and of whom:
 *
 *   Authorization: SM-HMAC t=<ms since the epoch>,n=<nonce>,by=<HOST:PORT>,s=<hex HMAC>
 *
 * over "GET\n<path and query>\n<Range or ''>\n<t>\n<nonce>\n<by>\n<to>",
 * `to` being the server's own name: a request captured on the way to one
 * node is refused by every other. Only a holder of the key can make one; a
 * request more than MAX_SKEW_MS old or new is refused, and so is a nonce
 * already seen within that time (a replay). No secret travels.
 *
 * The server's answer carries the image's SHA-256 signed the same way, tied
 * to the request's nonce and both names (signChecksum): a checksum that did
 * not come from a key holder, for this very request, is not believed.
 */
export const AUTH_SCHEME = "SM-HMAC";

/** How far a request's time may be from the server's clock (nodes run NTP; a minute is generous). */
export const MAX_SKEW_MS = 60_000;

export interface SignedRequest {
  method: string;
  /** Path and query, as sent. */
  path: string;
  range?: string;
  /** The requesting node's name (HOST:PORT). */
  by: string;
  /** The name of the node asked. */
  to: string;
}

function requestMac(key: Buffer, req: SignedRequest, t: number, nonce: string): Buffer {
  return createHmac("sha256", key).update(`${req.method}\n${req.path}\n${req.range ?? ""}\n${t}\n${nonce}\n${req.by}\n${req.to}`).digest();
}

export function newNonce(): string {
  return randomBytes(12).toString("hex");
}

/** The Authorization header for a request made now. */
export function sign(key: Buffer, req: SignedRequest, now: number, nonce = newNonce()): string {
  return `${AUTH_SCHEME} t=${now},n=${nonce},by=${req.by},s=${requestMac(key, req, now, nonce).toString("hex")}`;
}

export type Verdict = { ok: true; nonce: string; by: string; key: Buffer } | { ok: false; reason: "missing" | "malformed" | "expired" | "replayed" | "bad-signature" };

/** Checks Authorization headers; remembers the nonces it accepted for MAX_SKEW_MS, so that none is accepted twice. */
export class Verifier {
  private readonly seen = new Map<string, number>();

  /** `req` without `by`: that comes from the header, and is part of what is signed. */
  verify(keys: readonly Buffer[], header: string | undefined, req: Omit<SignedRequest, "by">, now: number): Verdict {
    if (!header) return { ok: false, reason: "missing" };
    const m = /^SM-HMAC t=(\d{1,16}),n=([0-9a-f]{16,64}),by=([^,\s]{1,270}),s=([0-9a-f]{64})$/.exec(header.trim());
    if (!m || parsePeerName(m[3] as string) === undefined) return { ok: false, reason: "malformed" };
    const t = Number(m[1]);
    const nonce = m[2] as string;
    const by = m[3] as string;
    if (Math.abs(now - t) > MAX_SKEW_MS) return { ok: false, reason: "expired" };
    const given = Buffer.from(m[4] as string, "hex");
    const key = keys.find((k) => timingSafeEqual(requestMac(k, { ...req, by }, t, nonce), given));
    if (!key) return { ok: false, reason: "bad-signature" };
    this.forgetOld(now);
    if (this.seen.has(nonce)) return { ok: false, reason: "replayed" };
    this.seen.set(nonce, t);
    // The key that verified the request signs the answer's checksum: a node still on the previous key (a rotation under way) can check it.
    return { ok: true, nonce, by, key };
  }

  /** Nonces older than the skew window cannot come back (their time is refused): forgotten, so the set stays small. */
  private forgetOld(now: number): void {
    for (const [nonce, t] of this.seen) {
      if (now - t > MAX_SKEW_MS) this.seen.delete(nonce);
    }
  }
}

export interface SignedChecksum {
  id: ImageIdentity;
  sha256: string;
  /** The request's nonce: the signature answers that request only. */
  nonce: string;
  /** The requesting node. */
  by: string;
  /** The serving node. */
  to: string;
}

function checksumMac(key: Buffer, c: SignedChecksum): Buffer {
  const mtimeS = Math.floor(c.id.mtimeMs / 1000);
  return createHmac("sha256", key).update(`sha256\n${c.id.file}\n${c.id.size}\n${mtimeS}\n${c.sha256}\n${c.nonce}\n${c.by}\n${c.to}`).digest();
}

export function signChecksum(key: Buffer, c: SignedChecksum): string {
  return checksumMac(key, c).toString("hex");
}

export function verifyChecksum(keys: readonly Buffer[], sig: string | undefined, c: SignedChecksum): boolean {
  if (sig === undefined || !/^[0-9a-f]{64}$/.test(sig)) return false;
  const given = Buffer.from(sig, "hex");
  return keys.some((key) => timingSafeEqual(checksumMac(key, c), given));
}
