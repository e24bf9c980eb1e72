/** Parsing and formatting of sizes and durations: only at the edges (config, CLI, logs). */

const BINARY_UNITS: Record<string, number> = {
  "": 1,
  b: 1,
  k: 1024,
  kb: 1024,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1024 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1024 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tb: 1024 ** 4,
  tib: 1024 ** 4,
  p: 1024 ** 5,
  pb: 1024 ** 5,
  pib: 1024 ** 5,
};

export const SIZE_FORMS = "a number of bytes or N followed by KB, MB, GB or TB (powers of 1024), e.g. 500GB or 1.5TB";

/** "N unit" -> N x units[unit] (case-insensitive unit, no sign); undefined when not of that form. */
function parseWithUnit(text: string, units: Readonly<Record<string, number>>): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]*)\s*$/.exec(text);
  if (!m) return undefined;
  const unit = (m[2] ?? "").toLowerCase();
  // Own keys only: "5constructor" must not find Object.prototype's.
  return Object.hasOwn(units, unit) ? Number(m[1]) * (units[unit] as number) : undefined;
}

/** "1.5TB" -> bytes (powers of 1024, as the original). Returns undefined when not a size. */
export function parseSize(text: string): number | undefined {
  const bytes = parseWithUnit(text, BINARY_UNITS);
  return bytes === undefined ? undefined : Math.floor(bytes);
}

const DURATION_UNITS: Record<string, number> = { "": 1, s: 1, m: 60, min: 60, h: 3600, d: 86400 };

export const DURATION_FORMS = "seconds, or N followed by s, m, h or d, e.g. 600 or 10m";

/** "10m" -> seconds. Returns undefined when not a duration. */
export function parseDuration(text: string): number | undefined {
  return parseWithUnit(text, DURATION_UNITS);
}

export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let value = bytes;
  let i = 0;
  while (Math.abs(value) >= 1024 && i < units.length - 1) {
    value /= 1024;
    i++;
  }
  return i === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 2 : value < 100 ? 1 : 0)} ${units[i]}`;
}

export function formatRate(bytesPerSecond: number): string {
  return `${formatBytes(Math.round(bytesPerSecond))}/s`;
}

export const MiB = 1024 ** 2;
