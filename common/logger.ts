/** Logging: one winston root logger built by the composition root; modules take child loggers. */
import winston from 'winston';

export type Logger = winston.Logger;

export function createRootLogger(options: { level?: string; json?: boolean } = {}): Logger {
  const format = options.json
    ? winston.format.combine(winston.format.timestamp(), winston.format.json())
    : winston.format.combine(
        winston.format.timestamp(),
        winston.format.printf(({ timestamp, level, message, ...meta }) => {
          const rest = Object.keys(meta).length ? ' ' + JSON.stringify(meta) : '';
          return `${String(timestamp)} ${level} ${String(message)}${rest}`;
        }),
      );
  return winston.createLogger({
    level: options.level ?? 'info',
    format,
    transports: [new winston.transports.Console({ stderrLevels: ['error', 'warn', 'info', 'debug'] })],
  });
}

/** A logger that drops everything: for unit tests (a fake, named as one). */
export function createSilentLogger(): Logger {
  return winston.createLogger({ silent: true, transports: [new winston.transports.Console()] });
}
