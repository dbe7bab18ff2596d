import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AccountStore } from '../../src/accounts/account-store.js';
import { buildApi } from '../../src/api/app.js';
import { Sealer } from '../../src/crypto/sealer.js';
import { Keys } from '../../src/store/keys.js';
import { ERROR_CATALOGUE } from '../../src/verification/errors.js';
import type { Method } from '../../src/verification/types.js';
import { VerificationService } from '../../src/verification/verification-service.js';
import { http, startTestEngine, testConfig, type TestEngine } from '../helpers/engine.js';

interface Doc {
  openapi: string;
  paths: Record<string, Record<string, { security?: unknown[]; responses: Record<string, { headers?: Record<string, unknown> }> }>>;
  components: { securitySchemes: Record<string, { type: string; scheme: string }>; schemas: Record<string, { properties?: Record<string, { enum?: string[] }> }> };
  security: unknown[];
}

/** Every route fastify registered, from its route tree (e.g. "POST /v1/verify/check"). */
function registeredRoutes(tree: string): string[] {
  const stack: string[] = [];
  const out: string[] = [];
  for (const line of tree.split('\n')) {
    const m = /^([│ ]*)[├└]── (\S+) \(([^)]+)\)$/.exec(line);
    if (!m) continue;
    const depth = m[1]!.length / 4;
    stack.length = depth;
    stack.push(m[2]!);
    for (const method of m[3]!.split(', ')) if (method !== 'HEAD') out.push(`${method} ${stack.join('')}`);
  }
  return out.sort();
}

describe('GET /v1/openapi.json', () => {
  let t: TestEngine;
  let doc: Doc;

  beforeAll(async () => {
    t = await startTestEngine(testConfig(), 'api');
    const res = await fetch(`${t.url}/v1/openapi.json`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/application\/json/);
    doc = JSON.parse(await res.text()) as Doc;
  });
  afterAll(async () => t?.stop());

  it('is an OpenAPI 3.1 document readable without credentials', () => {
    expect(doc.openapi).toBe('3.1.0');
    expect(doc.components.securitySchemes.basicAuth).toMatchObject({ type: 'http', scheme: 'basic' });
    expect(doc.security).toEqual([{ basicAuth: [] }]);
    expect(doc.paths['/v1/openapi.json']?.get?.security).toEqual([]);
  });

  it('describes exactly the routes the app registers', async () => {
    const redis = new Redis(t.config.redis.url);
    const sealer = new Sealer(Buffer.from(t.config.security.masterKey, 'hex'));
    const keys = new Keys(t.config.redis.prefix);
    const logger = pino({ level: 'silent' });
    const app = buildApi({
      config: t.config,
      redis,
      keys,
      sealer,
      accounts: new AccountStore(redis, keys, sealer),
      verifications: new VerificationService(redis, keys, sealer, t.config, { enqueue: async () => undefined }, logger, new Set<Method>(['flash_call'])),
      logger,
    });
    try {
      await app.ready();
      const actual = registeredRoutes(app.printRoutes({ commonPrefix: false }));
      const documented = Object.entries(doc.paths)
        .flatMap(([path, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${path.replace(/\{(\w+)\}/g, ':$1')}`))
        .map((r) => r.replace(':request_id', ':id'))
        .sort();
      expect(actual.length).toBeGreaterThanOrEqual(8);
      expect(documented).toEqual(actual);
    } finally {
      await app.close();
      redis.disconnect();
    }
  });

  it('documents the error schema, every error code, and the rate-limit headers of authenticated routes', () => {
    expect(doc.components.schemas.Error?.properties?.error?.enum?.sort()).toEqual(Object.keys(ERROR_CATALOGUE).sort());
    for (const [path, ops] of Object.entries(doc.paths)) {
      if (!path.startsWith('/v1/') || path === '/v1/openapi.json') continue;
      for (const op of Object.values(ops)) {
        expect(Object.keys(op.responses)).toEqual(expect.arrayContaining(['401', '429']));
        const ok = Object.entries(op.responses).find(([code]) => code.startsWith('2'))![1];
        expect(Object.keys(ok.headers ?? {})).toEqual(expect.arrayContaining(['X-RateLimit-Limit', 'X-RateLimit-Remaining', 'X-RateLimit-Reset']));
      }
    }
  });

  it('still requires auth for the rest of /v1', async () => {
    expect((await http(`${t.url}/v1/balance`)).status).toBe(401);
  });
});
