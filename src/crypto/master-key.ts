import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { dirname, resolve } from 'node:path';
import { ConfigError } from '../errors/app-error.js';

export interface MasterKeySource {
  masterKey: string;
  masterKeyFile: string;
  previousMasterKeys: readonly string[];
}

export interface ResolvedKeys {
  current: Buffer;
  previous: Buffer[];
  /** True when the key was generated into masterKeyFile just now. */
  created: boolean;
}

/** A 32-byte key given as 64 hex characters or as base64. */
export function parseKey(text: string, name: string): Buffer {
  const t = text.trim();
  if (/^[0-9a-fA-F]{64}$/.test(t)) return Buffer.from(t, 'hex');
  const b = Buffer.from(t, 'base64');
  if (b.length === 32 && /^[A-Za-z0-9+/=_-]+$/.test(t)) return b;
  throw new ConfigError([`${name}: must be 32 bytes as 64 hex characters or base64`]);
}

/**
 * The master key from config/env; else from `masterKeyFile`, which is created
 * with a random key (mode 0600) on first use so that `npm start` runs anywhere
 * without ever storing codes or numbers in clear.
 */
export function resolveMasterKeys(src: MasterKeySource): ResolvedKeys {
  const previous = src.previousMasterKeys.map((k, i) => parseKey(k, `security.previousMasterKeys[${i}]`));
  if (src.masterKey) return { current: parseKey(src.masterKey, 'security.masterKey'), previous, created: false };
  const file = resolve(src.masterKeyFile);
  if (existsSync(file)) {
    return { current: parseKey(readFileSync(file, 'utf8'), file), previous, created: false };
  }
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  const key = randomBytes(32);
  writeFileSync(file, key.toString('hex') + '\n', { mode: 0o600, flag: 'wx' });
  chmodSync(file, 0o600);
  return { current: key, previous, created: true };
}
