import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestEngine, testConfig, type TestEngine } from '../helpers/engine.js';

/**
 * Issue 8, bad input over HTTP: every malformed request gets the documented
 * 4xx with a `{"error", "message"}` body, never a 500 and never a stack
 * trace. Requests go over a raw TCP socket so that paths (`../`, `%2e%2e`,
 * NUL), headers and bodies reach the server exactly as written, as an
 * attacker would send them, not as fetch() would normalise them.
 */
interface RawResponse {
  status: number;
  headers: string;
  body: string;
}

function raw(url: string, head: string, body = ''): Promise<RawResponse> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname);
    let data = '';
    socket.setEncoding('latin1');
    socket.setTimeout(5000, () => socket.destroy(new Error('no answer within 5 s')));
    socket.on('data', (d: string) => {
      data += d;
      const end = data.indexOf('\r\n\r\n');
      if (end < 0) return;
      const headers = data.slice(0, end);
      const length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(headers)?.[1] ?? NaN);
      const got = data.length - end - 4;
      // Complete when the declared body is in, or the server closed (below).
      if (Number.isFinite(length) && got >= length) {
        socket.destroy();
        resolve({ status: Number(data.slice(9, 12)), headers, body: data.slice(end + 4, end + 4 + length) });
      }
    });
    socket.on('close', () => {
      const end = data.indexOf('\r\n\r\n');
      if (end < 0) return reject(new Error(`connection closed without a response: ${JSON.stringify(data)}`));
      resolve({ status: Number(data.slice(9, 12)), headers: data.slice(0, end), body: data.slice(end + 4) });
    });
    socket.on('error', reject);
    socket.write(head + body, 'latin1');
  });
}

