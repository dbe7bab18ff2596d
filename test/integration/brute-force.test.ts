import { afterEach, describe, expect, it } from 'vitest';
import { Sealer } from '../../src/crypto/sealer.js';
import { http, startTestEngine, testConfig, type TestEngine } from '../helpers/engine.js';

/**
 * Brute force on the API: wrong API secrets from one address are counted
 * atomically (per address and per API key); from `delayAfter` failures each
 * 401 comes only after `delayMs`, from `lockAfter` the address gets 429
 * `rate_limited` with Retry-After for the rest of the window, even with the
 * right secret. Wrong codes are counted atomically per request.
 */
let engine: TestEngine | undefined;
afterEach(async () => {
  await engine?.stop();
  engine = undefined;
});

const basic = (key: string, secret: string) => 'Basic ' + Buffer.from(`${key}:${secret}`).toString('base64');

describe('API secret brute force', { timeout: 30_000 }, () => {
  it('slows down, then locks the address out with 429 + Retry-After, then lets it in again', async () => {
    engine = await startTestEngine(
      testConfig({ api: { authFailures: { delayAfter: 3, delayMs: 1000, lockAfter: 6, windowSeconds: 6 } } }),
      'api',
    );
    const a = await engine.account();
    const b = await engine.account();
    const wrong = basic(a.api_key, 'f'.repeat(64));
    const timed = async (auth: string) => {
      const t0 = performance.now();
      const r = await http(`${engine!.url}/v1/balance`, { auth });
      return {
        status: r.status,
        error: r.body.error,
        retryAfter: r.headers.get('retry-after'),
        remaining: r.headers.get('x-ratelimit-remaining'),
        ms: performance.now() - t0,
      };
    };

    const first = [await timed(wrong), await timed(wrong)];
    // The 401s count down the address's budget in the rate-limit headers.
    expect(first.map((r) => r.remaining)).toEqual(['5', '4']);
    for (const r of first) expect(r).toMatchObject({ status: 401, error: 'unauthorized' });
    // Not slowed down (a loaded CI box can take a few hundred ms for any request; the brake is 1 s).
    expect(Math.max(...first.map((r) => r.ms))).toBeLessThan(800);
    // From the 3rd failure on: still 401, but slow.
    for (let i = 0; i < 3; i++) {
      const r = await timed(wrong);
      expect(r).toMatchObject({ status: 401, error: 'unauthorized' });
      expect(r.ms).toBeGreaterThanOrEqual(990);
    }
    // Another account, authenticated just before the lock-out: this process knows its pair (auth cache, 1 s), and
    // the lock-out is checked with its rate limit in one script (admitRequest-2).
    expect((await http(`${engine.url}/v1/balance`, { auth: b.auth })).status).toBe(200);
    // The 6th failure locks the address: 429 with Retry-After, for the right secret too.
    expect(await timed(wrong)).toMatchObject({ status: 429, error: 'rate_limited' });
    const locked = await timed(a.auth);
    expect(locked).toMatchObject({ status: 429, error: 'rate_limited', remaining: '0' });
    expect(Number(locked.retryAfter)).toBeGreaterThanOrEqual(1);
    expect(Number(locked.retryAfter)).toBeLessThanOrEqual(6);
    // A locked-out request is not counted in its key's one-second window (its counters live 2 s: the warm-up's is there).
    const counted = async () => {
      const names = await engine!.redis.keys(`${engine!.config.redis.prefix}:rl:${b.api_key}:*`);
      return (await Promise.all(names.map(async (k) => Number(await engine!.redis.get(k))))).reduce((x, y) => x + y, 0);
    };
    const before = await counted();
    expect(before).toBeGreaterThanOrEqual(1);
    const lockedKnown = await timed(b.auth);
    expect(await counted()).toBe(before);
    expect(lockedKnown).toMatchObject({ status: 429, error: 'rate_limited', remaining: '0' });
    expect(Number(lockedKnown.retryAfter)).toBeGreaterThanOrEqual(1);
    expect(Number(lockedKnown.retryAfter)).toBeLessThanOrEqual(6);
    // Counted per address and per key, in Redis.
    expect(await engine.redis.get(engine.keys.authFailures('ip', '127.0.0.1'))).toBe('6');
    expect(await engine.redis.get(engine.keys.authFailures('key', a.api_key))).toBe('6');

    // The window ends: the right secret works again.
    await new Promise((r) => setTimeout(r, Number(locked.retryAfter) * 1000 + 300));
    expect((await timed(a.auth)).status).toBe(200);
  });

  it('a request without credentials (a client waiting for the challenge first) is answered 401 and not counted: it never locks its address out', async () => {
    engine = await startTestEngine(testConfig({ api: { authFailures: { delayAfter: 3, delayMs: 1000, lockAfter: 4, windowSeconds: 60 } } }), 'api');
    const a = await engine.account();
    // As .NET HttpClient or Apache HttpClient do: the request without Authorization, the 401 challenge, then the right pair.
    for (let i = 0; i < 8; i++) {
      const challenge = await http(`${engine.url}/v1/balance`, {});
      expect([challenge.status, challenge.headers.get('www-authenticate'), challenge.headers.get('x-ratelimit-remaining')]).toEqual([401, 'Basic realm="FlashVerify"', '4']);
      expect((await http(`${engine.url}/v1/balance`, { auth: a.auth })).status).toBe(200);
    }
    // Wrong secrets still count, and lock the address out at lockAfter.
    const wrong = basic(a.api_key, 'f'.repeat(64));
    expect((await http(`${engine.url}/v1/balance`, { auth: wrong })).headers.get('x-ratelimit-remaining')).toBe('3');
    expect((await http(`${engine.url}/v1/balance`, {})).headers.get('x-ratelimit-remaining')).toBe('3');
  });

  it('behind a proxy named in http.trustProxy, failures count against the client the proxy saw, not an address the client wrote into X-Forwarded-For', async () => {
    engine = await startTestEngine(
      testConfig({ http: { trustProxy: ['127.0.0.1'] }, api: { authFailures: { delayAfter: 10, delayMs: 1000, lockAfter: 3, windowSeconds: 60 } } }),
      'api',
    );
    const a = await engine.account();
    const wrong = basic(a.api_key, 'f'.repeat(64));
    // The proxy (this test, at 127.0.0.1) appends the address it saw; the client's own entries come first, each different.
    const via = (client: string, spoofed: string) => ({ 'x-forwarded-for': `${spoofed}, ${client}` });
    for (let i = 1; i <= 3; i++) {
      const r = await http(`${engine.url}/v1/balance`, { auth: wrong, headers: via('198.51.100.8', `10.0.0.${i}`) });
      expect(r.status).toBe(i < 3 ? 401 : 429);
    }
    // That client is locked out whatever it writes first; another client behind the same proxy is not.
    expect((await http(`${engine.url}/v1/balance`, { auth: a.auth, headers: via('198.51.100.8', '10.0.0.99') })).status).toBe(429);
    expect((await http(`${engine.url}/v1/balance`, { auth: a.auth, headers: via('198.51.100.9', '198.51.100.8') })).status).toBe(200);
  });

  it('counts concurrent failures exactly (atomic), and never stores the secrets tried', async () => {
    engine = await startTestEngine(
      testConfig({ api: { authFailures: { delayAfter: 1000, delayMs: 0, lockAfter: 1000, windowSeconds: 60 } } }),
      'api',
    );
    const a = await engine.account();
    const tried = Array.from({ length: 40 }, (_, i) => i.toString(16).padStart(64, 'a'));
    const results = await Promise.all(tried.map((s) => http(`${engine!.url}/v1/balance`, { auth: basic(a.api_key, s) })));
    expect(results.every((r) => r.status === 401)).toBe(true);
    expect(await engine.redis.get(engine.keys.authFailures('ip', '127.0.0.1'))).toBe('40');
    expect(await engine.redis.get(engine.keys.authFailures('key', a.api_key))).toBe('40');
    const keys = await engine.redis.keys(`${engine.keys.prefix}:authfail:*`);
    for (const k of keys) for (const s of tried) expect(k).not.toContain(s);
  });
});

