/** Text from outside (a peer's record, a file name), for a log line or status: control characters escaped, length bounded. */
export function printable(text: string, max = 200): string {
  // eslint-disable-next-line no-control-regex -- the point is to find control characters
  const escaped = text.replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
  return escaped.length > max ? `${escaped.slice(0, max)}…` : escaped;
}
