import { readFile } from "node:fs/promises";
import path from "node:path";
import { errnoCode } from "../errors.js";
import { writeFileAtomic } from "../lib/atomic-file.js";
import { sameIdentity, type ImageIdentity } from "./records.js";

interface Entry extends ImageIdentity {
  sha256: string;
}

/**
 * The SHA-256 of each cached copy, by image file, kept in
 * state_dir/checksums.json so that a restarted daemon can still prove its
 * copies to peers without reading them again. An entry counts only for the
 * identity (size, mtime) it was computed for.
 */
export class Checksums {
  private entries = new Map<string, Entry>();

  constructor(private readonly stateDir: string) {}

  private get file(): string {
    return path.join(this.stateDir, "checksums.json");
  }

  async load(): Promise<void> {
    let text: string;
    try {
      text = await readFile(this.file, "utf8");
    } catch (err) {
      if (errnoCode(err) === "ENOENT") return;
      throw err;
    }
    const parsed = JSON.parse(text) as { files?: Entry[] };
    for (const e of parsed.files ?? []) {
      if (typeof e.file === "string" && typeof e.sha256 === "string" && /^[0-9a-f]{64}$/.test(e.sha256)) this.entries.set(e.file, e);
    }
  }

  get(id: ImageIdentity): string | undefined {
    const e = this.entries.get(id.file);
    return e && sameIdentity(e, id) ? e.sha256 : undefined;
  }

  async set(id: ImageIdentity, sha256: string): Promise<void> {
    this.entries.set(id.file, { file: id.file, size: id.size, mtimeMs: id.mtimeMs, sha256 });
    await this.save();
  }

  /** Forget the files no longer cached; saved only if something went. */
  async retain(files: ReadonlySet<string>): Promise<void> {
    let dropped = false;
    for (const file of this.entries.keys()) {
      if (!files.has(file)) dropped = this.entries.delete(file) || dropped;
    }
    if (dropped) await this.save();
  }

  private async save(): Promise<void> {
    await writeFileAtomic(this.file, `${JSON.stringify({ version: 1, files: [...this.entries.values()] })}\n`, 0o600);
  }
}
