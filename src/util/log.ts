/**
 * A JSON-lines logger for code that runs outside Fastify (the queue worker role, the queue
 * client's connection events): one object per line on stdout, with pino's level numbers and
 * field names, so both roles' logs read and parse alike.
 */

const LEVELS = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60 } as const;
export type LogLevel = keyof typeof LEVELS;

export type Logger = (level: LogLevel, message: string, fields?: Record<string, unknown>) => void;

/** Lines at `threshold` and above go to `write` (default stdout); 'silent' drops everything. */
export function jsonLogger(
  threshold: LogLevel | 'silent',
  write: (line: string) => void = (line) => process.stdout.write(line),
): Logger {
  const min = threshold === 'silent' ? Number.POSITIVE_INFINITY : LEVELS[threshold];
  return (level, message, fields) => {
    if (LEVELS[level] < min) return;
    const record = {
      level: LEVELS[level],
      time: Date.now(),
      pid: process.pid,
      ...fields,
      msg: message,
    };
    write(`${JSON.stringify(record)}\n`);
  };
}
