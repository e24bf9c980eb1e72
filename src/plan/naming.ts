/** How an image's file name becomes its dataset (and mount point) name. */
import type { Naming } from "../config.js";
import { validName } from "../names.js";

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
