/**
 * The RFC 4475 torture messages in test/fixtures/rfc4475, shared by the parser
 * tests, the fuzzer and the over-the-wire test. See the README there.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

export const TORTURE_DIR = resolve(import.meta.dirname, '..', 'fixtures', 'rfc4475');

/** valid: 3.1.1 (and 3.2); invalid: 3.1.2; semantic: 3.3 and 3.4. */
export type TortureKind = 'valid' | 'invalid' | 'semantic';
export const TORTURE_KINDS: readonly TortureKind[] = ['valid', 'invalid', 'semantic'];

/** Message names (file names without `.sip`) in one directory, sorted. */
export function tortureNames(kind: TortureKind): string[] {
  return readdirSync(join(TORTURE_DIR, kind))
    .filter((f) => f.endsWith('.sip'))
    .map((f) => f.slice(0, -4))
    .sort();
}

/**
 * The bytes of one message: every LF becomes CRLF, then each `<hex>..</hex>`
 * span (the RFC's own notation for octets that cannot be typed; whitespace
 * inside is ignored) becomes the raw octets it spells. Everything else is UTF-8.
 */
export function decodeTorture(text: string): Buffer {
  const crlf = text.replace(/\r?\n/g, '\r\n');
  const parts: Buffer[] = [];
  const re = /<hex>([\s0-9A-Fa-f]*)<\/hex>/g;
  let last = 0;
  for (let m = re.exec(crlf); m !== null; m = re.exec(crlf)) {
    parts.push(Buffer.from(crlf.slice(last, m.index), 'utf8'), Buffer.from((m[1] ?? '').replace(/\s+/g, ''), 'hex'));
    last = m.index + m[0].length;
  }
  parts.push(Buffer.from(crlf.slice(last), 'utf8'));
  return Buffer.concat(parts);
}

export function loadTorture(kind: TortureKind, name: string): Buffer {
  return decodeTorture(readFileSync(join(TORTURE_DIR, kind, `${name}.sip`), 'utf8'));
}

/** Every message of every directory, with its directory. */
export function allTorture(): { kind: TortureKind; name: string; data: Buffer }[] {
  return TORTURE_KINDS.flatMap((kind) => tortureNames(kind).map((name) => ({ kind, name, data: loadTorture(kind, name) })));
}
