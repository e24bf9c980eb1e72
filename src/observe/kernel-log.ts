/**
 * The kernel's own reports of failing reads: /dev/kmsg records such as
 * "I/O error, dev loop5, sector 1792 op 0x0:(READ)" (blk_print_req_error),
 * "critical medium error, dev nvme0n1, ...", "Buffer I/O error on dev
 * dm-0, ...", "EXT4-fs error (device sdb1): ...". A block device's errors
 * reach the log at once, before a probe happens to read the bad block. Only
 * the kernel's records (facility 0): anyone may write to /dev/kmsg, but what
 * a user writes there is logged as facility user, and is not believed.
 */
import { closeSync, constants, openSync, readSync } from "node:fs";
import { errnoCode } from "../errors.js";

export interface KernelIoError {
  /** The block device named, as the kernel names it ("loop5", "nvme0n1", "sdb1", "dm-0"). */
  device: string;
  /** The record's text, bounded. */
  text: string;
  /** Microseconds since boot (the record's own timestamp). */
  atUs: number;
}

const PATTERNS: readonly RegExp[] = [
  /\bI\/O error, dev ([\w.-]+), sector/,
  /\bcritical (?:medium|target|nexus|space allocation|protection) error, dev ([\w.-]+), sector/,
  /\bBuffer I\/O error on dev(?:ice)? ([\w.-]+),/,
  /\bEXT4-fs error \(device ([\w.-]+)\)/,
  /\bXFS \(([\w.-]+)\): (?:metadata I\/O error|Corruption)/,
];

/** One /dev/kmsg record ("PRIO,SEQ,USEC,FLAGS;TEXT"): the device a kernel read error names, if it is one. Pure. */
export function parseKmsgRecord(record: string): KernelIoError | undefined {
  const semi = record.indexOf(";");
  if (semi < 0) return undefined;
  const [prio, , usec] = record.slice(0, semi).split(",");
  const level = Number(prio);
  // (facility << 3) | level: facility 0 is the kernel's; a user's writes are facility 1 (user) or above.
  if (!Number.isInteger(level) || level >> 3 !== 0) return undefined;
  const text = record.slice(semi + 1).split("\n")[0] ?? "";
  for (const pattern of PATTERNS) {
    const m = pattern.exec(text);
    if (m?.[1] !== undefined) return { device: m[1], text: text.slice(0, 300), atUs: Number(usec) || 0 };
  }
  return undefined;
}

/** Most records read a tick: the log of a failing disk can flood; what is past this waits for the next tick. */
const MAX_RECORDS = 2000;

/**
 * Reads /dev/kmsg without blocking (O_NONBLOCK: each read is one record,
 * EAGAIN when there is no more). Records logged before `sinceUs` (the
 * daemon's start, in microseconds since boot) are skipped: another
 * program's old errors are not this daemon's evidence. Where /dev/kmsg
 * cannot be read (a container), it says so once and stays quiet.
 */
export class KernelLog {
  private fd?: number;
  private failed = false;
  private readonly buffer = Buffer.alloc(8192);

  constructor(
    private readonly sinceUs: number,
    private readonly file = "/dev/kmsg",
    private readonly onUnavailable: (why: string) => void = () => undefined,
  ) {}

  /** The kernel's read errors logged since the last call. */
  read(): KernelIoError[] {
    if (this.failed) return [];
    const out: KernelIoError[] = [];
    try {
      this.fd ??= openSync(this.file, constants.O_RDONLY | constants.O_NONBLOCK);
      for (let i = 0; i < MAX_RECORDS; i++) {
        let n: number;
        try {
          n = readSync(this.fd, this.buffer, 0, this.buffer.length, null);
        } catch (err) {
          const code = errnoCode(err);
          if (code === "EAGAIN") break;
          // The ring buffer overwrote records not read yet: the next read goes on from the oldest kept.
          if (code === "EPIPE") continue;
          throw err;
        }
        if (n === 0) break;
        const error = parseKmsgRecord(this.buffer.toString("utf8", 0, n));
        if (error && error.atUs >= this.sinceUs) out.push(error);
      }
    } catch (err) {
      this.failed = true;
      this.close();
      this.onUnavailable(`${this.file}: ${errnoCode(err) ?? String(err)}`);
    }
    return out;
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}
