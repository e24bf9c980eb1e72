/**
 * Which disk holds cachedir (model, serial) and whether it predicts its own
 * failure (SMART), through the systeminformation package. An early warning
 * beside the probes (observe/probe.ts), whose evidence is reads that have
 * already failed.
 *
 * Read rarely and off the tick's path: diskLayout runs `lsblk -ablJO`, then
 * `smartctl -a -j` for each disk, through a shell and with no timeout of its
 * own (so outside src/lib/exec.ts: the library starts them). On a test VM
 * with 10,001 loop devices, lsblk -O alone took 32 s, and its 17 MB of output
 * passed the library's 1 MiB buffer, so diskLayout answered [] (see
 * test/fixtures/systeminformation/). The timeout below bounds our wait, not
 * those programs.
 */
import si from "systeminformation";
import { printable } from "../lib/text.js";
import type { Clock } from "../lib/clock.js";
import type { MountEntry } from "./mountinfo.js";

export type SmartVerdict = "ok" | "predicted-failure" | "unknown";

export interface CacheDeviceHealth {
  /** The block device backing cachedir, e.g. "nvme0n1p2"; the mount source when it is none ("tmpfs"). */
  device: string;
  /** The whole disk, e.g. "/dev/nvme0n1"; for a RAID array, the member disk the verdict rests on. */
  disk?: string;
  model?: string;
  serial?: string;
  smart: SmartVerdict;
  /** One line for logs: the device, its model and the evidence. */
  message: string;
}

/** The mountinfo fields of the file system holding cachedir. */
export type CacheMount = Pick<MountEntry, "source" | "majorMinor">;

/** The two calls of systeminformation used here; tests pass a fake. */
export interface DeviceInfoSource {
  blockDevices(): Promise<unknown>;
  diskLayout(): Promise<unknown>;
}

/** Bound of one string from the library (a model, a serial: they come from the hardware). */
export const MAX_TEXT = 200;
/** Bound of `message` (a RAID array lists each member disk). */
export const MAX_MESSAGE = 1000;

type Fields = Record<string, unknown>;

/** lsblk's view of one block device (si.blockDevices()). */
interface Block {
  name: string;
  /** "disk", "part", "loop", "lvm", "crypt", "raid1", ... */
  type: string;
  /** The whole disk of a disk or partition, as the library matched it by name prefix ("/dev/sda"). */
  device: string;
  model: string;
  serial: string;
  /** For a RAID member (fsType linux_raid_member): its array's name, set from `mdadm --detail`. */
  group: string;
}

/** diskLayout's view of one disk, with the SMART verdict and what it rests on. */
interface Layout {
  device: string;
  model: string;
  serial: string;
  smart: SmartVerdict;
  evidence: string[];
}

function fields(value: unknown): Fields | undefined {
  return typeof value === "object" && value !== null && !Array.isArray(value) ? (value as Fields) : undefined;
}

/** The objects of an array; anything else (not an array, null entries) dropped. */
function records(value: unknown): Fields[] {
  return Array.isArray(value) ? value.map(fields).filter((f): f is Fields => f !== undefined) : [];
}

function text(value: unknown): string {
  return typeof value === "string" ? printable(value.trim(), MAX_TEXT) : "";
}

function count(value: unknown): number | undefined {
  return typeof value === "number" && Number.isFinite(value) ? value : undefined;
}

function toBlock(f: Fields): Block {
  return { name: text(f.name), type: text(f.type).toLowerCase(), device: text(f.device), model: text(f.model), serial: text(f.serial), group: text(f.group) };
}

function toLayout(f: Fields): Layout {
  const status = text(f.smartStatus).toLowerCase();
  const smartData = fields(f.smartData);
  const passed = fields(smartData?.smart_status)?.passed;
  // The library sets smartStatus from smartData.smart_status.passed, or from
  // `smartctl -H` when the JSON does not parse; either is taken.
  const smart: SmartVerdict = status === "ok" || passed === true ? "ok" : status === "predicted failure" || passed === false ? "predicted-failure" : "unknown";
  return { device: text(f.device), model: text(f.name), serial: text(f.serialNum), smart, evidence: smart === "predicted-failure" ? smartEvidence(smartData) : [] };
}

/** Bits of the NVMe SMART log's Critical Warning (NVMe base specification, Get Log Page 02h). */
const NVME_WARNINGS = ["spare below threshold", "temperature", "reliability degraded", "read-only", "volatile backup failed", "PMR read-only"];

