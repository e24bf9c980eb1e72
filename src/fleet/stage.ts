/**
 * Pre-staging's messages between nodes (issue 21): the stager (the one
 * daemon with slurm_stage, which reads the Slurm queue for the cluster)
 * hands each node its part: the datasets of the jobs planned to start there
 * soon. One signed GET per node whose part changed, on the peer listener,
 * authenticated as peer fill is (the fleet key, SM-HMAC: auth.ts), the part
 * in the query: `GET /v1/stage?e=<base64url JSON>`. Bounded: at most
 * MAX_ENTRIES entries, names and numbers checked; a request that is not
 * one is refused.
 */
import http from "node:http";
import { parseHostPort } from "../config.js";
import { sign } from "./auth.js";
import type { StagedEntry } from "../slurm/queue.js";

export const STAGE_PATH = "/v1/stage";
/** Entries one request carries (a node's part: the jobs about to start there). */
export const MAX_ENTRIES = 64;

export function stageUrl(entries: readonly StagedEntry[]): string {
  const compact = entries.slice(0, MAX_ENTRIES).map((e) => [e.dataset, e.jobId, e.startAt]);
  return `${STAGE_PATH}?e=${Buffer.from(JSON.stringify(compact)).toString("base64url")}`;
}

/** The entries of a stage request's path; undefined when it is not one. Pure. */
export function parseStageUrl(target: string): StagedEntry[] | undefined {
  let url: URL;
  try {
    url = new URL(target, "http://peer");
  } catch {
    return undefined;
  }
  if (url.pathname !== STAGE_PATH) return undefined;
  const e = url.searchParams.get("e");
  if (e === null || e.length > 16_384) return undefined;
  let data: unknown;
  try {
    data = JSON.parse(Buffer.from(e, "base64url").toString("utf8"));
  } catch {
    return undefined;
  }
  if (!Array.isArray(data) || data.length > MAX_ENTRIES) return undefined;
  const entries: StagedEntry[] = [];
  for (const item of data) {
    if (!Array.isArray(item) || item.length !== 3) return undefined;
    const [dataset, jobId, startAt] = item as [unknown, unknown, unknown];
    if (typeof dataset !== "string" || !/^[^/\0]{1,255}$/.test(dataset) || dataset === "." || dataset === "..") return undefined;
    if (typeof jobId !== "number" || !Number.isSafeInteger(jobId) || jobId < 0) return undefined;
    if (typeof startAt !== "number" || !Number.isSafeInteger(startAt) || startAt < 0) return undefined;
    entries.push({ dataset, jobId, startAt });
  }
  return entries;
}

/** One signed stage request to `to` (HOST:PORT), from `by`; "ok", or why not. */
export async function sendStage(key: Buffer, by: string, to: string, entries: readonly StagedEntry[], now: number, timeoutMs: number): Promise<"ok" | string> {
  const { host, port } = parseHostPort(to, "peer");
  const path = stageUrl(entries);
  const authorization = sign(key, { method: "GET", path, by, to }, now);
  return new Promise((resolve) => {
    const req = http.get({ host, port, path, headers: { authorization }, timeout: timeoutMs }, (res) => {
      res.resume();
      resolve(res.statusCode === 204 ? "ok" : `HTTP ${res.statusCode ?? "?"}`);
    });
    req.on("timeout", () => req.destroy(new Error(`no answer in ${Math.round(timeoutMs / 1000)} s`)));
    req.on("error", (err) => resolve(err.message));
  });
}
