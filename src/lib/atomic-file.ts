import { open, rename, unlink } from "node:fs/promises";
import path from "node:path";

/**
 * Write `data` to `file` so that a reader sees either the old content or the
 * new one, never a half-written file: write a temporary file in the same
 * directory (rename is atomic only within one file system), then rename it
 * over `file`. No fsync: these files are rewritten every tick and a crash
 * that loses the last one loses nothing of value.
 *
 * The temporary name starts with a dot and ends with ".tmp", so that
 * node_exporter's textfile collector, which reads only *.prom, never sees it.
 * It is the same name each time (one daemon writes each file), so a daemon
 * killed in the middle of a write leaves one stray file at most, which the
 * next write replaces.
 */
export async function writeFileAtomic(file: string, data: string, mode = 0o644): Promise<void> {
  const temp = path.join(path.dirname(file), `.${path.basename(file)}.tmp`);
  const handle = await open(temp, "w", mode);
  try {
    try {
      // open()'s mode is masked by the umask (systemd's UMask= may be 0077);
      // the readers are other users (status) and other daemons (node_exporter).
      await handle.chmod(mode);
      await handle.writeFile(data, "utf8");
    } finally {
      await handle.close();
    }
    await rename(temp, file);
  } catch (err) {
    await unlink(temp).catch(() => undefined);
    throw err;
  }
}
