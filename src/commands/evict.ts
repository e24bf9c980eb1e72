/**
 * `scratch_manager evict NAME...` and `scratch_manager release [--all]`:
 * asked of the running daemon (state/requests.ts), which owns the mounts and
 * the cache and does it within its rules; refused, clearly, when no daemon runs.
 */
import { randomBytes } from "node:crypto";
import { configuredDir, DEFAULT_CONFIG_PATH, readConfigFile } from "../config.js";
import { errnoCode, errorMessage, UsageError } from "../errors.js";
import { systemClock } from "../lib/clock.js";
import { validName } from "../names.js";
import { readMountinfo } from "../observe/mountinfo.js";
import { processAlive, readStatusFile } from "../report/status-file.js";
import type { StatusReport } from "../report/status.js";
import { takeReply, writeRequest, type Reply, type Request } from "../state/requests.js";

export interface EvictFlags {
  force?: boolean;
  all?: boolean;
  config?: string;
  runtimeDir?: string;
}

/** How long the command waits for the daemon's answer, and then for the work to be done. */
const REPLY_TIMEOUT_MS = 30_000;
const DONE_TIMEOUT_MS = 120_000;
const POLL_MS = 200;

/** The running daemon's report, or a one-line refusal naming what to do instead. */
async function runningDaemon(command: string, runtimeDir: string, instead: string): Promise<StatusReport> {
  try {
    return await readStatusFile(runtimeDir);
  } catch (err) {
    throw new UsageError(`${command}: ${errorMessage(err)}; ${instead}`, 1);
  }
}

/** Leaves the request, signals the daemon, and waits for its reply. */
async function ask(command: string, runtimeDir: string, pid: number, request: Request): Promise<Reply> {
  try {
    await writeRequest(runtimeDir, request);
  } catch (err) {
    const code = errnoCode(err);
    if (code === "EACCES" || code === "EPERM" || code === "EROFS") throw new UsageError(`${command}: cannot leave a request in ${runtimeDir} (${code}); run it as root`, 1);
    throw err;
  }
  process.kill(pid, "SIGUSR2");
  const deadline = systemClock.monotonic() + REPLY_TIMEOUT_MS;
  while (systemClock.monotonic() < deadline) {
    const reply = await takeReply(runtimeDir, request.id);
    if (reply) return reply;
    if (!processAlive(pid)) throw new UsageError(`${command}: the daemon (pid ${pid}) exited before answering`, 1);
    await systemClock.sleep(POLL_MS);
  }
  throw new UsageError(`${command}: the daemon (pid ${pid}) did not answer within ${REPLY_TIMEOUT_MS / 1000} s; it may be stuck behind the file server (journalctl -u scratch_manager)`, 1);
}

const newId = () => `${process.pid}-${randomBytes(6).toString("hex")}`;

async function statusOf(runtimeDir: string): Promise<StatusReport | undefined> {
  return readStatusFile(runtimeDir).catch(() => undefined);
}

/** `scratch_manager evict NAME... [--force]`: their cached copies dropped now (a pinned one only with --force, which unpins it). */
export async function evictCommand(names: string[], flags: EvictFlags): Promise<void> {
  if (names.length === 0) throw new UsageError("evict: name the datasets whose cached copy to drop, e.g. scratch_manager evict coco");
  for (const name of names) {
    const invalid = validName(name);
    if (invalid) throw new UsageError(`evict: ${JSON.stringify(name)} is not a dataset name (${invalid})`);
  }
  const runtimeDir = await configuredDir("runtime_dir", flags.runtimeDir, flags.config);
  const report = await runningDaemon("evict", runtimeDir, "there is no cache to drop; a stopped daemon's cached copies are files in cachedir");
  const reply = await ask("evict", runtimeDir, report.pid, { id: newId(), kind: "evict", names, force: flags.force === true });
  for (const line of reply.lines) process.stdout.write(`${line}\n`);
  const evicting = names.filter((n) => reply.lines.some((l) => l.startsWith(`${n}: evicting`)));
  const deadline = systemClock.monotonic() + DONE_TIMEOUT_MS;
  while (evicting.length > 0 && systemClock.monotonic() < deadline) {
    const now = await statusOf(runtimeDir);
    const left = evicting.filter((n) => now?.datasets.find((d) => d.name === n && d.state !== "slow") !== undefined);
    if (left.length === 0) break;
    await systemClock.sleep(POLL_MS);
  }
  for (const name of evicting) process.stdout.write(`evicted ${name}\n`);
  if (!reply.ok) throw new UsageError("evict: some datasets were not evicted (see above)", 1);
}

/** Mounts of loop devices under `mountdir`, from this process's mount table. */
async function loopMountsUnder(mountdir: string): Promise<number> {
  return (await readMountinfo()).filter((m) => m.mountPoint.startsWith(`${mountdir}/`) && /^\/dev\/loop\d+$/.test(m.source)).length;
}

/**
 * `scratch_manager release [--all]`: the daemon drops the cache (every cache
 * mount lazily unmounted, every cached copy deleted) and stops; with --all it
 * unmounts every mount of ours too (an uninstall, or before handing the node
 * back to the original on a clean slate). Files open on a mount read on
 * until closed (lazy unmounts).
 */
export async function releaseCommand(flags: EvictFlags): Promise<void> {
  const runtimeDir = await configuredDir("runtime_dir", flags.runtimeDir, flags.config);
  const mountdir = (await readConfigFile(flags.config ?? DEFAULT_CONFIG_PATH, false).catch(() => ({ mountdir: undefined }))).mountdir;
  const report = await runningDaemon("release", runtimeDir, "start it first (systemctl start scratch_manager), or unmount by hand: umount --lazy each mount under mountdir, top first");
  const reply = await ask("release", runtimeDir, report.pid, { id: newId(), kind: "release", all: flags.all === true });
  for (const line of reply.lines) process.stdout.write(`${line}\n`);
  const deadline = systemClock.monotonic() + DONE_TIMEOUT_MS;
  while (processAlive(report.pid) && systemClock.monotonic() < deadline) await systemClock.sleep(POLL_MS);
  if (processAlive(report.pid)) throw new UsageError(`release: the daemon (pid ${report.pid}) has not finished within ${DONE_TIMEOUT_MS / 1000} s; see journalctl -u scratch_manager`, 1);
  const left = mountdir === undefined ? undefined : await loopMountsUnder(mountdir);
  process.stdout.write(`released; the daemon has stopped${left === undefined ? "" : `; ${left} loop mount(s) left under ${mountdir}`}. systemctl disable scratch_manager keeps it stopped.\n`);
}
