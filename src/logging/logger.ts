import { pino, type Logger } from 'pino';

/**
 * Field paths that must never reach a log line. The OTP code and secrets are
 * never put into log objects in the first place; this is the second fence.
 */
const REDACT = [
  'code',
  '*.code',
  'api_secret',
  '*.api_secret',
  'secret',
  '*.secret',
  'password',
  '*.password',
  'authorization',
  '*.authorization',
  'req.headers.authorization',
  'masterKey',
  '*.masterKey',
];

export interface LoggerOptions {
  level: string;
  pretty?: boolean;
  name?: string;
  destination?: NodeJS.WritableStream;
}

export function createLogger(options: LoggerOptions): Logger {
  const base = {
    level: options.level,
    name: options.name ?? 'flashverify',
    redact: { paths: REDACT, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  if (options.pretty) {
    return pino({ ...base, transport: { target: 'pino-pretty', options: { colorize: true } } });
  }
  return options.destination ? pino(base, options.destination as pino.DestinationStream) : pino(base);
}

export type { Logger };
