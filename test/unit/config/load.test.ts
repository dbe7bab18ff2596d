import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig, type LoadOptions } from '../../../src/config/load.js';
import { ConfigError } from '../../../src/errors/app-error.js';

/** Temp directories of yamlFile(), removed after the file's tests. */
const dirs: string[] = [];
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

/** The problems loadConfig reports, one a line; '' when the configuration is valid. */
function issues(env: NodeJS.ProcessEnv, overrides?: LoadOptions['overrides'], file?: string): string {
  try {
    loadConfig({ env, overrides, ...(file === undefined ? {} : { file }) });
    return '';
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return (e as ConfigError).issues.join('\n');
  }
}

function yamlFile(text: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'fv-config-'));
  dirs.push(dir);
  const file = join(dir, 'config.yaml');
  writeFileSync(file, text);
  return file;
}

/** The issues a config file is refused with (none: accepted). */
function issuesIn(file: string): string[] {
  try {
    loadConfig({ file, env: {} });
  } catch (e) {
    return (e as ConfigError).issues;
  }
  return [];
}

/** A config file with these `sip.trunks` (YAML flow mappings, one a trunk). */
function trunks(...lines: string[]): string {
  return yamlFile(`sip:\n  trunks:\n${lines.map((l) => `    - ${l}\n`).join('')}`);
}

/** `sip.dns` as loaded with these overrides (and `sip.timers`). */
function sipDns(dns: Record<string, unknown>, timers?: Record<string, unknown>) {
  return loadConfig({ env: {}, overrides: { sip: { dns, ...(timers ? { timers } : {}) } } }).sip.dns;
}

