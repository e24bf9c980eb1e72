import pino, { type Logger } from "pino";

/**
 * One JSON line per event on stdout, which journald stores as is; fixed
 * messages, with the dataset and the numbers as fields.
 */
export function createLogger(verbose: boolean, destination: pino.DestinationStream = pino.destination({ dest: 1, sync: true })): Logger {
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
