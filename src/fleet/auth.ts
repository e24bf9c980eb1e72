import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";

/**
 * Requests between peers carry an HMAC-SHA256, under the fleet's key, of
 * what they ask for and when:
 *
 *   Authorization: SM-HMAC t=<ms since the epoch>,n=<nonce>,s=<hex HMAC>
 *
 * over "GET\n<path and query>\n<Range header or ''>\n<t>\n<nonce>". Only a
 * holder of the key (root on the cluster's nodes) can make one; a request
 * more than MAX_SKEW_MS old or new is refused, and so is a nonce already
 * seen within that time (a replay). No secret travels; the bytes served are
 * checked against the image's SHA-256 by whoever receives them.
 */
export const AUTH_SCHEME = "SM-HMAC";

/** How far a request's time may be from the server's clock (nodes run NTP; a minute is generous). */
export const MAX_SKEW_MS = 60_000;

export interface SignedRequest {
  method: string;
  /** Path and query, as sent. */
  path: string;
  range?: string;
}

function mac(key: Buffer, req: SignedRequest, t: number, nonce: string): Buffer {
  return createHmac("sha256", key).update(`${req.method}\n${req.path}\n${req.range ?? ""}\n${t}\n${nonce}`).digest();
}

/** The Authorization header for a request made now. */
export function sign(key: Buffer, req: SignedRequest, now: number, nonce = randomBytes(12).toString("hex")): string {
  return `${AUTH_SCHEME} t=${now},n=${nonce},s=${mac(key, req, now, nonce).toString("hex")}`;
}

export type Verdict = { ok: true } | { ok: false; reason: "missing" | "malformed" | "expired" | "replayed" | "bad-signature" };

/** Checks Authorization headers; remembers the nonces it accepted for MAX_SKEW_MS, so that none is accepted twice. */
export class Verifier {
  private readonly seen = new Map<string, number>();

  verify(keys: readonly Buffer[], header: string | undefined, req: SignedRequest, now: number): Verdict {
    if (!header) return { ok: false, reason: "missing" };
    const m = /^SM-HMAC t=(\d{1,16}),n=([0-9a-f]{16,64}),s=([0-9a-f]{64})$/.exec(header.trim());
    if (!m) return { ok: false, reason: "malformed" };
    const t = Number(m[1]);
    const nonce = m[2] as string;
    if (Math.abs(now - t) > MAX_SKEW_MS) return { ok: false, reason: "expired" };
    const given = Buffer.from(m[3] as string, "hex");
    if (!keys.some((key) => timingSafeEqual(mac(key, req, t, nonce), given))) return { ok: false, reason: "bad-signature" };
    this.forgetOld(now);
    if (this.seen.has(nonce)) return { ok: false, reason: "replayed" };
    this.seen.set(nonce, t);
    return { ok: true };
  }

  /** Nonces older than the skew window cannot come back (their time is refused): forgotten, so the set stays small. */
  private forgetOld(now: number): void {
    for (const [nonce, t] of this.seen) {
      if (now - t > MAX_SKEW_MS) this.seen.delete(nonce);
    }
  }
}
