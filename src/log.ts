/**
 * Logging: pino JSON lines on stdout (ECS awslogs and Kubernetes collectors read stdout), one child logger per
 * component. Secrets never reach a log line: the AWS credential variables and tokens are redacted by path.
 */
import { createRequire } from 'node:module';
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

/**
 * Creates the root logger. `destination` defaults to stdout (fd 1); tests pass a stream to read the lines.
 * `pretty` writes pino-pretty's readable lines instead of JSON (METERING_LOG_FORMAT), loaded only then.
 */
export function createLogger(
  level: LevelWithSilent,
  destination?: NodeJS.WritableStream,
  format: 'json' | 'pretty' = 'json',
): Logger {
  const options = {
    level,
    base: { service: 'metering-sidecar' },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    formatters: { level: (label: string) => ({ level: label }) },
  };
  if (format === 'pretty') {
    // pino-pretty is CommonJS; required here so that JSON logging never loads it.
    const pretty = createRequire(import.meta.url)('pino-pretty') as (
      options: object,
    ) => NodeJS.WritableStream;
    const stream = pretty({
      sync: true,
      translateTime: 'SYS:HH:MM:ss.l',
      ignore: 'pid,hostname,service',
      ...(destination ? { destination } : { destination: 1 }),
    });
    return pino(options, stream);
  }
  return destination ? pino(options, destination) : pino(options, pino.destination({ fd: 1, sync: true }));
}
