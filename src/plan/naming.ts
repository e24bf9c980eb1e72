/** How an image's file name becomes its dataset (and mount point) name. */

export const NAMINGS = ["first-dot", "strip-extension"] as const;
export type Naming = (typeof NAMINGS)[number];

export type NameResult = { ok: true; name: string } | { ok: false; reason: string };

/**
 * `first-dot` is the original's rule ("coco.2017.sqfs" -> "coco"), kept as the
 * default so existing mount paths do not move; `strip-extension` removes only
 * the last extension ("coco.2017.sqfs" -> "coco.2017").
 */
export function datasetName(fileName: string, naming: Naming): NameResult {
  const dot = naming === "first-dot" ? fileName.indexOf(".") : fileName.lastIndexOf(".");
  const name = dot < 0 ? fileName : fileName.slice(0, dot);
  if (name === "") return { ok: false, reason: "the name before the extension is empty" };
  const invalid = validName(name);
  return invalid ? { ok: false, reason: invalid } : { ok: true, name };
}

/** Why `name` cannot be a mount name (one path component under mountdir), or undefined if it can. */
export function validName(name: string): string | undefined {
  if (name === "") return "the name is empty";
  if (name === "." || name === "..") return `the mount name ${JSON.stringify(name)} is not allowed`;
  if (name.includes("/")) return "the name contains a slash";
  // Control characters would corrupt logs and mountinfo lines.
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(name)) return "the name contains control characters";
  return undefined;
}