describe('admin token brute force', { timeout: 30_000 }, () => {
  const TOKEN = 'admin-token-0123456789abcdef';
  it('wrong bearer tokens are counted per address, slowed down, then locked out (429, the right token too) until the window ends', async () => {
    engine = await startTestEngine(
      testConfig({ admin: { token: TOKEN }, api: { authFailures: { delayAfter: 3, delayMs: 1000, lockAfter: 6, windowSeconds: 6 } } }),
      'api',
    );
    const bearer = (t: string) => ({ authorization: `Bearer ${t}` });
    const timed = async (token: string) => {
      const t0 = performance.now();
      const r = await http(`${engine!.url}/admin/v1/accounts/00000000-0000-4000-8000-000000000000`, { headers: bearer(token) });
      return { status: r.status, error: r.body.error, retryAfter: r.headers.get('retry-after'), ms: performance.now() - t0 };
    };
    const tried = Array.from({ length: 6 }, (_, i) => `guess-${i}-${'x'.repeat(20)}`);
    const first = [await timed(tried[0]!), await timed(tried[1]!)];
    for (const r of first) expect(r).toMatchObject({ status: 401, error: 'unauthorized' });
    // Not slowed down (a loaded CI box can take a few hundred ms for any request; the brake is 1 s).
    expect(Math.max(...first.map((r) => r.ms))).toBeLessThan(800);
    for (let i = 2; i < 5; i++) {
      const r = await timed(tried[i]!);
      expect(r).toMatchObject({ status: 401, error: 'unauthorized' });
      expect(r.ms).toBeGreaterThanOrEqual(990);
    }
    expect(await timed(tried[5]!)).toMatchObject({ status: 429, error: 'rate_limited' });
    const locked = await timed(TOKEN);
    expect(locked).toMatchObject({ status: 429, error: 'rate_limited' });
    expect(Number(locked.retryAfter)).toBeGreaterThanOrEqual(1);
    expect(Number(locked.retryAfter)).toBeLessThanOrEqual(6);
    expect(await engine.redis.get(engine.keys.authFailures('ip', '127.0.0.1'))).toBe('6');
    const keys = await engine.redis.keys(`${engine.keys.prefix}:*`);
    for (const k of keys) for (const t of [...tried, TOKEN]) expect(k).not.toContain(t);

    await new Promise((r) => setTimeout(r, Number(locked.retryAfter) * 1000 + 300));
    // The right token gets in again (404: the account does not exist).
    expect(await timed(TOKEN)).toMatchObject({ status: 404, error: 'not_found' });
  });
});

