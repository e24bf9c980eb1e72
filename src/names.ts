/**
 * What a mount name may be: one path component under mountdir. Used by the
 * configuration (pins), the pin command and the catalogue; a leaf module, so
 * that config.ts needs nothing from plan/.
 */

/** Why `name` cannot be a mount name, or undefined if it can. */
export function validName(name: string): string | undefined {
  if (name === "") return "the name is empty";
  if (name === "." || name === "..") return `the mount name ${JSON.stringify(name)} is not allowed`;
  if (name.includes("/")) return "the name contains a slash";
  // Control characters would corrupt logs and mountinfo lines.
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(name)) return "the name contains control characters";
  return undefined;
}