describe('HTTP bad input: the documented 4xx, never a 500 or a stack trace', () => {
  let t: TestEngine;
  let auth: string;

  beforeAll(async () => {
    t = await startTestEngine(testConfig({ api: { defaultRateLimitPerSecond: 1000 }, http: { bodyLimitBytes: 16 * 1024 } }), 'api');
    auth = (await t.account({ balance: 5 })).auth;
  });
  afterAll(async () => t?.stop());

  const request = (method: string, path: string, opts: { body?: string; headers?: string[]; length?: number } = {}): string => {
    const body = opts.body ?? '';
    const lines = [
      `${method} ${path} HTTP/1.1`,
      'Host: 127.0.0.1',
      `Authorization: ${auth}`,
      'Connection: close',
      ...(opts.headers ?? (opts.body !== undefined ? ['Content-Type: application/json'] : [])),
      ...(opts.body !== undefined || opts.length !== undefined ? [`Content-Length: ${opts.length ?? Buffer.byteLength(body, 'latin1')}`] : []),
    ];
    return lines.join('\r\n') + '\r\n\r\n';
  };
  const verify = (body: string, headers?: string[]) => ({ head: request('POST', '/v1/verify', { body, headers }), body });
  const phone = '+447700900000';
  const UUID = '3f0c2a64-1b7e-4c1d-9a2e-5b6f7a8b9c0d';

  type Row = [name: string, status: number, error: string | undefined, req: () => { head: string; body?: string }, message?: RegExp];
  const rows: Row[] = [
    // Malformed JSON and bodies that are not a JSON object.
    ['truncated JSON', 400, 'invalid_request', () => verify('{"phone_number": '), /not valid JSON/],
    ['trailing garbage after the JSON', 400, 'invalid_request', () => verify(`{"phone_number":"${phone}"} x`), /not valid JSON/],
    ['single quotes', 400, 'invalid_request', () => verify(`{'phone_number':'${phone}'}`), /not valid JSON/],
    ['10 000 nested arrays', 400, 'invalid_request', () => verify('['.repeat(10_000)), /not valid JSON/],
    // Valid JSON nested 8,000 deep under a 16 KB limit: with an Idempotency-Key its fingerprint would walk it whole.
    ['8 000 nested arrays in a field, with an Idempotency-Key', 400, 'invalid_request', () => verify(`{"phone_number":"${phone}","x":${'['.repeat(8000)}${']'.repeat(8000)}}`, ['Content-Type: application/json', 'Idempotency-Key: deep-1']), /nested more than 32 levels/],
    ['check: 40 nested objects', 400, 'invalid_request', () => ({ head: request('POST', '/v1/verify/check', { body: `{"request_id":"${UUID}","code":${'{"a":'.repeat(40)}1${'}'.repeat(40)}}` }), body: `{"request_id":"${UUID}","code":${'{"a":'.repeat(40)}1${'}'.repeat(40)}}` }), /nested/],
    ['__proto__ key (prototype pollution)', 400, 'invalid_request', () => verify(`{"__proto__":{"admin":true},"phone_number":"${phone}"}`)],
    ['constructor.prototype key', 400, 'invalid_request', () => verify(`{"constructor":{"prototype":{"admin":true}},"phone_number":"${phone}"}`)],
    ['a JSON array', 400, 'invalid_request', () => verify('[1,2]'), /JSON object/],
    ['a JSON string', 400, 'invalid_request', () => verify('"+447700900000"'), /JSON object/],
    ['JSON null', 400, 'invalid_request', () => verify('null')],
    ['an empty body', 400, 'invalid_request', () => verify(''), /empty/],
    ['invalid UTF-8', 400, undefined, () => verify(`{"phone_number":"\xff\xfe"}`)],
    // Huge bodies: refused from Content-Length alone, or once the limit is crossed.
    ['a body over http.bodyLimitBytes', 400, 'invalid_request', () => verify(`{"phone_number":"${phone}","pad":"${'x'.repeat(100_000)}"}`), /too large/],
    ['Content-Length of 1 GB (body never sent)', 400, 'invalid_request', () => ({ head: request('POST', '/v1/verify', { headers: ['Content-Type: application/json'], length: 1_000_000_000 }) }), /too large/],
    ['wrong Content-Type', 400, 'invalid_request', () => verify(`phone_number=${phone}`, ['Content-Type: application/x-www-form-urlencoded']), /Content-Type/],
    ['JSON sent as text/plain', 400, 'invalid_request', () => verify(`{"phone_number":"${phone}"}`, ['Content-Type: text/plain']), /Content-Type must be application\/json/],
    // Wrong types.
    ['phone_number as a number', 400, 'invalid_phone', () => verify('{"phone_number":447700900000}')],
    ['phone_number null', 400, 'invalid_phone', () => verify('{"phone_number":null}')],
    ['phone_number as an object', 400, 'invalid_phone', () => verify('{"phone_number":{"$gt":""}}')],
    ['phone_number as an array', 400, 'invalid_phone', () => verify(`{"phone_number":["${phone}"]}`)],
    ['method as a number', 400, 'invalid_request', () => verify(`{"phone_number":"${phone}","method":5}`), /method/],
    ['code_length as a string', 400, 'invalid_request', () => verify(`{"phone_number":"${phone}","method":"sms","code_length":"6"}`), /code_length/],
    ['expiry_seconds as a string', 400, 'invalid_request', () => verify(`{"phone_number":"${phone}","expiry_seconds":"60"}`), /expiry_seconds/],
    ['expiry_seconds as a float', 400, 'invalid_request', () => verify(`{"phone_number":"${phone}","expiry_seconds":60.5}`), /expiry_seconds/],
    ['resend as a string', 400, 'invalid_request', () => verify(`{"phone_number":"${phone}","resend":"yes"}`), /resend/],
    ['check: code as a number', 400, 'invalid_request', () => ({ head: request('POST', '/v1/verify/check', { body: `{"request_id":"${UUID}","code":1234}` }), body: `{"request_id":"${UUID}","code":1234}` }), /code/],
    ['check: request_id as an object', 400, 'invalid_request', () => ({ head: request('POST', '/v1/verify/check', { body: '{"request_id":{},"code":"1234"}' }), body: '{"request_id":{},"code":"1234"}' }), /request_id/],
    // Unknown fields.
    ['an unknown field', 400, 'invalid_request', () => verify(`{"phone_number":"${phone}","callback":"http://x"}`), /unknown field\(s\): callback/],
    ['check: an unknown field', 400, 'invalid_request', () => ({ head: request('POST', '/v1/verify/check', { body: `{"request_id":"${UUID}","code":"1234","admin":true}` }), body: `{"request_id":"${UUID}","code":"1234","admin":true}` }), /admin/],
    // Header injection in the phone number (CR/LF, encoded or not, NUL).
    ['CR/LF + header in phone_number', 400, 'invalid_phone', () => verify(`{"phone_number":"${phone}\\r\\nX-Injected: 1"}`)],
    ['bare LF in phone_number', 400, 'invalid_phone', () => verify(`{"phone_number":"${phone}\\n"}`)],
    ['%0d%0a in phone_number', 400, 'invalid_phone', () => verify(`{"phone_number":"${phone}%0d%0aX-Injected: 1"}`)],
    ['NUL in phone_number', 400, 'invalid_phone', () => verify(`{"phone_number":"${phone}\\u0000"}`)],
    ['U+2028 in phone_number', 400, 'invalid_phone', () => verify(`{"phone_number":"${phone}\\u2028X-Injected: 1"}`)],
    // Path traversal and odd bytes in ids.
    ['../ in the id', 404, 'not_found', () => ({ head: request('GET', '/v1/verify/../balance') })],
    ['../../ to a key name', 404, 'not_found', () => ({ head: request('GET', '/v1/verify/../../admin/v1/accounts') })],
    ['%2e%2e%2f in the id', 404, 'not_found', () => ({ head: request('GET', '/v1/verify/%2e%2e%2f%2e%2e%2fbalance') })],
    ['..%2f in the id', 404, 'not_found', () => ({ head: request('GET', '/v1/verify/..%2f..%2fetc%2fpasswd') })],
    ['encoded NUL after a valid id', 404, 'not_found', () => ({ head: request('GET', `/v1/verify/${UUID}%00`) })],
    ['encoded NUL alone', 404, 'not_found', () => ({ head: request('GET', '/v1/verify/%00') })],
    ['a Redis glob as the id', 404, 'not_found', () => ({ head: request('GET', '/v1/verify/*') })],
    ['cancel with ../ in the id', 404, 'not_found', () => ({ head: request('POST', `/v1/verify/..%2f${UUID}/cancel`) })],
    ['check: request_id ../', 404, 'not_found', () => ({ head: request('POST', '/v1/verify/check', { body: '{"request_id":"../../accounts/x","code":"1234"}' }), body: '{"request_id":"../../accounts/x","code":"1234"}' })],
    ['bad percent-encoding', 400, 'invalid_request', () => ({ head: request('GET', '/v1/verify/%zz') }), /URL is not valid/],
    ['an id over the parameter limit', 404, 'not_found', () => ({ head: request('GET', `/v1/verify/${'a'.repeat(500)}`) })],
    // Bytes HTTP itself forbids: refused by the HTTP parser before any route (400, no body of ours).
    ['a raw NUL in the path', 400, undefined, () => ({ head: request('GET', '/v1/verify/\0') })],
    ['a bare CR inside a header value', 400, undefined, () => ({ head: request('GET', `/v1/verify/${UUID}`).replace('Connection: close', 'Connection: close\r\nIdempotency-Key: a\rb') })],
  ];

  it.each(rows)('%s → %i %s', async (_name, status, error, req, message) => {
    const { head, body } = req();
    const res = await raw(t.url, head, body ?? '');
    expect(res.status).toBe(status);
    // Never a stack trace, a file path or an internal exception name in what comes back.
    expect(res.body).not.toMatch(/\bat .+:\d+:\d+|\.ts\b|node_modules|Error:|TypeError|SyntaxError/);
    expect(res.headers).not.toMatch(/\r\nx-injected/i);
    if (error !== undefined) {
      const body = JSON.parse(res.body) as { error: string; message: string };
      expect(body.error).toBe(error);
      expect(typeof body.message).toBe('string');
      if (message) expect(body.message).toMatch(message);
    }
  });

  it('a URL refused before routing (bad percent-encoding, an overlong id) is still authenticated first and carries the rate-limit headers', async () => {
    for (const path of ['/v1/verify/%zz', `/v1/verify/${'a'.repeat(500)}`]) {
      const anonymous = await raw(t.url, request('GET', path).replace(`Authorization: ${auth}\r\n`, ''));
      expect([anonymous.status, JSON.parse(anonymous.body).error]).toEqual([401, 'unauthorized']);
      expect(anonymous.headers).toMatch(/\r\nwww-authenticate: Basic/i);
      const mine = await raw(t.url, request('GET', path));
      expect(mine.status).toBe(path.includes('%zz') ? 400 : 404);
      expect(mine.headers).toMatch(/\r\nx-ratelimit-limit: 1000\r\n/i);
      expect(mine.headers).toMatch(/\r\nx-ratelimit-remaining: \d+\r\n/i);
    }
    // Outside /v1 nothing is authenticated: the same refusal, no credentials asked for.
    expect((await raw(t.url, request('GET', '/admin/v1/%zz').replace(`Authorization: ${auth}\r\n`, ''))).status).toBe(400);
  });

  it('logged no 500 (no "request failed") through all of it, and still serves', async () => {
    expect(t.logs.filter((l) => l.includes('"request failed"'))).toEqual([]);
    const ok = await raw(t.url, request('GET', '/v1/balance'));
    expect(ok.status).toBe(200);
  });
});