describe('code brute force', () => {
  it('concurrent wrong codes: exactly maxCheckAttempts are counted, then the request expires', async () => {
    engine = await startTestEngine(testConfig({ api: { defaultRateLimitPerSecond: 1000 } }), 'api');
    const a = await engine.account();
    const created = await http(`${engine.url}/v1/verify`, { auth: a.auth, body: { phone_number: '+447700900999' } });
    expect(created.status).toBe(201);
    const id = String(created.body.request_id);
    const code = engine.sealer.open((await engine.redis.hget(engine.keys.verification(id), 'code_enc'))!, `code:${id}`);
    const wrongCodes = Array.from({ length: 12 }, (_, i) => String((Number(code) + 1 + i) % 10_000).padStart(4, '0'));
    const results = await Promise.all(
      wrongCodes.map((c) => http(`${engine!.url}/v1/verify/check`, { auth: a.auth, body: { request_id: id, code: c } })),
    );
    const invalid = results.filter((r) => r.body.error === 'invalid_code');
    expect(invalid).toHaveLength(3);
    expect(invalid.map((r) => r.body.attempts_remaining).sort()).toEqual([0, 1, 2]);
    expect(results.filter((r) => r.body.error === 'verification_expired')).toHaveLength(9);
    expect(await engine.redis.hget(engine.keys.verification(id), 'attempts')).toBe('3');
    // The right code after that is refused: the request is over.
    const late = await http(`${engine.url}/v1/verify/check`, { auth: a.auth, body: { request_id: id, code } });
    expect(late.body.error).toBe('verification_expired');
  });

  it('secrets, admin tokens and code MACs are compared in constant time (hash, then timingSafeEqual)', () => {
    // Unequal lengths and near-misses go through the same fixed-size comparison.
    expect(Sealer.equal('a'.repeat(64), 'a'.repeat(64))).toBe(true);
    expect(Sealer.equal('a'.repeat(64), 'a'.repeat(63) + 'b')).toBe(false);
    expect(Sealer.equal('a'.repeat(64), 'a')).toBe(false);
  });
});
