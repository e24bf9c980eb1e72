export type ImageKind = "squashfs" | "erofs";

/** A directory entry of datadir or cachedir, as lstat saw it. */
export interface FileEntry {
  file: string;
  path: string;
  type: "file" | "directory" | "symlink" | "other";
  size: number;
  mtimeMs: number;
  ino: number;
  /** st_dev, "major:minor" (observe/scan.ts). */
  dev?: string;
}

export type Probe = { ok: true; kind: ImageKind } | { ok: false; reason: string };

const SQUASHFS_MAGIC = 0x73717368; // "hsqs", little-endian, at offset 0
const SQUASHFS_SUPERBLOCK_BYTES = 96;
const EROFS_MAGIC = 0xe0f5e1e2; // at offset 1024
const EROFS_SUPER_OFFSET = 1024;
/** Bytes of an image read to recognise it: up to the end of an EROFS superblock. */
export const PROBE_BYTES = EROFS_SUPER_OFFSET + 128;

/**
 * Recognise an image by its superblock, not its extension, and check that the
 * file is at least as long as the superblock says, so that a truncated copy is
 * refused instead of mounted and failing on reads.
 */
export function probeHeader(header: Buffer, fileSize: number): Probe {
  if (fileSize === 0) return { ok: false, reason: "empty file" };
  if (header.length >= 4 && header.readUInt32LE(0) === SQUASHFS_MAGIC) {
    if (header.length < SQUASHFS_SUPERBLOCK_BYTES) return { ok: false, reason: "truncated squashfs superblock" };
    const major = header.readUInt16LE(28);
    if (major !== 4) return { ok: false, reason: `squashfs version ${major} is not supported (expected 4)` };
    const bytesUsed = Number(header.readBigUInt64LE(40));
    if (bytesUsed > fileSize) return { ok: false, reason: `truncated squashfs image (${fileSize} of ${bytesUsed} bytes)` };
    return { ok: true, kind: "squashfs" };
  }
  if (header.length >= EROFS_SUPER_OFFSET + 0x28 && header.readUInt32LE(EROFS_SUPER_OFFSET) === EROFS_MAGIC) {
    const blkszbits = header.readUInt8(EROFS_SUPER_OFFSET + 0x0c);
    const blocks = header.readUInt32LE(EROFS_SUPER_OFFSET + 0x24);
    const expected = blocks * 2 ** blkszbits;
    if (blkszbits < 9 || blkszbits > 16) return { ok: false, reason: `EROFS block size 2^${blkszbits} is not valid` };
    if (expected > fileSize) return { ok: false, reason: `truncated EROFS image (${fileSize} of ${expected} bytes)` };
    return { ok: true, kind: "erofs" };
  }
  return { ok: false, reason: "not a squashfs or EROFS image (no superblock magic)" };
}
