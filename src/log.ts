import { fstatSync } from "node:fs";
import pino, { type Logger } from "pino";

/**
 * How log lines are written (config key log_format):
 * - journal: "<4>message key=value ...", the syslog priority first as
 *   sd-daemon(3) describes, so that `journalctl -p warning` picks the
 *   problems out; no timestamp (the journal keeps its own).
 * - json: pino's JSON line, time included, for log shippers.
 * - auto: journal when stdout is the journal's stream (systemd sets
 *   JOURNAL_STREAM), json otherwise.
 */
export const LOG_FORMATS = ["auto", "journal", "json"] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

/** pino's levels as syslog priorities (sd-daemon(3): <7> debug ... <2> crit). */
const PRIORITY: Readonly<Record<string, number>> = { trace: 7, debug: 7, info: 6, warn: 4, error: 3, fatal: 2 };

/**
 * Whether file descriptor `fd` is the stream systemd connected to the
 * journal: systemd.exec(5) sets JOURNAL_STREAM to its "device:inode", and
 * asks programs to compare, since the variable is inherited by programs
 * whose output goes elsewhere (`scratch_manager ... > file` from a unit).
 */
export function isJournalStream(env: NodeJS.ProcessEnv = process.env, fd = 1): boolean {
  const stream = env.JOURNAL_STREAM;
  if (!stream) return false;
  try {
    // bigint: st_dev and st_ino are 64-bit; a double could round them.
    const st = fstatSync(fd, { bigint: true });
    return `${st.dev}:${st.ino}` === stream;
  } catch {
    return false;
  }
}

export function resolveLogFormat(format: LogFormat, journal: () => boolean = () => isJournalStream()): "journal" | "json" {
  if (format === "auto") return journal() ? "journal" : "json";
  return format;
}

/**
 * A value as logfmt writes it, always on one line: a string bare when it is
 * one word, else quoted with JSON's escapes; a number, list or object as
 * compact JSON, quoted only if it holds a space.
 */
function formatValue(value: unknown): string {
  if (typeof value === "string") return value !== "" && /^[^\s"\\=]+$/.test(value) ? value : JSON.stringify(value);
  const text = JSON.stringify(value) ?? String(value);
  return /\s/.test(text) ? JSON.stringify(text) : text;
}

/** Control characters escaped: journald would cut the entry at a newline, and the rest would lose its priority. */
function oneLine(text: string): string {
  // eslint-disable-next-line no-control-regex -- control characters are exactly what is matched here
  return text.replace(/[\u0000-\u001f\u007f]/g, (c) => JSON.stringify(c).slice(1, -1));
}

/** pino's own keys: the message and its priority are written first, the others are dropped. */
const RECORD_KEYS = new Set(["level", "time", "name", "msg"]);

/**
 * One of pino's JSON lines as the journal wants it:
 *   {"level":"warn","time":"...","dataset":"coco","msg":"dataset in back-off"}
 *   -> <4>dataset in back-off dataset=coco
 */
export function journalLine(json: string): string {
  let record: Record<string, unknown>;
  try {
    record = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return `<6>${oneLine(json.trimEnd())}\n`;
  }
  const priority = PRIORITY[String(record.level)] ?? 6;
  const parts = [oneLine(typeof record.msg === "string" ? record.msg : "")];
  for (const [key, value] of Object.entries(record)) {
    // The journal keeps its own time and the program's name (SYSLOG_IDENTIFIER).
    if (!RECORD_KEYS.has(key)) parts.push(`${key}=${formatValue(value)}`);
  }
  return `<${priority}>${parts.join(" ")}\n`;
}

/**
 * pino's destination: its JSON lines go out as they are (json) or rewritten
 * (journal). The format can change on a reload (SIGHUP).
 */
export class LogDestination implements pino.DestinationStream {
  constructor(
    public format: "journal" | "json",
    private readonly out: pino.DestinationStream = pino.destination({ dest: 1, sync: true }),
  ) {}

  write(line: string): void {
    this.out.write(this.format === "json" ? line : journalLine(line));
  }
}

/**
 * One line per event on stdout; fixed messages, with the dataset and the
 * numbers as fields.
 */
export function createLogger(verbose: boolean, destination: pino.DestinationStream = new LogDestination(resolveLogFormat("auto"))): Logger {
  return pino(
    {
      name: "scratch_manager",
      level: verbose ? "debug" : "info",
      base: undefined,
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination,
  );
}
