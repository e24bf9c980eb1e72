/**
 * The fleet tests' nodes (fleet.test.ts, fleet-security.test.ts): real
 * daemons on one machine, each with its own cachedir, mountdir, state and
 * runtime directories and its own peer_listen port, sharing one datadir;
 * and what the tests read of them.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import http from "node:http";
import path from "node:path";
import type { StatusReport } from "../../src/report/status.js";
import { CLI, Daemon, stackAt, backingFileOf, type DaemonOptions, type MountRow, type TestRoot } from "./harness.js";

export interface Node {
  i: number;
  cache: string;
  mnt: string;
  run: string;
  address: string;
  d: Daemon;
}

/** Node `i`, listening on 127.0.0.1:`port`, with its own config file (Daemon.start writes one per test root). */
export function startNode(root: TestRoot, track: (d: Daemon) => Daemon, i: number, port: number, extra: Record<string, string | number> = {}, options: Omit<DaemonOptions, "args" | "config"> = {}): Node {
  const home = path.join(root.root, `node${i}`);
  const dirs = { cache: path.join(home, "cache"), mnt: path.join(home, "mnt"), run: path.join(home, "run"), state: path.join(home, "state") };
  for (const d of Object.values(dirs)) mkdirSync(d, { recursive: true });
  const address = `127.0.0.1:${port}`;
  const config = path.join(home, "scratch_manager.conf");
  writeFileSync(
    config,
    Daemon.standardConfig(root, {
      cachedir: dirs.cache,
      mountdir: dirs.mnt,
      state_dir: dirs.state,
      runtime_dir: dirs.run,
      peer_listen: address,
      command_timeout: 5,
      scan_timeout: 3,
      interval: 0.5,
      ...extra,
    }),
  );
  const d = track(new Daemon(root, { ...options, args: ["--config", config, "--verbose"] }));
  return { i, cache: dirs.cache, mnt: dirs.mnt, run: dirs.run, address, d };
}

export function status(n: Node): StatusReport {
  const r = spawnSync(process.execPath, [CLI, "status", "--json", "--runtime-dir", n.run], { encoding: "utf8", timeout: 10_000 });
  assert.equal(r.status, 0, `status --json: ${r.stderr}`);
  return JSON.parse(r.stdout) as StatusReport;
}

/** The status, or undefined before the node's first tick wrote it (for waitUntil). */
export function statusSoon(n: Node): StatusReport | undefined {
  return existsSync(path.join(n.run, "status.json")) ? status(n) : undefined;
}

export function statusText(n: Node): string {
  const r = spawnSync(process.execPath, [CLI, "status", "--runtime-dir", n.run], { encoding: "utf8", timeout: 10_000 });
  assert.equal(r.status, 0, `status: ${r.stderr}`);
  return r.stdout;
}

/** The dataset is served from this node's cache: the top mount at mnt/<name> is a loop device on a file of its cachedir. */
export function cachedOn(n: Node, name: string): boolean {
  const top = stackAt(path.join(n.mnt, name)).at(-1) as MountRow | undefined;
  const file = top && backingFileOf(top);
  return file !== undefined && file.startsWith(`${n.cache}/`);
}

/** What the counting FUSE file server (faultfs.py --counts) has served. */
export function bytesServed(counts: string): number {
  return existsSync(counts) ? (JSON.parse(readFileSync(counts, "utf8")) as { bytes_read: number }).bytes_read : 0;
}

export const sameBytes = (a: string, b: string): boolean => readFileSync(a).equals(readFileSync(b));

/** One GET to a node's peer port, as a peer would (or would not) sign it, read to the end. */
export function get(address: string, target: string, headers: Record<string, string> = {}): Promise<{ status: number; body: Buffer }> {
  const [host, port] = address.split(":") as [string, string];
  return new Promise((resolve, reject) => {
    const req = http.get({ host, port: Number(port), path: target, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
      res.on("error", reject);
    });
    req.on("error", reject);
  });
}
