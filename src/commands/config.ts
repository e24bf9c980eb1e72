/**
 * `scratch_manager config [-c FILE] [--compat]`: the configuration as this
 * version reads it, every key with its value and where it comes from; with
 * --compat, the file the original Python daemon accepts (for a rollback):
 * its five keys in its own forms, the others left out as comments.
 */
import { CONFIG_TABLE, DEFAULT_CONFIG_PATH, parseCapacity, readConfigFile, type RawConfig } from "../config.js";
import { UsageError } from "../errors.js";
import { parseDuration } from "../units.js";

export interface ConfigFlags {
  config?: string;
  compat?: boolean;
}

/** The keys the original knows. */
const ORIGINAL_KEYS = ["datadir", "cachedir", "mountdir", "capacity", "period"] as const;

const UNITS = [
  ["TB", 1024 ** 4],
  ["GB", 1024 ** 3],
  ["MB", 1024 ** 2],
] as const;

/** A capacity in the original's forms: N% (whole), or NMB/NGB/NTB (whole, powers of 1024), rounded down. */
export function originalCapacity(value: string): { value: string; note?: string } {
  const c = parseCapacity(value);
  if (c.kind === "percent") {
    const whole = Math.floor(c.percent);
    return whole === c.percent ? { value: `${whole}%` } : { value: `${whole}%`, note: `${value} rounded down to whole percent` };
  }
  for (const [unit, size] of UNITS) if (c.bytes % size === 0) return { value: `${c.bytes / size}${unit}` };
  return { value: `${Math.floor(c.bytes / 1024 ** 2)}MB`, note: `${value} rounded down to whole MiB` };
}

/** The file the original accepts, from what this version reads. */
export function compatText(raw: RawConfig, source: string): string {
  const lines = [`; for the original scratch_manager, from ${source} (scratch_manager config --compat)`];
  for (const key of ORIGINAL_KEYS) {
    const value = raw[key];
    if (value === undefined || value === "") continue;
    if (key === "capacity") {
      const c = originalCapacity(value);
      if (c.note) lines.push(`; ${c.note}`);
      lines.push(`capacity = ${c.value}`);
    } else if (key === "period") {
      const seconds = parseDuration(value);
      if (seconds === undefined) throw new UsageError(`config: period = ${JSON.stringify(value)} is not valid`);
      lines.push(`period = ${Math.round(seconds)}`);
    } else {
      lines.push(`${key} = ${value}`);
    }
  }
  const left = Object.keys(raw).filter((k) => !(ORIGINAL_KEYS as readonly string[]).includes(k));
  if (left.length > 0) {
    lines.push("", "; not known to the original, left out (it would refuse to start):");
    for (const key of left) lines.push(`;   ${key} = ${raw[key as keyof RawConfig] ?? ""}`);
  }
  return `${lines.join("\n")}\n`;
}

/** Every key: its value, from the file or the default. */
export function effectiveText(raw: RawConfig, source: string): string {
  const lines = [`; ${source}: every key, as this version reads it ("; default" where the file does not set it)`];
  for (const spec of CONFIG_TABLE) {
    const set = raw[spec.key];
    if (set !== undefined) lines.push(`${spec.key} = ${set}`);
    else lines.push(`${spec.key} = ${"default" in spec ? spec.default : ""}   ; ${"required" in spec ? "required, not set" : "default"}`);
  }
  return `${lines.join("\n")}\n`;
}

export async function configCommand(flags: ConfigFlags): Promise<void> {
  const source = flags.config ?? DEFAULT_CONFIG_PATH;
  const raw = await readConfigFile(source, true);
  process.stdout.write(flags.compat === true ? compatText(raw, source) : effectiveText(raw, source));
}
