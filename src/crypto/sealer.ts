import { createCipheriv, createDecipheriv, createHash, createHmac, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';

/**
 * GCM IVs (96 bits, random) are taken from a pool of CSPRNG bytes, 256 IVs per refill: one randomBytes call per
 * 12 bytes cost about 3 % of an api process's CPU at load (OpenSSL's RAND_bytes per call). A refill is a new
 * buffer, so an IV handed out is never overwritten; each is used synchronously by `seal`. Uniqueness, which is
 * what GCM needs of an IV, is the same as with one call per IV.
 */
const IV_BYTES = 12;
const IV_POOL_BYTES = IV_BYTES * 256;
let ivPool = Buffer.alloc(0);
let ivAt = 0;
function nextIv(): Buffer {
  if (ivAt + IV_BYTES > ivPool.length) {
    ivPool = randomBytes(IV_POOL_BYTES);
    ivAt = 0;
  }
  const iv = ivPool.subarray(ivAt, ivAt + IV_BYTES);
  ivAt += IV_BYTES;
  return iv;
}

/**
 * Field encryption at rest (AES-256-GCM) and keyed hashing (HMAC-SHA256), all
 * derived from the master key with HKDF so that one secret serves several
 * purposes without reuse. Ciphertexts carry the id of the key that sealed them,
 * so that after a rotation the previous keys still open old records.
 *
 * Sealed format: `v1.<keyId>.<iv>.<tag>.<ciphertext>` (base64url parts).
 */
export class Sealer {
  private readonly encKeys = new Map<string, Buffer>();
  private readonly currentId: string;
  private readonly hmacKey: Buffer;
  /** HMAC keys of the previous master keys: MACs stored before a rotation still verify (`matches`). */
  private readonly previousHmacKeys: Buffer[];

  constructor(current: Buffer, previous: readonly Buffer[] = []) {
    this.currentId = keyId(current);
    for (const key of [current, ...previous]) this.encKeys.set(keyId(key), derive(key, 'flashverify/enc/v1'));
    // MACs are made with the current key; `matches` also accepts those made
    // with a previous key, so API secrets and codes issued before a rotation
    // keep working (account-store re-MACs a secret at its first use after one).
    this.hmacKey = derive(current, 'flashverify/hmac/v1');
    this.previousHmacKeys = previous.map((k) => derive(k, 'flashverify/hmac/v1'));
  }

  /** True when `sealed` was sealed with the current key (false: an older key, worth re-sealing). */
  isCurrent(sealed: string): boolean {
    return sealed.split('.')[1] === this.currentId;
  }

  seal(plain: string, aad = ''): string {
    const encKey = this.encKeys.get(this.currentId)!;
    const iv = nextIv();
    const cipher = createCipheriv('aes-256-gcm', encKey, iv);
    if (aad) cipher.setAAD(Buffer.from(aad));
    const ct = Buffer.concat([cipher.update(plain, 'utf8'), cipher.final()]);
    return ['v1', this.currentId, b64(iv), b64(cipher.getAuthTag()), b64(ct)].join('.');
  }

  /** Throws when the value was tampered with or sealed by an unknown key. */
  open(sealed: string, aad = ''): string {
    const parts = sealed.split('.');
    if (parts.length !== 5 || parts[0] !== 'v1') throw new Error('not a sealed value');
    const [, id, iv, tag, ct] = parts as [string, string, string, string, string];
    const encKey = this.encKeys.get(id);
    if (!encKey) throw new Error(`sealed with unknown key ${id}`);
    const decipher = createDecipheriv('aes-256-gcm', encKey, Buffer.from(iv, 'base64url'));
    if (aad) decipher.setAAD(Buffer.from(aad));
    decipher.setAuthTag(Buffer.from(tag, 'base64url'));
    return Buffer.concat([decipher.update(Buffer.from(ct, 'base64url')), decipher.final()]).toString('utf8');
  }

  /** HMAC-SHA256 (hex) of `value` in a named domain, e.g. ("code", requestId + ":" + code). */
  mac(domain: string, value: string): string {
    return createHmac('sha256', this.hmacKey).update(domain).update('\0').update(value).digest('hex');
  }

  /**
   * The MACs of `value` under each previous key (none without a rotation): the
   * key names that state written before a rotation sits under
   * (store/scripts.ts adoptPreviousNames moves it to the current name).
   */
  previousMacs(domain: string, value: string): string[] {
    return this.previousHmacKeys.map((key) => createHmac('sha256', key).update(domain).update('\0').update(value).digest('hex'));
  }

  /**
   * Does `stored` equal the MAC of `value` under the current key or any
   * previous one? Every candidate is computed and compared (constant time, no
   * early exit), so a rotation does not tell anyone which key matched.
   * Returns 'current', 'previous' (matched an old key: store the current MAC
   * now) or false.
   */
  matches(domain: string, value: string, stored: string): 'current' | 'previous' | false {
    const current = Sealer.equal(this.mac(domain, value), stored);
    let previous = false;
    for (const m of this.previousMacs(domain, value)) previous = Sealer.equal(m, stored) || previous;
    return current ? 'current' : previous ? 'previous' : false;
  }

  /** Constant-time comparison of two hex MACs (or any two strings). */
  static equal(a: string, b: string): boolean {
    // Hash first so that unequal lengths leak nothing and timingSafeEqual gets equal sizes.
    const ha = createHash('sha256').update(a).digest();
    const hb = createHash('sha256').update(b).digest();
    return timingSafeEqual(ha, hb) && a.length === b.length;
  }
}

function derive(key: Buffer, info: string): Buffer {
  return Buffer.from(hkdfSync('sha256', key, Buffer.alloc(0), info, 32));
}

function keyId(key: Buffer): string {
  return createHash('sha256').update('flashverify/key-id').update(key).digest('base64url').slice(0, 8);
}

function b64(b: Buffer): string {
  return b.toString('base64url');
}
