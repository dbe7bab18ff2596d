import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { http, startTestEngine, testConfig, type TestEngine } from '../helpers/engine.js';

const run = promisify(execFile);

/**
 * The FlashVerify documentation's own examples, with only the base URL
 * changed, against our server over real HTTP.
 */
describe('the documentation examples work against flashverify', () => {
  let t: TestEngine;
  let key = '';
  let secret = '';
  beforeAll(async () => {
    // The examples send to one number in a row: without this, the one-live-verification rule (fraud.test.ts) answers 409.
    t = await startTestEngine(testConfig({ fraud: { liveVerification: 'off' } }), 'api');
    const a = await t.account({ balance: 5 });
    key = a.api_key;
    secret = a.api_secret;
  });
  afterAll(async () => t?.stop());

  it('curl: send a verification', async () => {
    const { stdout } = await run('curl', [
      '-s', '-X', 'POST', `${t.url}/v1/verify`,
      '-u', `${key}:${secret}`,
      '-H', 'Content-Type: application/json',
      '-d', '{"phone_number": "+447700900000", "method": "flash_call"}',
    ]);
    expect(JSON.parse(stdout)).toMatchObject({ phone_number: '+447700900000', method: 'flash_call', status: 'sent' });
  });

  it('curl: check a code (wrong code → documented failure body)', async () => {
    const sent = await http(`${t.url}/v1/verify`, { auth: 'Basic ' + Buffer.from(`${key}:${secret}`).toString('base64'), body: { phone_number: '+447700900001' } });
    const enc = await t.redis.hget(t.keys.verification(String(sent.body.request_id)), 'code_enc');
    const right = t.sealer.open(enc!, `code:${sent.body.request_id}`);
    const wrong = right === '1234' ? '4321' : '1234';
    const check = async (code: string) =>
      JSON.parse(
        (
          await run('curl', [
            '-s', '-X', 'POST', `${t.url}/v1/verify/check`,
            '-u', `${key}:${secret}`,
            '-H', 'Content-Type: application/json',
            '-d', `{"request_id": "${sent.body.request_id}", "code": "${code}"}`,
          ])
        ).stdout,
      ) as Record<string, unknown>;
    expect(await check(wrong)).toEqual({ error: 'invalid_code', message: 'Incorrect code', attempts_remaining: 2 });
    expect(await check(right)).toEqual({ request_id: sent.body.request_id, status: 'verified', phone_number: '+447700900001' });
  });

  it('Python (requests)', async () => {
    const script = `
import requests

response = requests.post(
    "${t.url}/v1/verify",
    auth=("${key}", "${secret}"),
    json={
        "phone_number": "+447700900000",
        "method": "flash_call"
    }
)

data = response.json()
print(f"Request ID: {data['request_id']}")
print(f"Status: {data['status']}")
print(f"Cost: {data['cost']['currency']} {data['cost']['amount']}")
`;
    const python = await run('python3', ['-c', 'import requests']).then(() => true, () => false);
    if (!python) return; // python3-requests is not part of the project's CI dependencies
    const { stdout } = await run('python3', ['-c', script]);
    expect(stdout).toMatch(/^Request ID: [0-9a-f-]{36}\nStatus: sent\nCost: GBP 0\.004\n$/);
  });

  it('JavaScript (fetch + btoa)', async () => {
    const lines: string[] = [];
    const console = { log: (s: string) => lines.push(s) };
    // Verbatim from the docs but for the URL and the credentials.
    const response = await fetch(`${t.url}/v1/verify`, {
      method: 'POST',
      headers: {
        'Content-Type': 'application/json',
        Authorization: 'Basic ' + btoa(`${key}:${secret}`),
      },
      body: JSON.stringify({
        phone_number: '+447700900000',
        method: 'flash_call',
      }),
    });

    const data = (await response.json()) as { request_id: string; cost: { currency: string; amount: number } };
    console.log(`Request ID: ${data.request_id}`);
    console.log(`Cost: ${data.cost.currency} ${data.cost.amount}`);
    expect(response.status).toBe(201);
    expect(lines).toEqual([`Request ID: ${data.request_id}`, 'Cost: GBP 0.004']);
  });

  it('every response carries the rate-limit headers the docs show', async () => {
    const { stdout } = await run('curl', ['-s', '-D', '-', '-o', '/dev/null', '-u', `${key}:${secret}`, `${t.url}/v1/balance`]);
    expect(stdout).toMatch(/^x-ratelimit-limit: 10\r$/im);
    expect(stdout).toMatch(/^x-ratelimit-remaining: \d+\r$/im);
    expect(stdout).toMatch(/^x-ratelimit-reset: \d{10}\r$/im);
  });

  it('an internal failure is 500 internal_error with no stack trace', async () => {
    const a = await t.account();
    // A corrupt account record makes the debit script fail inside Redis.
    await t.redis.hset(t.keys.account(a.account_id), 'balance', 'not-a-number');
    const r = await http(`${t.url}/v1/verify`, { auth: a.auth, body: { phone_number: '+447700900002' } });
    expect(r.status).toBe(500);
    expect(r.body).toEqual({ error: 'internal_error', message: 'Something went wrong on our end. Contact support if persistent.' });
  });
});
