import { isIPv4, isIPv6 } from "node:net";

/**
 * A peer's name in the fleet: HOST:PORT, strictly. It comes from records
 * (signed, but a name is also what this node connects to and what status
 * shows), so anything but a DNS host name, an IPv4 literal or a bracketed
 * IPv6 literal, with a port in 1..65535, is refused: no spaces, no control
 * characters, no "host:port/path".
 */
export interface PeerName {
  host: string;
  port: number;
}

const LABEL = /^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$/;
const MAX_HOST = 253;

function validHost(host: string): boolean {
  if (host.length === 0 || host.length > MAX_HOST) return false;
  if (isIPv4(host)) return true;
  // A name of digits and dots that is not an IPv4 address is a typo, not a host.
  if (/^[\d.]+$/.test(host)) return false;
  return host.split(".").every((label) => LABEL.test(label));
}

export function parsePeerName(text: string): PeerName | undefined {
  if (text.length > MAX_HOST + 10) return undefined;
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(text);
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return undefined;
  if (m[1] !== undefined) return isIPv6(m[1]) ? { host: m[1], port } : undefined;
  const host = m[2] as string;
  return validHost(host) ? { host, port } : undefined;
}

export function formatPeerName(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}
