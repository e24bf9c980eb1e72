/**
 * `scratch_manager check [-c FILE]`: the configuration and the machine it
 * would run on, checked without starting (as `nginx -t`, `cvmfs_config
 * chksetup`): each finding one line, exit status 1 if any is an error.
 * Every look at a directory runs in a child with a deadline: a dead file
 * server makes a warning, never a hung check.
 */
import { access, constants, readFile } from "node:fs/promises";
import path from "node:path";
import { loadConfigAndWarnings, type Config } from "../config.js";
import { errorMessage, UsageError } from "../errors.js";
import { run as realRun, type Runner } from "../lib/exec.js";
import { fsUsage } from "../observe/snapshot.js";
import { listDirectory } from "../observe/scan.js";
import { capacityBytes } from "../plan/policy.js";
import { fleetLayout, readFleetKey } from "../fleet/shared-dir.js";
import { formatBytes } from "../units.js";

export interface CheckFlags {
  config?: string;
  quiet?: boolean;
}

export type Level = "ok" | "warning" | "error";

export interface Finding {
  level: Level;
  what: string;
  detail: string;
}

/** A look at a directory or a program that takes longer is reported as not answering. */
const CHECK_TIMEOUT_MS = 5000;

/** File systems that are not local: a cache on one would read through the network it is meant to spare. */
const NETWORK_FS = /^(nfs4?|cifs|smb3?|lustre|ceph|gpfs|beegfs|glusterfs|9p|afs|fuse(\..*)?|fuseblk|sshfs|davfs|ncpfs|orangefs|pvfs2)$/;

/** The programs the daemon runs (rsync only when copy_bwlimit is set). */
export function programsNeeded(config: Pick<Config, "copyBwlimit">): string[] {
  return ["mount", "umount", "losetup", "find", "stat", "cp", ...(config.copyBwlimit > 0 ? ["rsync"] : [])];
}

async function onPath(program: string, envPath: string): Promise<boolean> {
  for (const dir of envPath.split(":").filter(Boolean)) {
    try {
      await access(path.join(dir, program), constants.X_OK);
      return true;
    } catch {
      // not in this directory
    }
  }
  return false;
}

/** The file system a directory is on, by the mount table (findmnt reads it; no read of the directory's server). */
async function fileSystemOf(run: Runner, dir: string): Promise<{ fstype: string; source: string } | undefined> {
  try {
    const { stdout } = await run("findmnt", ["--noheadings", "--output", "FSTYPE,SOURCE", "--target", dir], { timeoutMs: CHECK_TIMEOUT_MS });
    const [fstype, source] = stdout.trim().split(/\s+/);
    return fstype ? { fstype, source: source ?? "?" } : undefined;
  } catch {
    return undefined;
  }
}

async function checkDatadir(run: Runner, config: Config): Promise<Finding> {
  const what = `datadir ${config.datadir}`;
  try {
    const listing = await listDirectory(run, config.datadir, CHECK_TIMEOUT_MS);
    const images = listing.entries.filter((e) => e.type === "file" && !e.file.startsWith("."));
    const fs = await fileSystemOf(run, config.datadir);
    return { level: "ok", what, detail: `${images.length} image file(s)${fs ? `, on ${fs.fstype} (${fs.source})` : ""}` };
  } catch (err) {
    // The daemon starts all the same: it serves what is mounted and waits for the server.
    return { level: "warning", what, detail: `not answering (${errorMessage(err)}); the daemon would start and wait for it` };
  }
}

async function checkCachedir(run: Runner, config: Config): Promise<Finding[]> {
  const what = `cachedir ${config.cachedir}`;
  const fs = await fileSystemOf(run, config.cachedir);
  const out: Finding[] = [];
  if (fs && NETWORK_FS.test(fs.fstype)) out.push({ level: "error", what, detail: `is on ${fs.fstype} (${fs.source}), not a local disk; the cache must be on the node's own SSD` });
  try {
    const usage = await fsUsage(run, config.cachedir, CHECK_TIMEOUT_MS);
    const capacity = capacityBytes(config.capacity, usage.totalBytes);
    const wanted = config.capacity.kind === "bytes" ? formatBytes(config.capacity.bytes) : `${config.capacity.percent}%`;
    if (out.length === 0) out.push({ level: "ok", what, detail: `${fs ? `${fs.fstype} (${fs.source}), ` : ""}${formatBytes(usage.freeBytes)} free of ${formatBytes(usage.totalBytes)}` });
    // The daemon runs all the same, within the free space: worth fixing, not a reason to refuse a reload.
    if (capacity > usage.totalBytes) out.push({ level: "warning", what: `capacity ${wanted}`, detail: `is more than cachedir's file system holds (${formatBytes(usage.totalBytes)}); the cache will be bounded by its free space` });
    else out.push({ level: "ok", what: `capacity ${wanted}`, detail: `${formatBytes(capacity)} for cached copies` });
  } catch (err) {
    out.push({ level: "error", what, detail: `cannot be measured (${errorMessage(err)})` });
  }
  return out;
}