/** Why smartctl says the disk is failing, from its JSON (`smartctl -a -j`, as the library keeps it in smartData). */
function smartEvidence(smartData: Fields | undefined): string[] {
  if (!smartData) return ["smartctl -H: FAILED"];
  const evidence = ["smartctl: FAILED"];
  const nvme = fields(smartData.nvme_smart_health_information_log);
  const warning = count(nvme?.critical_warning);
  if (warning) {
    const names = NVME_WARNINGS.filter((_, bit) => warning & (1 << bit));
    evidence.push(`NVMe critical warning 0x${warning.toString(16).padStart(2, "0")}${names.length ? ` (${names.join(", ")})` : ""}`);
  }
  const used = count(nvme?.percentage_used);
  if (used !== undefined && used >= 100) evidence.push(`${used}% of rated endurance used`);
  const mediaErrors = count(nvme?.media_errors);
  if (mediaErrors) evidence.push(`${mediaErrors} media errors`);
  for (const a of records(fields(smartData.ata_smart_attributes)?.table)) {
    // when_failed: "now" (value at or under threshold), "past" (was), "" (never).
    const when = text(a.when_failed);
    if (when === "now" || when === "past") evidence.push(`${text(a.name) || `attribute ${count(a.id)}`} ${when === "now" ? "failing now" : "failed in the past"} (value ${count(a.value)}, threshold ${count(a.thresh)})`);
  }
  return evidence;
}

/**
 * The lsblk name of a mount source: /dev/nvme0n1p2 → nvme0n1p2,
 * /dev/mapper/vg-scratch → vg-scratch, /dev/vg/scratch → vg-scratch (LVM's
 * name under /dev/mapper doubles the dashes within each part). Not a /dev
 * path (tmpfs, a network file system): undefined.
 */
function blockName(source: string): string | undefined {
  if (!source.startsWith("/dev/")) return undefined;
  const parts = source.slice("/dev/".length).split("/");
  if (parts.length === 2 && parts[0] === "mapper") return parts[1];
  if (parts.length === 2 && parts[0] !== "disk") return parts.map((p) => p.replaceAll("-", "--")).join("-");
  return parts.join("/");
}

/** lsblk names a partition after its disk: sda1, vda2; with a "p" when the disk's name ends in a digit: nvme0n1p2, mmcblk0p1, md0p1. */
function diskNameOf(partition: string): string | undefined {
  return (/^(.*\d)p\d+$/.exec(partition) ?? /^(.*\D)\d+$/.exec(partition))?.[1];
}

/**
 * The whole disks beneath a block device, or why none are known. A
 * partition's disk is found by name (the library's `device` is a name-prefix
 * match too, kept for names this does not parse); a RAID array's disks
 * through its members, whose `group` names it. LVM, dm-crypt and multipath
 * stack on devices that lsblk's flat list (`-P`) does not link.
 */
