/**
 * Logging: pino JSON lines on stdout (ECS awslogs and Kubernetes collectors read stdout), one child logger per
 * component. Secrets never reach a log line: the AWS credential variables and tokens are redacted by path.
 */
import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

/** Paths redacted wherever they appear in a logged object. */
const REDACT_PATHS = [
  'accessKeyId',
  'secretAccessKey',
  'sessionToken',
  'credentials',
  'authorization',
  '*.authorization',
  'headers.authorization',
  'signature',
  'token',
];

/** Creates the root logger. `destination` defaults to stdout (fd 1); tests pass a stream to read the lines. */
export function createLogger(level: LevelWithSilent, destination?: NodeJS.WritableStream): Logger {
  const options = {
    level,
    base: { service: 'metering-sidecar' },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    formatters: { level: (label: string) => ({ level: label }) },
  };
  return destination ? pino(options, destination) : pino(options, pino.destination({ fd: 1, sync: true }));
}