async function checkPeerFill(run: Runner, config: Config): Promise<Finding> {
  if (config.peerListen === undefined) return { level: "ok", what: "peer fill", detail: "off (peer_listen is not set)" };
  const layout = fleetLayout({ ...config, peerDirOwner: typeof config.peerDirOwner === "number" ? config.peerDirOwner : 0 });
  try {
    const read = await readFleetKey(run, layout, process.getuid?.() ?? 0, CHECK_TIMEOUT_MS);
    if (read.kind === "problem") return { level: "warning", what: "peer fill", detail: `would be off: ${read.problem}` };
    return { level: "ok", what: "peer fill", detail: `on ${config.peerListen}, the fleet key ${layout.keyPath} is usable` };
  } catch (err) {
    return { level: "warning", what: "peer fill", detail: `the fleet key ${layout.keyPath} cannot be read now (${errorMessage(err)})` };
  }
}

async function checkKernel(): Promise<Finding> {
  const known = await readFile("/proc/filesystems", "utf8").catch(() => "");
  const has = (fs: string) => new RegExp(`\\t${fs}$`, "m").test(known);
  const missing = ["squashfs", "erofs"].filter((fs) => !has(fs));
  // Modules load on first mount: a missing one is worth knowing, not fatal.
  return missing.length === 0 ? { level: "ok", what: "kernel", detail: "squashfs and erofs" } : { level: "warning", what: "kernel", detail: `${missing.join(", ")} not loaded yet (modprobe ${missing.join(" ")}); images of that kind mount only if it loads` };
}

/** Every finding about `configPath` and this machine. */
export async function checkFindings(configPath: string | undefined, deps: { run?: Runner; envPath?: string } = {}): Promise<Finding[]> {
  const run = deps.run ?? realRun;
  let config: Config;
  let warnings: string[];
  try {
    ({ config, warnings } = await loadConfigAndWarnings({ configPath, flags: {}, verbose: false }));
  } catch (err) {
    if (err instanceof UsageError) return [{ level: "error", what: "configuration", detail: err.message.replace(/^config: /, "") }];
    throw err;
  }
  const findings: Finding[] = [
    { level: "ok", what: "configuration", detail: `${configPath ?? "/etc/scratch_manager.conf"} is valid` },
    ...warnings.map((w): Finding => ({ level: "warning", what: "configuration", detail: w.replace(/^config: /, "") })),
  ];
  findings.push(await checkDatadir(run, config), ...(await checkCachedir(run, config)));
  findings.push({ level: "ok", what: `mountdir ${config.mountdir}`, detail: "exists" });
  const envPath = deps.envPath ?? process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin";
  const missing: string[] = [];
  for (const p of programsNeeded(config)) if (!(await onPath(p, envPath))) missing.push(p);
  findings.push(missing.length === 0 ? { level: "ok", what: "programs", detail: programsNeeded(config).join(", ") } : { level: "error", what: "programs", detail: `${missing.join(", ")} not found on PATH` });
  findings.push(await checkKernel(), await checkPeerFill(run, config));
  return findings;
}

export function renderFindings(findings: readonly Finding[], quiet: boolean): string {
  const errors = findings.filter((f) => f.level === "error").length;
  const warnings = findings.filter((f) => f.level === "warning").length;
  const lines = findings.filter((f) => !quiet || f.level !== "ok").map((f) => `${f.level.padEnd(7)} ${f.what}: ${f.detail}`);
  if (!quiet || errors > 0) lines.push(errors > 0 ? `${errors} error(s), ${warnings} warning(s): the daemon would not run as configured` : `ok, ${warnings} warning(s)`);
  return lines.length > 0 ? `${lines.join("\n")}\n` : "";
}

/** `scratch_manager check [-c FILE] [--quiet]`: exit status 1 when any finding is an error. */
export async function checkCommand(flags: CheckFlags): Promise<void> {
  const findings = await checkFindings(flags.config);
  process.stdout.write(renderFindings(findings, flags.quiet === true));
  if (findings.some((f) => f.level === "error")) throw new UsageError("check: the configuration or the machine is not ready (see above)", 1);
}