function disksBeneath(block: Block, byName: Map<string, Block>, depth = 0): { disks: string[]; why?: string } {
  if (depth > 3) return { disks: [], why: "devices stacked too deep" };
  if (block.type === "disk") return { disks: [`/dev/${block.name}`] };
  if (block.type === "part") {
    const derived = diskNameOf(block.name);
    const parent = (derived !== undefined ? byName.get(derived) : undefined) ?? byName.get(block.device.replace(/^\/dev\//, ""));
    if (parent && parent.type.startsWith("raid")) return disksBeneath(parent, byName, depth + 1);
    if (parent) return { disks: [`/dev/${parent.name}`] };
    if (derived !== undefined) return { disks: [`/dev/${derived}`] };
    return { disks: [], why: "a partition of no listed disk" };
  }
  if (block.type.startsWith("raid")) {
    const members = [...byName.values()].filter((b) => b.group === block.name);
    if (members.length === 0) return { disks: [], why: "its members are not known (mdadm --detail gave none)" };
    return { disks: [...new Set(members.flatMap((m) => disksBeneath(m, byName, depth + 1).disks))] };
  }
  return { disks: [], why: `of type ${block.type || "unknown"}, whose disks lsblk's flat list does not link` };
}

function bounded(message: string): string {
  return message.length > MAX_MESSAGE ? `${message.slice(0, MAX_MESSAGE)}…` : message;
}

function unknown(device: string, message: string): CacheDeviceHealth {
  return { device, smart: "unknown", message: bounded(message) };
}

/**
 * The health of the device holding cachedir, from what si.blockDevices() and
 * si.diskLayout() returned. Pure. Both are read as untrusted data: a field of
 * the wrong type counts as absent, strings are bounded (MAX_TEXT).
 */
export function describeCacheDevice(blockDevices: unknown, diskLayout: unknown, cacheMount: CacheMount): CacheDeviceHealth {
  const source = text(cacheMount.source) || "?";
  const majorMinor = text(cacheMount.majorMinor) || "?:?";
  const name = blockName(source);
  if (name === undefined) return unknown(source, `cachedir is on ${source} (${majorMinor}), not a block device${source === "tmpfs" ? " (memory)" : ""}: no disk, no SMART status`);
  const blocks = records(blockDevices).map(toBlock);
  const byName = new Map<string, Block>();
  for (const b of blocks) if (b.name && !byName.has(b.name)) byName.set(b.name, b);
  const block = byName.get(name);
  if (block?.type === "loop" || (!block && /^loop\d+$/.test(name))) {
    return unknown(name, `cachedir is on loop device ${name} (${majorMinor}): the disk beneath its backing file is not looked up, no SMART status`);
  }
  if (!block) {
    return unknown(name, `cachedir's device ${source} (${majorMinor}) is not among the ${blocks.length} block devices lsblk listed: no SMART status`);
  }
  const where = `cachedir is on ${name}${block.type.startsWith("raid") ? ` (${block.type})` : ""}`;
  const { disks, why } = disksBeneath(block, byName);
  if (disks.length === 0) return unknown(name, `${where} (${majorMinor}), ${why ?? "no disk beneath it"}; no SMART status`);

  const layouts = records(diskLayout).map(toLayout);
  const found = disks.map((disk): Layout => {
    const layout = layouts.find((l) => l.device === disk);
    if (layout) return layout;
    const listed = byName.get(disk.slice("/dev/".length));
    const evidence = [
      layouts.length === 0
        ? "diskLayout listed no disks (smartctl and lsblk -O failed, or lsblk -O's output passed the library's 1 MiB buffer: ~1.3 kB a block device, loop devices included)"
        : `not among the ${layouts.length} disks diskLayout listed${listed?.model ? "" : " (it skips a mounted disk without a model: a virtual disk?)"}`,
    ];
    return { device: disk, model: listed?.model ?? "", serial: listed?.serial ?? "", smart: "unknown", evidence };
  });
  const failing = found.find((l) => l.smart === "predicted-failure");
  const verdict: SmartVerdict = failing ? "predicted-failure" : found.every((l) => l.smart === "ok") ? "ok" : "unknown";
  const chosen = failing ?? found.find((l) => l.smart === "unknown") ?? (found[0] as Layout);

  const describe = (l: Layout) => {
    const status = l.smart === "ok" ? "SMART Ok" : l.smart === "predicted-failure" ? "SMART predicted failure" : "SMART status unknown";
    const evidence = l.evidence.length > 0 ? `: ${l.evidence.join(", ")}` : l.smart === "unknown" ? ": smartctl gave none (not installed, or the disk does not answer)" : "";
    return `${l.device} (${l.model || "no model"}${l.serial ? `, serial ${l.serial}` : ""}): ${status}${evidence}`;
  };
  const on = disks.length === 1 && disks[0] === `/dev/${name}` ? "cachedir is on" : `${where} of`;
  return {
    device: name,
    disk: chosen.device,
    ...(chosen.model ? { model: chosen.model } : {}),
    ...(chosen.serial ? { serial: chosen.serial } : {}),
    smart: verdict,
    message: bounded(`${on} ${found.map(describe).join("; ")}`),
  };
}

/**
 * describeCacheDevice on what the library answers within `timeoutMs`. Never
 * throws: a library that fails or does not answer gives "unknown" with the
 * reason. Programs it started are not stopped on a timeout (it offers no
 * way to), so call it rarely, and not again while a call is pending.
 */
export async function readCacheDeviceHealth(cacheMount: CacheMount, timeoutMs: number, lib: DeviceInfoSource = si): Promise<CacheDeviceHealth> {
  const device = blockName(text(cacheMount.source)) ?? (text(cacheMount.source) || "?");
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<"timeout">((resolve) => {
    timer = setTimeout(() => resolve("timeout"), timeoutMs);
  });
  try {
    const answer = await Promise.race([Promise.all([lib.blockDevices(), lib.diskLayout()]), timeout]);
    if (answer === "timeout") return unknown(device, `cachedir is on ${device} (${text(cacheMount.majorMinor)}): systeminformation did not answer in ${Number((timeoutMs / 1000).toFixed(3))} s`);
    return describeCacheDevice(answer[0], answer[1], cacheMount);
  } catch (err) {
    return unknown(device, `cachedir is on ${device} (${text(cacheMount.majorMinor)}): systeminformation failed: ${text(err instanceof Error ? err.message : String(err))}`);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Reads the cache device's health every `everyMs`, in the background (the
 * library runs lsblk and smartctl, which take seconds, tens of seconds with
 * thousands of loop devices), never two at once; tells each new verdict.
 */
export class DeviceHealthWatch {
  private startedAt: number;
  private pending = false;
  current?: CacheDeviceHealth;

  /** @param firstAfterMs the first read this long after start: a node just booted (or a short-lived test daemon) is not made to run lsblk over every loop device at once. */
  constructor(
    private readonly clock: Clock,
    private readonly everyMs: number,
    firstAfterMs: number,
    private readonly read: (mount: CacheMount) => Promise<CacheDeviceHealth>,
  ) {
    this.startedAt = clock.monotonic() - everyMs + firstAfterMs;
  }

  /** Starts a read if one is due; `changed` is told a verdict that differs from the last one. */
  kick(mount: CacheMount | undefined, changed: (health: CacheDeviceHealth, previous: CacheDeviceHealth | undefined) => void): void {
    const now = this.clock.monotonic();
    if (!mount || this.pending || now - this.startedAt < this.everyMs) return;
    this.startedAt = now;
    this.pending = true;
    void this.read(mount).then((health) => {
      this.pending = false;
      const previous = this.current;
      this.current = health;
      if (previous?.smart !== health.smart || previous.device !== health.device) changed(health, previous);
    });
  }
}