describe('loadConfig', () => {
  it('loads the shipped defaults as valid and frozen', () => {
    const c = loadConfig({ env: {} });
    expect(c.http.port).toBe(8080);
    expect(c.sip.trunks[0]?.uri).toBe('sip:127.0.0.1:5060');
    expect(c.numbers.ranges.length).toBeGreaterThan(0);
    expect(Object.isFrozen(c.sip.trunks[0])).toBe(true);
  });

  it('layers the file, then the environment', () => {
    const file = yamlFile('http:\n  port: 9000\nflash:\n  ringMs: 100\n');
    const c = loadConfig({
      file,
      env: { PORT: '9100', REDIS_URL: 'redis://10.0.0.1:6380', SIP_TRUNK_URI: 'sip:sbc.example:5080;transport=tcp', SIP_LISTEN_PORT: '5999', METRICS_PORT: '9465' },
    });
    expect(c.http.port).toBe(9100);
    expect(c.flash.ringMs).toBe(100);
    expect(c.redis.url).toBe('redis://10.0.0.1:6380');
    expect(c.sip.trunks[0]?.uri).toBe('sip:sbc.example:5080;transport=tcp');
    expect(c.sip.trunks[0]?.name).toBe('default');
    expect(c.sip.listen.port).toBe(5999);
    // A worker and a `--role webhooks` process on one host each need their own operator port.
    expect(c.metrics.port).toBe(9465);
    expect(() => loadConfig({ env: { METRICS_PORT: '9465x' } })).toThrow(/METRICS_PORT: must be a whole number/);
  });

  it('SIP_TRUNK_URI patches the first trunk; a config file cannot: its sip.trunkUri is an unknown key', () => {
    expect(issuesIn(yamlFile('sip:\n  trunkUri: "sip:10.9.9.9:5060"\n'))).toEqual([expect.stringMatching(/^sip: Unrecognized key.*trunkUri/)]);
  });

  it('refuses two event consumer groups of one name: they would split the events between them', () => {
    expect(issues({}, { events: { webhookGroup: 'status' } })).toMatch(/events\.webhookGroup: must differ from events\.consumerGroup \("status"\)/);
    expect(issues({}, { events: { workflowGroup: 'webhooks' } })).toMatch(/events\.workflowGroup: must differ from events\.webhookGroup \("webhooks"\)/);
    expect(issues({}, { events: { workflowGroup: '' } })).toBe('');
  });

  it('takes a Redis on this host by its Unix socket (unix:///path), and names the forms it accepts', () => {
    expect(loadConfig({ env: { REDIS_URL: 'unix:///run/redis/redis.sock?db=2' } }).redis.url).toBe('unix:///run/redis/redis.sock?db=2');
    expect(() => loadConfig({ env: { REDIS_URL: 'unix://run/redis.sock' } })).toThrow(/redis\.url: must be a redis:\/\/, rediss:\/\/, unix:\/\/\/path\/to\/redis\.sock or sentinel:\/\/host:port\/<master name> URL/);
    // Redis Sentinel: one URL listing its Sentinels, then the master's name.
    expect(loadConfig({ env: { REDIS_URL: 'sentinel://10.0.0.1:26379,10.0.0.2:26379/fvmaster/1' } }).redis.url).toBe('sentinel://10.0.0.1:26379,10.0.0.2:26379/fvmaster/1');
    expect(() => loadConfig({ env: { REDIS_URL: 'sentinel://10.0.0.1:26379' } })).toThrow(/redis\.url: a Sentinel URL is sentinel:\/\/host:port\[,host:port\.\.\.\]\/<master name>/);
    expect(() => loadConfig({ env: { REDIS_URL: '/run/redis.sock' } })).toThrow(/redis\.url/);
  });

  it('takes a Redis Cluster by its seed nodes, and insists on a hash tag in the prefix so every key shares one slot', () => {
    const c = loadConfig({ env: { REDIS_URL: 'redis://10.0.0.1:7000, redis://10.0.0.2:7000', REDIS_CLUSTER: 'true', REDIS_PREFIX: '{fv}' } });
    expect([c.redis.cluster, c.redis.prefix]).toEqual([true, '{fv}']);
    expect(loadConfig({}).redis.cluster).toBe(false);
    expect(() => loadConfig({ env: { REDIS_CLUSTER: 'true' } })).toThrow(/redis\.prefix: with redis\.cluster, the prefix needs a hash tag .* e\.g\. "\{fv\}"/);
    expect(() => loadConfig({ env: { REDIS_URL: 'redis://a:1,redis://b:1' } })).toThrow(/redis\.url: a list of URLs is only for redis\.cluster: true/);
    expect(() => loadConfig({ env: { REDIS_URL: 'unix:///run/redis.sock', REDIS_CLUSTER: '1', REDIS_PREFIX: '{fv}' } })).toThrow(/not a Unix socket/);
    expect(() => loadConfig({ env: { REDIS_URL: 'redis://a:1,b:1', REDIS_CLUSTER: 'yes', REDIS_PREFIX: '{fv}' } })).toThrow(/must be a redis:\/\/.*a seed node is "b:1"/);
    expect(() => loadConfig({ env: { REDIS_URL: 'redis://a:1/2', REDIS_CLUSTER: 'true', REDIS_PREFIX: '{fv}' } })).toThrow(/only database 0/);
    expect(loadConfig({ env: { REDIS_URL: 'redis://:pw@a:1/0', REDIS_CLUSTER: 'true', REDIS_PREFIX: '{fv}' } }).redis.url).toBe('redis://:pw@a:1/0');
    expect(() => loadConfig({ env: { REDIS_CLUSTER: 'maybe' } })).toThrow(/REDIS_CLUSTER: must be true or false/);
    expect(() => loadConfig({ env: { REDIS_PREFIX: 'f{v' } })).toThrow(/braces only around one non-empty hash tag/);
    expect(() => loadConfig({ env: { REDIS_PREFIX: '{}' } })).toThrow(/braces only around one non-empty hash tag/);
  });

  it('http.trustProxy: false, true, or the proxies\' addresses (IPs, CIDRs, named ranges); anything else is named', () => {
    expect(issues({}, { http: { trustProxy: ['10.0.0.0/8', '192.0.2.7', '2001:db8::/32', 'loopback'] } })).toBe('');
    expect(issues({}, { http: { trustProxy: true } })).toBe('');
    const bad = issues({}, { http: { trustProxy: ['10.0.0.0/33', 'proxy.example.com'] } as never });
    expect(bad).toMatch(/http\.trustProxy\.0: an IP address, a CIDR/);
    expect(bad).toMatch(/http\.trustProxy\.1: an IP address, a CIDR/);
    expect(issues({}, { http: { trustProxy: 2 } as never })).toMatch(/http\.trustProxy/);
  });

  it('keeps the admin API off by default and takes its token from FLASHVERIFY_ADMIN_TOKEN', () => {
    expect(loadConfig({ env: {} }).admin.token).toBe('');
    expect(loadConfig({ env: { FLASHVERIFY_ADMIN_TOKEN: 'a'.repeat(32) } }).admin.token).toBe('a'.repeat(32));
    expect(() => loadConfig({ env: { FLASHVERIFY_ADMIN_TOKEN: 'short' } })).toThrow(/admin\.token: must be empty/);
  });

  it('checks sms.templates at boot: each has {code} and fits one SMS part in its encoding, the error naming the template', () => {
    const load = (templates: Record<string, string>): unknown => {
      try {
        return loadConfig({ env: {}, overrides: { sms: { templates } } });
      } catch (e) {
        return e;
      }
    };
    const ok = load({ en: 'Your code: {code}', ru: 'Ваш код: {code}' }) as { sms: { templates: Record<string, string> } };
    expect(ok.sms.templates).toMatchObject({ en: 'Your code: {code}', ru: 'Ваш код: {code}' });
    const missing = load({ en: 'Your code: {code}', fr: 'Votre code' });
    expect(missing).toBeInstanceOf(ConfigError);
    expect((missing as ConfigError).issues.join('\n')).toMatch(/sms\.templates\.fr: must contain \{code\}/);
    // 156 GSM-7 characters + a 6-digit code > 160 septets; 65 UCS-2 characters + 6 > 70.
    const tooLong = load({ en: `${'a'.repeat(155)} {code}`, ru: `${'ж'.repeat(65)}{code}` });
    expect(tooLong).toBeInstanceOf(ConfigError);
    const issues = (tooLong as ConfigError).issues.join('\n');
    expect(issues).toMatch(/sms\.templates\.en: template "en" cannot be sent: .*160/);
    expect(issues).toMatch(/sms\.templates\.ru: template "ru" cannot be sent: .*UCS-2.*70/);
  });

  it('lists every error at once', () => {
    const file = yamlFile(
      'http:\n  port: 70000\nnumbers:\n  ranges:\n    - { prefix: "4419", country: uk }\nsip:\n  trunks: []\nbogus: 1\n',
    );
    let err: unknown;
    try {
      loadConfig({ file, env: { SIP_LISTEN_PORT: 'abc' } });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const issues = (err as ConfigError).issues;
    expect(issues.join('\n')).toMatch(/SIP_LISTEN_PORT/);
    // The env error is reported before schema errors; fix it and all schema errors show together.
    let second: unknown;
    try {
      loadConfig({ file, env: {} });
    } catch (e) {
      second = e;
    }
    expect(second).toBeInstanceOf(ConfigError);
    {
      const all = (second as ConfigError).issues.join('\n');
      expect(all).toMatch(/http\.port/);
      expect(all).toMatch(/numbers\.ranges\.0\.prefix/);
      expect(all).toMatch(/numbers\.ranges\.0\.country/);
      expect(all).toMatch(/sip\.trunks/);
      expect(all).toMatch(/bogus/);
    }
  });

  it('refuses a DID range whose caller IDs would not be numbers of its country, and says why', () => {
    // The shipped GB range gives the contract's example caller ID for code 1234 (10 digits after +44).
    expect(loadConfig({ env: {} }).numbers.ranges.find((r) => r.country === 'GB')!.prefix + '1234').toBe('+441908731234');
    const errorOf = (ranges: string): string => {
      try {
        loadConfig({ file: yamlFile(`numbers:\n  ranges:\n${ranges}`), env: {} });
      } catch (e) {
        expect(e).toBeInstanceOf(ConfigError);
        return (e as ConfigError).issues.join('\n');
      }
      return '';
    };
    // Two digits too many: +44190873000000-+44190873009999 are 12 digits after +44.
    expect(errorOf('    - { prefix: "+4419087300", country: GB }\n')).toMatch(
      /numbers\.ranges\.0\.prefix: caller IDs of this range \(\+44190873000000-\+44190873009999.*12 digits after \+44, which is not a possible GB number length/,
    );
    // Too short for a US number, and a prefix of another country's calling code.
    expect(errorOf('    - { prefix: "+12125", country: US }\n')).toMatch(/8 digits after \+1/);
    expect(errorOf('    - { prefix: "+44190873", country: FR }\n')).toMatch(/\+44190873 is not a FR number: FR numbers start with \+33/);
    expect(errorOf('    - { prefix: "+44190873", country: XX }\n')).toMatch(/country XX is not a country libphonenumber-js knows/);
    // Possible numbers load.
    expect(errorOf('    - { prefix: "+44190873", country: GB }\n    - { prefix: "+1212555", country: US }\n    - { prefix: "+3319087", country: FR }\n')).toBe('');
  });

  it('an international SMS sender (ton 1) gets NPI 1 (E.164) unless told otherwise, and must be a number', () => {
    const senders = (yaml: string) => loadConfig({ file: yamlFile(`sms:\n  senders:\n${yaml}`), env: {} }).sms.senders;
    const s = senders('    default: { addr: "+447700900000", ton: 1 }\n    byCountry:\n      FR: { addr: "33612345678", ton: 1, npi: 0 }\n');
    expect(s.default).toEqual({ addr: '+447700900000', ton: 1, npi: 1 });
    expect(s.byCountry.FR).toEqual({ addr: '33612345678', ton: 1, npi: 0 });
    // Alphanumeric: NPI 0 as before.
    expect(senders('    default: { addr: "Acme" }\n').default).toEqual({ addr: 'Acme', ton: 5, npi: 0 });
    expect(() => senders('    default: { addr: "Acme", ton: 1 }\n')).toThrow(/sms\.senders\.default: an international sender \(ton 1\) is an E\.164 number/);
  });

  it('sizes the per-account webhook share from webhooks.concurrency unless given, and refuses shares and cool-offs that make no sense', () => {
    const c = loadConfig({ env: {} });
    expect(c.webhooks.accountConcurrency).toBe(10);
    expect(c.webhooks.breaker).toEqual({ failures: 5, coolOffMs: 30_000, maxCoolOffMs: 600_000 });
    expect(loadConfig({ env: {}, overrides: { webhooks: { concurrency: 200 } } }).webhooks.accountConcurrency).toBe(40);
    expect(loadConfig({ env: {}, overrides: { webhooks: { concurrency: 3 } } }).webhooks.accountConcurrency).toBe(1);
    expect(loadConfig({ env: {}, overrides: { webhooks: { accountConcurrency: 50 } } }).webhooks.accountConcurrency).toBe(50);
    const file = yamlFile('webhooks:\n  accountConcurrency: 60\n  breaker: { failures: -1, coolOffMs: 60000, maxCoolOffMs: 1000 }\n');
    expect(() => loadConfig({ file, env: {} })).toThrow(/webhooks\.breaker\.failures: .*>=\s?0/);
    expect(() => loadConfig({ env: {}, overrides: { webhooks: { accountConcurrency: 60 } } })).toThrow(
      'webhooks.accountConcurrency: must be at most webhooks.concurrency (50): it is a share of those slots',
    );
    expect(() => loadConfig({ env: {}, overrides: { webhooks: { breaker: { coolOffMs: 60_000, maxCoolOffMs: 1000 } } } })).toThrow(
      'webhooks.breaker.maxCoolOffMs: maxCoolOffMs must be >= coolOffMs',
    );
    expect(() => loadConfig({ env: {}, overrides: { webhooks: { accountConcurrency: 0 } } })).toThrow(/webhooks\.accountConcurrency/);
  });

  it('keeps webhook connections alive 4 s idle, 32 per origin, unless told; 0 turns keep-alive off; refuses the rest by name', () => {
    const c = loadConfig({ env: {} });
    expect([c.webhooks.keepAliveMs, c.webhooks.maxSocketsPerHost]).toEqual([4000, 32]);
    expect(loadConfig({ env: {}, overrides: { webhooks: { keepAliveMs: 0 } } }).webhooks.keepAliveMs).toBe(0);
    const file = yamlFile('webhooks:\n  keepAliveMs: -1\n  maxSocketsPerHost: 0\n');
    expect(() => loadConfig({ file, env: {} })).toThrow(
      'webhooks.keepAliveMs: must be 0 (no keep-alive) or more milliseconds\n  - webhooks.maxSocketsPerHost: must be a whole number of connections, at least 1',
    );
    expect(() => loadConfig({ env: {}, overrides: { webhooks: { keepAliveMs: 1.5 } } })).toThrow('webhooks.keepAliveMs: must be a whole number of milliseconds (0: no keep-alive)');
  });

  it('keeps webhook host answers 30 s, failures 5 s, stale ones 5 min, 2 lookups at once; refuses bad values by name', () => {
    const c = loadConfig({ env: {} });
    expect([c.webhooks.dnsCacheMs, c.webhooks.dnsNegativeCacheMs, c.webhooks.dnsStaleMs, c.webhooks.maxLookups]).toEqual([30_000, 5_000, 300_000, 2]);
    expect(loadConfig({ env: {}, overrides: { webhooks: { dnsCacheMs: 0, dnsStaleMs: 0, dnsNegativeCacheMs: 0, maxLookups: 3 } } }).webhooks).toMatchObject({
      dnsCacheMs: 0,
      dnsStaleMs: 0,
      dnsNegativeCacheMs: 0,
      maxLookups: 3,
    });
    const file = yamlFile('webhooks:\n  dnsCacheMs: -1\n  dnsNegativeCacheMs: 1.5\n  dnsStaleMs: "5m"\n  maxLookups: 0\n');
    expect(() => loadConfig({ file, env: {} })).toThrow(
      'webhooks.dnsCacheMs: must be a whole number of milliseconds, 0 or more\n' +
        '  - webhooks.dnsNegativeCacheMs: must be a whole number of milliseconds, 0 or more\n' +
        '  - webhooks.dnsStaleMs: must be a whole number of milliseconds, 0 or more\n' +
        '  - webhooks.maxLookups: must be a whole number of lookups, at least 1 (or null: the default)',
    );
  });

  it('keeps webhooks.maxLookups below libuv\'s thread pool (UV_THREADPOOL_SIZE, else 4), so hung lookups leave it threads', () => {
    expect(() => loadConfig({ env: {}, overrides: { webhooks: { maxLookups: 4 } } })).toThrow(
      "webhooks.maxLookups: must be at most 3, below libuv's thread pool of 4 (UV_THREADPOOL_SIZE, else 4), so that lookups the resolver never answers leave threads for file, crypto and zlib work",
    );
    expect(loadConfig({ env: { UV_THREADPOOL_SIZE: '16' }, overrides: { webhooks: { maxLookups: 8 } } }).webhooks.maxLookups).toBe(8);
    expect(() => loadConfig({ env: { UV_THREADPOOL_SIZE: '8' }, overrides: { webhooks: { maxLookups: 8 } } })).toThrow(/webhooks\.maxLookups: must be at most 7, below libuv's thread pool of 8/);
    // The default follows a smaller pool: one thread left for the rest; a pool of one cannot spare any.
    expect(loadConfig({ env: { UV_THREADPOOL_SIZE: '2' } }).webhooks.maxLookups).toBe(1);
    expect(loadConfig({ env: { UV_THREADPOOL_SIZE: '1' } }).webhooks.maxLookups).toBe(1);
    expect(loadConfig({ env: { UV_THREADPOOL_SIZE: '64' } }).webhooks.maxLookups).toBe(2);
    // libuv would run one thread for these: refused, with the other problems.
    for (const bad of ['0', '', 'four']) {
      expect(() => loadConfig({ env: { UV_THREADPOOL_SIZE: bad } }), bad).toThrow(`UV_THREADPOOL_SIZE: must be a whole number of threads, at least 1 (libuv runs one thread otherwise), got "${bad}"`);
    }
  });

  it('takes OPTIONS pings off by default, an interval per trunk over the global one, and refuses intervals that make no sense by name', () => {
    const c = loadConfig({ env: {} });
    expect(c.sip.trunkHealth.optionsPingMs).toBe(0);
    expect(c.sip.trunks[0]?.optionsPingMs).toBeUndefined();
    const file = yamlFile(
      'sip:\n  trunkHealth: { optionsPingMs: 30000 }\n  trunks:\n    - { name: a, uri: "sip:10.0.0.1" }\n    - { name: b, uri: "sip:10.0.0.2", optionsPingMs: 0 }\n    - { name: c, uri: "sip:10.0.0.3", optionsPingMs: 5000 }\n',
    );
    const set = loadConfig({ file, env: {} }).sip;
    expect(set.trunkHealth.optionsPingMs).toBe(30_000);
    expect(set.trunks.map((t) => t.optionsPingMs)).toEqual([undefined, 0, 5000]);
    const bad = yamlFile(
      'sip:\n  trunkHealth: { optionsPingMs: 50 }\n  trunks:\n    - { name: a, uri: "sip:10.0.0.1", optionsPingMs: -1 }\n    - { name: b, uri: "sip:10.0.0.2", optionsPingMs: 1.5 }\n    - { name: c, uri: "sip:10.0.0.3", optionsPingMs: "30s" }\n',
    );
    const message = 'must be 0 (no OPTIONS pings) or a whole number of milliseconds from 100 to 3600000';
    expect(() => loadConfig({ file: bad, env: {} })).toThrow(
      [0, 1, 2].map((i) => `sip.trunks.${i}.optionsPingMs: ${message}`).join('\n  - ') + `\n  - sip.trunkHealth.optionsPingMs: ${message}`,
    );
    expect(() => loadConfig({ env: {}, overrides: { sip: { trunkHealth: { optionsPingMs: 3_600_001 } } } })).toThrow(`sip.trunkHealth.optionsPingMs: ${message}`);
  });

  it('sip.trunks[]: rel100, number formats and a tech prefix as a carrier wants them; anything else refused by name', () => {
    const ok = trunks('{ name: a, uri: "sip:10.0.0.1", rel100: supported, calledNumberFormat: national, callingNumberFormat: e164_no_plus, techPrefix: "1234#" }');
    expect(loadConfig({ file: ok, env: {} }).sip.trunks[0]).toMatchObject({ rel100: 'supported', calledNumberFormat: 'national', callingNumberFormat: 'e164_no_plus', techPrefix: '1234#' });
    const bad = trunks('{ name: a, uri: "sip:10.0.0.1", rel100: yes, calledNumberFormat: local, techPrefix: "12 34" }');
    let issues: string[] = [];
    try {
      loadConfig({ file: bad, env: {} });
    } catch (e) {
      issues = (e as ConfigError).issues;
    }
    expect(issues).toEqual([
      expect.stringMatching(/^sip\.trunks\.0\.rel100: .*"off".*"supported".*"required"/),
      expect.stringMatching(/^sip\.trunks\.0\.calledNumberFormat: .*"e164".*"e164_no_plus".*"national"/),
      'sip.trunks.0.techPrefix: must be 1-16 of 0-9 A-Z a-z * # + . - (a carrier routing prefix such as "1234#")',
    ]);
  });

  it('sip.trunks[].proxy: an outbound proxy URI, checked as a trunk URI is; refused on the drachtio backend, naming the trunk', () => {
    const ok = trunks('{ name: a, uri: "sip:carrier.example.net", proxy: "sip:sbc.internal:5060;transport=tcp" }');
    expect(loadConfig({ file: ok, env: {} }).sip.trunks[0]?.proxy).toBe('sip:sbc.internal:5060;transport=tcp');
    expect(() => loadConfig({ file: trunks('{ name: a, uri: "sip:carrier.example.net", proxy: "sip:sbc.internal;transport=sctp" }'), env: {} })).toThrow(
      'sip.trunks.0.proxy: trunk "a" (sip:sbc.internal;transport=sctp): unsupported transport sctp (udp, tcp or tls)',
    );
    const drachtio = yamlFile('sip:\n  backend: drachtio\n  trunks:\n    - { name: a, uri: "sip:carrier.example.net", proxy: "sip:sbc.internal" }\n');
    expect(() => loadConfig({ file: drachtio, env: {} })).toThrow('sip.trunks.0.proxy: trunk "a": proxy needs sip.backend embedded; drachtio-server has its own outbound proxy settings');
  });

  it('takes sips: and transport=tls trunks (SIP over TLS); refuses at boot the URIs no transport here can carry, naming trunk and key', () => {
    for (const uri of ['sips:sbc.example.net', 'sip:sbc.example.net:5061;transport=tls', 'sips:sbc.example.net;transport=tcp']) {
      expect(issues({ SIP_TRUNK_URI: uri })).toBe('');
      expect(issues({ SIP_TRUNK_URI: uri }, { sip: { backend: 'drachtio' } })).toBe('');
    }
    // sips: over UDP would be DTLS; an unknown transport is refused at boot, not at the first call.
    expect(issues({ SIP_TRUNK_URI: 'sips:sbc.example.net;transport=udp' })).toMatch(/^sip\.trunks\.0\.uri: trunk "default" .*a sips: URI needs TLS over TCP/);
    expect(issues({ SIP_TRUNK_URI: 'sip:sbc.example.net;transport=sctp' })).toMatch(/^sip\.trunks\.0\.uri: trunk "default" .*unsupported transport sctp/);
    // sip.tls: verification on by default; files checked at boot; a client certificate needs its key.
    expect(loadConfig({ env: {} }).sip.tls).toEqual({ insecureSkipVerify: false, handshakeTimeoutMs: 5000, idleTimeoutMs: 60_000 });
    const pem = yamlFile('not read here');
    expect(issues({}, { sip: { tls: { caFile: pem, certFile: pem, keyFile: pem } } })).toBe('');
    expect(issues({}, { sip: { tls: { caFile: '/nonexistent/ca.pem' } } })).toMatch(/^sip\.tls\.caFile: cannot read \/nonexistent\/ca\.pem \(ENOENT\)/);
    expect(issues({}, { sip: { tls: { certFile: pem } } })).toMatch(/^sip\.tls\.keyFile: certFile and keyFile go together/);
    expect(issues({}, { sip: { tls: { handshakeTimeoutMs: 0 } } })).toMatch(/^sip\.tls\.handshakeTimeoutMs/);
  });

  it('sip.trunks[].tls: a TLS trunk\'s own CA, client certificate, verification, server name and timeouts; refused at boot naming the trunk', () => {
    const pem = yamlFile('not read here');
    const ok = trunks(
      `{ name: a, uri: "sips:sbc-a.example.net", tls: { caFile: "${pem}", certFile: "${pem}", keyFile: "${pem}", serverName: sbc.carrier-a.net } }`,
      '{ name: b, uri: "sip:sbc-b.example.net:5061;transport=tls", tls: { insecureSkipVerify: true, handshakeTimeoutMs: 1500, idleTimeoutMs: 0 } }',
      '{ name: c, uri: "sips:sbc-c.example.net" }',
    );
    const sip = loadConfig({ file: ok, env: {} }).sip;
    // Only what the trunk gives: the rest is sip.tls's, applied by the stack.
    expect(sip.trunks.map((t) => t.tls)).toEqual([{ caFile: pem, certFile: pem, keyFile: pem, serverName: 'sbc.carrier-a.net' }, { insecureSkipVerify: true, handshakeTimeoutMs: 1500, idleTimeoutMs: 0 }, undefined]);
    expect(sip.tls).toEqual({ insecureSkipVerify: false, handshakeTimeoutMs: 5000, idleTimeoutMs: 60_000 });

    const bad = trunks(
      '{ name: missing-ca, uri: "sips:a.example.net", tls: { caFile: /nonexistent/ca-a.pem } }',
      `{ name: half-pair, uri: "sips:b.example.net", tls: { certFile: "${pem}" } }`,
      `{ name: plain-udp, uri: "sip:c.example.net", tls: { caFile: "${pem}" } }`,
      `{ name: plain-tcp, uri: "sip:d.example.net;transport=tcp", tls: {} }`,
      '{ name: by-ip, uri: "sips:e.example.net", tls: { serverName: "192.0.2.1" } }',
      '{ name: timeouts, uri: "sips:f.example.net", tls: { handshakeTimeoutMs: 50, idleTimeoutMs: -1 } }',
    );
    expect(issues({}, undefined, bad).split('\n')).toEqual([
      'sip.trunks.4.tls.serverName: must be a DNS host name (SNI carries no IP address, RFC 6066 3)',
      'sip.trunks.5.tls.handshakeTimeoutMs: must be a whole number of milliseconds from 100 to 60000',
      'sip.trunks.5.tls.idleTimeoutMs: must be 0 (kept open) or a whole number of milliseconds',
      'sip.trunks.0.tls.caFile: trunk "missing-ca": cannot read /nonexistent/ca-a.pem (ENOENT)',
      'sip.trunks.1.tls.keyFile: trunk "half-pair": certFile and keyFile go together (mutual TLS): give both or neither',
      'sip.trunks.2.tls: trunk "plain-udp": tls settings are for a TLS trunk (sips: or ;transport=tls), and sip:c.example.net is UDP',
      'sip.trunks.3.tls: trunk "plain-tcp": tls settings are for a TLS trunk (sips: or ;transport=tls), and sip:d.example.net;transport=tcp is TCP',
    ]);
    // drachtio-server makes the TLS connections itself: a trunk's own settings could not apply, so they are refused.
    expect(issues({}, { sip: { backend: 'drachtio' } }, ok).split('\n')).toEqual([
      expect.stringMatching(/^sip\.trunks\.0\.tls: trunk "a": per-trunk tls settings need sip\.backend embedded: with drachtio, drachtio-server makes the TLS connections/),
      expect.stringMatching(/^sip\.trunks\.1\.tls: trunk "b": per-trunk tls settings need sip\.backend embedded/),
    ]);
  });

  it('sip.trunks[].tls.systemCa: a trunk verified against Node\'s trust store beside sip.tls.caFile; with its own caFile or no verification it is refused, naming the trunk', () => {
    const pem = yamlFile('not read here');
    const file = yamlFile(
      `sip:\n  tls: { caFile: "${pem}" }\n  trunks:\n` +
        '    - { name: carrier-a, uri: "sips:sbc.carrier-a.net" }\n' +
        '    - { name: carrier-b, uri: "sips:sbc.carrier-b.net", tls: { systemCa: true } }\n',
    );
    const sip = loadConfig({ file, env: {} }).sip;
    expect(sip.tls.caFile).toBe(pem);
    expect(sip.trunks.map((t) => t.tls)).toEqual([undefined, { systemCa: true }]);

    const bad = trunks(
      `{ name: both, uri: "sips:a.example.net", tls: { systemCa: true, caFile: "${pem}" } }`,
      '{ name: unverified, uri: "sips:b.example.net", tls: { systemCa: true, insecureSkipVerify: true } }',
      // false is what a trunk gets without it: sip.tls.caFile, or Node's store when that is unset.
      `{ name: fine, uri: "sips:c.example.net", tls: { systemCa: false, caFile: "${pem}" } }`,
    );
    expect(issues({}, undefined, bad).split('\n')).toEqual([
      'sip.trunks.0.tls.systemCa: trunk "both": tls.systemCa: true (Node\'s trust store) and tls.caFile (this CA bundle only) contradict each other: keep one',
      'sip.trunks.1.tls.systemCa: trunk "unverified": tls.systemCa: true verifies against Node\'s trust store, and tls.insecureSkipVerify: true verifies nothing: keep one',
    ]);
  });

  it('sip.dns: the system resolver, answers kept 60 s, 2 s per query, NAPTR on unless told; refuses server names and bad ports by name', () => {
    const failover = { failedTargetMs: 30_000, targetTimeoutMs: 4000, naptr: true };
    expect(loadConfig({ env: {}, overrides: { sip: { dns: { naptr: false } } } }).sip.dns.naptr).toBe(false);
    expect(loadConfig({ env: {} }).sip.dns).toEqual({ cacheMs: 60_000, timeoutMs: 2000, ...failover });
    const servers = ['10.0.0.2', '127.0.0.1:5353', '::1', '[2001:db8::1]:53'];
    expect(loadConfig({ env: {}, overrides: { sip: { dns: { servers, cacheMs: 0 } } } }).sip.dns).toEqual({ servers, cacheMs: 0, timeoutMs: 2000, ...failover });
    const file = yamlFile('sip:\n  dns:\n    servers: [ns1.example.net, "10.0.0.2:0", "10.0.0.2:53"]\n    cacheMs: -1\n    timeoutMs: 10\n');
    let issues: string[] = [];
    try {
      loadConfig({ file, env: {} });
    } catch (e) {
      issues = (e as ConfigError).issues;
    }
    expect(issues).toEqual([
      'sip.dns.servers.0: must be ip, ip:port or [ipv6]:port (an address, not a name)',
      'sip.dns.servers.1: must be ip, ip:port or [ipv6]:port (an address, not a name)',
      expect.stringMatching(/^sip\.dns\.cacheMs: /),
      expect.stringMatching(/^sip\.dns\.timeoutMs: /),
    ]);
  });

  it('sip.dns.failedTargetMs: failed SRV targets skipped 30 s unless told; 0 turns it off; refuses the rest by name', () => {
    expect(sipDns({ failedTargetMs: 0 })).toMatchObject({ failedTargetMs: 0 });
    expect(sipDns({ failedTargetMs: 3_600_000 })).toMatchObject({ failedTargetMs: 3_600_000 });
    const message = 'sip.dns.failedTargetMs: must be a whole number of milliseconds from 0 (never skipped) to 3600000 (1 h)';
    for (const value of ['-1', '1.5', '3600001', '"30s"']) expect(issuesIn(yamlFile(`sip:\n  dns:\n    failedTargetMs: ${value}\n`))).toEqual([message]);
  });

  it('sip.dns.targetTimeoutMs: a silent SRV target left after 8 × T1 (4 s) unless told; 0 leaves it to Timer B/F; else from T1 to below Timer B', () => {
    // The default follows T1: valid with short timers too (64 × 50 ms = 3.2 s is below the 4 s of the default T1).
    expect(sipDns({}, { t1Ms: 50 })).toMatchObject({ targetTimeoutMs: 400 });
    for (const ms of [0, 500, 31_999]) expect(sipDns({ targetTimeoutMs: ms })).toMatchObject({ targetTimeoutMs: ms });
    expect(sipDns({ targetTimeoutMs: 200 }, { t1Ms: 200 })).toMatchObject({ targetTimeoutMs: 200 });
    for (const value of ['1.5', '-1', '"4s"']) {
      expect(issuesIn(yamlFile(`sip:\n  dns:\n    targetTimeoutMs: ${value}\n`))).toEqual(['sip.dns.targetTimeoutMs: must be a whole number of milliseconds, 0 or more']);
    }
    const range = 'sip.dns.targetTimeoutMs: must be 0 (Timer B/F only) or from sip.timers.t1Ms (500) to below Timer B (64 × t1Ms = 32000)';
    for (const value of [499, 32_000]) expect(issuesIn(yamlFile(`sip:\n  dns:\n    targetTimeoutMs: ${value}\n`))).toEqual([range]);
  });

  it('sip.trunkLimits: the trunk\'s limits across worker processes unless told; process is accepted; anything else refused by name', () => {
    expect(loadConfig({ env: {} }).sip.trunkLimits).toBe('cluster');
    expect(loadConfig({ env: {}, overrides: { sip: { trunkLimits: 'process' } } }).sip.trunkLimits).toBe('process');
    expect(() => loadConfig({ env: {}, overrides: { sip: { trunkLimits: 'global' as 'cluster' } } })).toThrow(/sip\.trunkLimits: Invalid option: expected one of "cluster"\|"process"/);
  });

  it('numbers.ranges[].trunks: names only trunks that exist, refused by name otherwise', () => {
    const trunks = [{ name: 'bt', uri: 'sip:127.0.0.1:5060' }];
    const ok = loadConfig({ env: {}, overrides: { sip: { trunks }, numbers: { ranges: [{ prefix: '+44190873', country: 'GB', trunks: ['bt'] }] } } });
    expect(ok.numbers.ranges[0]!.trunks).toEqual(['bt']);
    expect(() => loadConfig({ env: {}, overrides: { sip: { trunks }, numbers: { ranges: [{ prefix: '+44190873', country: 'GB', trunks: ['tb'] }] } } })).toThrow(
      /numbers\.ranges\.0\.trunks\.0: no SIP trunk is named "tb" \(sip\.trunks\[\]\.name: bt\)/,
    );
  });

  it('${NAME} in the config file is read from the environment (secrets out of the file); unset is refused by key and name, never made empty', () => {
    const file = yamlFile(
      [
        'sip:',
        '  trunks:',
        '    - { name: carrier, uri: "sip:${TRUNK_HOST}:5060", auth: { username: fv, password: "${TRUNK_PASSWORD}" } }',
        'sms:',
        '  smscs:',
        '    - { name: smsc, url: "smpp://fv:${SMPP_PASSWORD:-secret}@127.0.0.1:2775", systemType: "$${literal}" }',
      ].join('\n'),
    );
    const c = loadConfig({ file, env: { TRUNK_HOST: '10.0.0.7', TRUNK_PASSWORD: 'p$ss${x' } });
    expect(c.sip.trunks[0]).toMatchObject({ uri: 'sip:10.0.0.7:5060', auth: { password: 'p$ss${x' } });
    expect(c.sms.smscs[0]).toMatchObject({ url: 'smpp://fv:secret@127.0.0.1:2775', systemType: '${literal}' });
    const missing = (() => {
      try {
        loadConfig({ file, env: { TRUNK_HOST: '10.0.0.7' } });
      } catch (e) {
        return (e as ConfigError).issues;
      }
      return [];
    })();
    expect(missing).toEqual(['sip.trunks.0.auth.password: environment variable TRUNK_PASSWORD is not set (the config file says ${TRUNK_PASSWORD})']);
  });

  it('a value that is one ${NAME} is a number or a boolean where the schema wants one, as YAML would read it; elsewhere it stays text', () => {
    const file = yamlFile(
      'http:\n  port: "${P}"\nsip:\n  trunks:\n    - { name: a, uri: "sip:192.0.2.1", cps: "${CPS}" }\nmetrics:\n  enabled: "${METRICS}"\nadmin:\n  token: "${TOKEN}"\n',
    );
    const c = loadConfig({ file, env: { P: '9001', CPS: '50', METRICS: 'false', TOKEN: '1234567890123456' } });
    expect([c.http.port, c.sip.trunks[0]!.cps, c.metrics.enabled, c.admin.token]).toEqual([9001, 50, false, '1234567890123456']);
    // A setting of several forms: http.trustProxy (false, true or addresses).
    expect(loadConfig({ file: yamlFile('http:\n  trustProxy: "${TRUST}"\n'), env: { TRUST: 'true' } }).http.trustProxy).toBe(true);
    // Not a number: named as before; a reference inside other text stays text.
    expect(() => loadConfig({ file, env: { P: '9001', CPS: 'fifty', METRICS: 'false', TOKEN: '1234567890123456' } })).toThrow(/sip\.trunks\.0\.cps: .*expected number/);
    expect(() => loadConfig({ file: yamlFile('http:\n  port: "90${P}"\n'), env: { P: '01' } })).toThrow(/http\.port: .*expected number/);
  });

  it('reports unreadable and invalid YAML files', () => {
    expect(() => loadConfig({ file: '/nonexistent/flashverify.yaml', env: {} })).toThrow(/cannot read/);
    expect(() => loadConfig({ file: yamlFile('http: [unclosed'), env: {} })).toThrow(/not valid YAML/);
  });
  it('lists every problem at once: those of the file and the environment with the schema\'s, naming the variable a value came from', () => {
    const file = yamlFile(['http:', '  port: "abc"', 'sip:', '  trunks:', '    - name: default', '      uri: sip:127.0.0.1:5060', '      auth: { username: u, password: "${FV_TEST_UNSET_PW}" }', ''].join('\n'));
    const got = issues({ SIP_LISTEN_PORT: 'x', REDIS_URL: 'http://x', SIP_TRUNK_URI: 'tel:123', SMPP_URL: 'foo', FLASHVERIFY_MASTER_KEY: 'AAAA' }, undefined, file);
    expect(got).toMatch(/environment variable FV_TEST_UNSET_PW is not set/);
    expect(got).toMatch(/^SIP_LISTEN_PORT: must be a whole number/m);
    expect(got).toMatch(/^http\.port: .*number/m);
    expect(got).toMatch(/^redis\.url: must be a redis:\/\/.* \(set by REDIS_URL\)$/m);
    expect(got).toMatch(/^sip\.trunks\.0\.uri: must be a SIP URI.* \(set by SIP_TRUNK_URI\)$/m);
    expect(got).toMatch(/^sms\.url: must be an smpp:\/\/ URL \(set by SMPP_URL\)$/m);
    expect(got).toMatch(/^security\.masterKey: must be 32 bytes as 64 hex characters or base64 \(set by FLASHVERIFY_MASTER_KEY\)$/m);
    expect(got).not.toContain('AAAA');
    // The unset variable's key is named once, not again by the schema.
    expect(got.split('\n').filter((l) => l.startsWith('sip.trunks.0.auth.password')).length).toBe(1);
  });

  it('refuses at boot a trunk its first call would refuse: a user part, a port out of range, a reserved or broken header, a bad fromDomain', () => {
    const trunk = (t: Record<string, unknown>) => ({ sip: { trunks: [{ name: 'carrier', ...t }] } }) as LoadOptions['overrides'];
    expect(issues({}, trunk({ uri: 'sip:gw@sbc.example.net' }))).toMatch(/^sip\.trunks\.0\.uri: trunk carrier: uri has a user part \("gw@"\).*auth\.username/m);
    expect(issues({}, trunk({ uri: 'sip:127.0.0.1:99999' }))).toMatch(/^sip\.trunks\.0\.uri: trunk carrier: uri must look like sip:host/m);
    expect(issues({}, trunk({ uri: 'sip:127.0.0.1', headers: { Via: 'x' } }))).toMatch(/header Via is reserved/);
    expect(issues({}, trunk({ uri: 'sip:127.0.0.1', headers: { 'X-A': 'a\r\nB: c' } }))).toMatch(/header X-A contains CR\/LF/);
    expect(issues({}, trunk({ uri: 'sip:127.0.0.1', headers: { 'X A': 'a' } }))).toMatch(/bad header name "X A"/);
    expect(issues({}, trunk({ uri: 'sip:127.0.0.1', fromDomain: 'a b' }))).toMatch(/trunk carrier: bad fromDomain/);
    expect(issues({}, trunk({ uri: 'sip:127.0.0.1:0' }))).toMatch(/^sip\.trunks\.0\.uri: .*the port from 1 to 65535/m);
    expect(issues({}, trunk({ uri: 'sip:127.0.0.1', auth: { username: 'u\r\nX-Evil: 1', password: 'p' } }))).toMatch(/^sip\.trunks\.0\.auth\.username: must not contain CR, LF or NUL/m);
    // From the environment: the variable named; a URI the pattern refuses is said once.
    expect(issues({ SIP_TRUNK_URI: 'sip:bob@127.0.0.1' })).toMatch(/^sip\.trunks\.0\.uri: trunk default: uri has a user part .*\(set by SIP_TRUNK_URI\)$/m);
    expect(issues({ SIP_TRUNK_URI: 'http://x' }).split('\n')).toHaveLength(1);
    expect(issues({}, trunk({ uri: 'sip:127.0.0.1:5080', headers: { 'X-Account': '42' }, fromDomain: 'cli.example.net' }))).toBe('');
    expect(issues({}, trunk({ uri: 'sip:[::1]:5060;transport=tcp', proxy: 'sip:[::1]:5070;lr' }))).toBe('');
  });

  it('refuses two trunks, SMSCs or DID ranges of one name or prefix: their health, limits, receipts and counters are kept under it', () => {
    const got = issues({}, {
      sip: { trunks: [{ name: 'carrier', uri: 'sip:127.0.0.1:5060' }, { name: 'carrier', uri: 'sip:127.0.0.1:5070' }] },
      sms: { smscs: [{ name: 'smsc', url: 'smpp://a:b@127.0.0.1:2775' }, { name: 'smsc', url: 'smpp://a:b@127.0.0.1:2776' }] },
      numbers: { ranges: [{ prefix: '+44190873', country: 'GB' }, { prefix: '+44190873', country: 'GB' }] },
    } as LoadOptions['overrides']);
    expect(got).toMatch(/^sip\.trunks\.1\.name: trunk name "carrier" is also sip\.trunks\[0\]'s/m);
    expect(got).toMatch(/^sms\.smscs\.1\.name: SMSC name "smsc" is also sms\.smscs\[0\]'s/m);
    expect(got).toMatch(/^numbers\.ranges\.1\.prefix: range \+44190873 is also numbers\.ranges\[0\]/m);
  });

  it('refuses settings that contradict each other, a default workflow no request could use, and SMSC and Redis URLs that do not parse', () => {
    const got = issues({}, {
      verification: { defaultExpirySeconds: 900, maxExpirySeconds: 600, defaultWorkflow: [{ method: 'flash_call' }, { method: 'voice', timeout_seconds: 2 }, { method: 'sms' }] },
      sip: { timers: { t1Ms: 5000, t2Ms: 4000 }, trunkHealth: { retryAfterMs: 120_000, maxRetryAfterMs: 60_000 } },
      sms: { retry: { firstDelayMs: 90_000, maxDelayMs: 60_000 }, smscs: [{ name: 'a', url: 'smpp://a:b@127.0.0.1:99999' }, { name: 'b', url: 'smpp://sixteen_chars_id:b@127.0.0.1' }, { name: 'c', url: 'smpp://a:ninechars@127.0.0.1' }] },
      fraud: { countries: { allow: ['XX', 'UK'] } },
      events: { consumerGroup: '' },
      redis: { url: 'redis://127.0.0.1:abc' },
    } as LoadOptions['overrides']);
    expect(got).toMatch(/^verification\.defaultExpirySeconds: 900 is over verification\.maxExpirySeconds \(600\)/m);
    expect(got).toMatch(/^verification\.defaultWorkflow\.0\.timeout_seconds: required on every step but the last/m);
    expect(got).toMatch(/^verification\.defaultWorkflow\.1\.timeout_seconds: must be from verification\.minStepTimeoutSeconds \(5\)/m);
    expect(got).toMatch(/^sip\.timers\.t1Ms: T1 must not be over T2/m);
    expect(got).toMatch(/^sip\.trunkHealth\.retryAfterMs: must not be over maxRetryAfterMs/m);
    expect(got).toMatch(/^sms\.retry\.firstDelayMs: must not be over maxDelayMs/m);
    expect(got).toMatch(/^sms\.smscs\.0\.url: SMSC "a": the URL is not a URL/m);
    expect(got).toMatch(/^sms\.smscs\.1\.url: SMSC "b": the URL system_id .* 15 characters/m);
    expect(got).toMatch(/^sms\.smscs\.2\.url: SMSC "c": the URL password .* 8 characters/m);
    expect(got).toMatch(/^fraud\.countries\.allow\.0: "XX" is not a country/m);
    expect(got).toMatch(/^fraud\.countries\.allow\.1: "UK" is not a country.*not "UK"/m);
    expect(got).toMatch(/^events\.consumerGroup: /m);
    expect(got).toMatch(/^redis\.url: redis:\/\/127\.0\.0\.1:abc is not a URL/m);
    expect(issues({ SMPP_URL: 'smpp://u:p@127.0.0.1:99999' })).toMatch(/^sms\.url: the URL is not a URL.* \(set by SMPP_URL\)$/m);
    expect(issues({ SMPP_URL: 'smpp://u:p@127.0.0.1' })).toBe('');
    // A bad percent-encoding is a config error, not a URIError at start; a good one is taken.
    expect(issues({ SMPP_URL: 'smpp://u%ZZ:p@127.0.0.1:2775' })).toMatch(/^sms\.url: the URL has a bad percent-encoding .* \(set by SMPP_URL\)$/m);
    expect(issues({ SMPP_URL: 'smpp://u:50%25off@127.0.0.1:2775' })).toBe('');
    expect(issues({ REDIS_URL: 'redis://127.0.0.1:0' })).toMatch(/^redis\.url: .*is not a URL/m);
    expect(issues({ REDIS_URL: 'sentinel://127.0.0.1:abc/mymaster' })).toMatch(/^redis\.url: a Sentinel URL is/m);
    expect(issues({ REDIS_URL: 'sentinel://127.0.0.1:26379,[::1]:26380/mymaster' })).toBe('');
    const countries = issues({}, { pricing: { sms: { UK: 0.03 } }, sms: { senders: { byCountry: { XX: { addr: 'Acme' } } } } } as LoadOptions['overrides']);
    expect(countries).toMatch(/^pricing\.sms\.UK: /m);
    expect(countries).toMatch(/^sms\.senders\.byCountry\.XX: /m);
  });
});

describe('config/default.yaml', () => {
  it('shows every setting the schema has a default for (the file operators read to learn the keys)', async () => {
    const { readFileSync } = await import('node:fs');
    const { parse } = await import('yaml');
    const shipped = parse(readFileSync(new URL('../../../config/default.yaml', import.meta.url), 'utf8')) as unknown;
    const effective = loadConfig({ env: {} }) as unknown;
    const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
    const missing: string[] = [];
    const walk = (value: unknown, inFile: unknown, path: string): void => {
      if (!isObject(value) || Object.keys(value).length === 0) return;
      for (const [key, child] of Object.entries(value)) {
        const here = path ? `${path}.${key}` : key;
        if (!isObject(inFile) || !(key in inFile)) missing.push(here);
        else walk(child, inFile[key], here);
      }
    };
    walk(effective, shipped, '');
    // Derived when not set (NPI 0 for TON 5, 1 for TON 1): in the file it would hold for a TON 1 sender merged over it.
    expect(missing.filter((k) => k !== 'sms.senders.default.npi')).toEqual([]);
  });
});
