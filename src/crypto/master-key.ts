import { chmodSync, existsSync, linkSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
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
  const key = keyBytes(text);
  if (key === undefined) throw new ConfigError([`${name}: ${KEY_FORM}`]);
  return key;
}

export const KEY_FORM = 'must be 32 bytes as 64 hex characters or base64';

/** The 32 bytes of a key written as 64 hex characters or as base64, or undefined. */
export function keyBytes(text: string): Buffer | undefined {
  const t = text.trim();
  if (/^[0-9a-fA-F]{64}$/.test(t)) return Buffer.from(t, 'hex');
  const b = Buffer.from(t, 'base64');
  if (b.length === 32 && /^[A-Za-z0-9+/=_-]+$/.test(t)) return b;
  return undefined;
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
  // A file that cannot be read or made (a directory, no permission, a read-only disk) is named with the way out.
  const cannot = (what: string, err: unknown): ConfigError =>
    new ConfigError([
      `security.masterKeyFile: cannot ${what} ${file}: ${(err as Error).message}; make it ${what === 'read' ? 'readable' : 'writable'}, or set security.masterKey (FLASHVERIFY_MASTER_KEY)`,
    ]);
  const existing = (): ResolvedKeys => {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw cannot('read', err);
    }
    return { current: parseKey(text, file), previous, created: false };
  };
  if (existsSync(file)) return existing();
  const key = randomBytes(32);
  // Written whole under another name, then linked into place: a process starting at the same moment (api and
  // workers of one host) either finds no file or a complete one, and the one that loses the race uses the winner's.
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  let lostRace = false;
  try {
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    writeFileSync(tmp, key.toString('hex') + '\n', { mode: 0o600, flag: 'wx' });
    chmodSync(tmp, 0o600);
    try {
      linkSync(tmp, file);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? '';
      if (code === 'EEXIST') lostRace = true;
      // A file system without hard links: created in place, still exclusively.
      else if (['EPERM', 'ENOTSUP', 'ENOSYS', 'EOPNOTSUPP'].includes(code)) writeFileSync(file, key.toString('hex') + '\n', { mode: 0o600, flag: 'wx' });
      else throw err;
    }
  } catch (err) {
    throw cannot('create', err);
  } finally {
    try {
      rmSync(tmp, { force: true });
    } catch {
      // never made (its directory could not be)
    }
  }
  if (lostRace) return existing();
  return { current: key, previous, created: true };
}
