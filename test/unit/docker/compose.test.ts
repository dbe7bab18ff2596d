import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { openApiDocument } from '../../../src/api/openapi.js';
import { loadConfig } from '../../../src/config/load.js';

/**
 * docker/compose.yaml without a Docker daemon (nor the compose plugin): its
 * structure, the files it mounts, and that the flashverify config it mounts is
 * valid for our own schema and agrees with the compose file and the drachtio
 * and FreeSWITCH configs next to it.
 */
const DOCKER = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'docker');

interface Service {
  image?: string;
  build?: { context: string; dockerfile: string };
  command?: string[];
  profiles?: string[];
  volumes?: string[];
  ports?: string[];
  networks?: { flashverify?: { ipv4_address?: string } };
  depends_on?: Record<string, { condition: string }>;
  environment?: Record<string, string>;
}
interface Compose {
  services: Record<string, Service>;
  networks: { flashverify: { ipam: { config: { subnet: string }[] } } };
  volumes: Record<string, unknown>;
}

const compose = parse(readFileSync(join(DOCKER, 'compose.yaml'), 'utf8'), { merge: true }) as Compose;
const ip = (name: string): string => compose.services[name]?.networks?.flashverify?.ipv4_address ?? '';

describe('docker/compose.yaml', () => {
  it('runs api, worker, Redis, drachtio-server, FreeSWITCH, and two SIPp far ends in the test profile', () => {
    expect(Object.keys(compose.services).sort()).toEqual(['api', 'drachtio', 'freeswitch', 'redis', 'sipp-ring-cancel', 'sipp-uas', 'worker']);
    expect(compose.services.api?.command).toEqual(['start', '--role', 'api']);
    expect(compose.services.worker?.command).toEqual(['start', '--role', 'worker']);
    for (const s of ['api', 'worker']) {
      expect(compose.services[s]?.build).toEqual({ context: '..', dockerfile: 'docker/Dockerfile' });
      expect(compose.services[s]?.depends_on?.redis?.condition).toBe('service_healthy');
    }
    expect(compose.services['sipp-ring-cancel']?.profiles).toEqual(['test']);
    expect(compose.services['sipp-uas']?.profiles).toEqual(['test']);
  });

  it('Redis keeps its data (AOF) and never evicts keys', () => {
    const command = compose.services.redis?.command ?? [];
    const flag = (name: string): string | undefined => command[command.indexOf(name) + 1];
    expect(command[0]).toBe('redis-server');
    expect(flag('--appendonly')).toBe('yes');
    expect(flag('--maxmemory-policy')).toBe('noeviction');
    expect(compose.services.redis?.volumes).toContain('redis-data:/data');
  });

  it('every file or directory it mounts exists in the repository, every named volume is declared', () => {
    for (const [name, service] of Object.entries(compose.services)) {
      for (const volume of service.volumes ?? []) {
        const source = volume.split(':')[0]!;
        if (source.startsWith('.')) expect(existsSync(resolve(DOCKER, source)), `${name}: ${source}`).toBe(true);
        else expect(compose.volumes, `${name}: volume ${source}`).toHaveProperty(source);
      }
      // The SIPp scenario each far end runs is in sip-test/.
      const sf = service.command?.indexOf('-sf') ?? -1;
      if (sf >= 0) expect(existsSync(resolve(DOCKER, '..', 'sip-test', service.command![sf + 1]!.replace('/scenarios/', '')))).toBe(true);
    }
    expect(existsSync(resolve(DOCKER, '..', compose.services.api!.build!.dockerfile))).toBe(true);
  });

  it('static addresses are unique and inside the network', () => {
    const addresses = Object.keys(compose.services).map(ip);
    expect(addresses.every((a) => a.startsWith('172.28.'))).toBe(true);
    expect(new Set(addresses).size).toBe(addresses.length);
    expect(compose.networks.flashverify.ipam.config[0]?.subnet).toBe('172.28.0.0/16');
  });
});

describe('docker/flashverify.yaml', () => {
  const config = loadConfig({ file: join(DOCKER, 'flashverify.yaml'), env: { FLASHVERIFY_MASTER_KEY: 'ab'.repeat(32) } });

  it('passes our own config schema, with the carrier stack on', () => {
    expect(config.sip.backend).toBe('drachtio');
    expect(config.media.backend).toBe('freeswitch');
  });

  it('agrees with the compose file and the drachtio / FreeSWITCH configs', () => {
    expect(config.redis.url).toBe('redis://redis:6379');
    expect(config.sip.drachtio.host).toBe(ip('drachtio'));
    const drachtioConf = readFileSync(join(DOCKER, 'drachtio.conf.xml'), 'utf8');
    expect(drachtioConf).toContain(`<admin port="${config.sip.drachtio.port}" secret="${config.sip.drachtio.secret}">`);
    const fs = config.media.freeswitch.servers[0]!;
    expect(fs.address).toBe(ip('freeswitch'));
    const esl = readFileSync(join(DOCKER, 'freeswitch', 'event_socket.conf.xml'), 'utf8');
    expect(esl).toContain(`<param name="listen-port" value="${fs.port}"/>`);
    expect(esl).toContain(`<param name="password" value="${fs.secret}"/>`);
    // FreeSWITCH connects back to the worker per call.
    expect(config.media.freeswitch.listenAddress).toBe(ip('worker'));
    // The flash demo's trunk is the far end that rings and waits for the CANCEL.
    expect(config.sip.trunks[0]?.uri).toBe(`sip:${ip('sipp-ring-cancel')}:5060`);
    expect(config.media.freeswitch.promptDir).toBe('/usr/share/flashverify/prompts');
    // No SMSC in the compose file: SMS is off, or the worker's /readyz would wait for SMPP binds for ever.
    expect(Object.keys(compose.services).some((n) => /smsc|smpp/i.test(n))).toBe(false);
    expect(config.sms.enabled).toBe(false);
    expect(compose.services.freeswitch?.volumes).toContain('../assets/prompts:/usr/share/flashverify/prompts:ro');
  });
});

describe('docker/Dockerfile', () => {
  it('installs with npm install (as CI does), never npm ci', () => {
    const dockerfile = readFileSync(join(DOCKER, 'Dockerfile'), 'utf8');
    expect(dockerfile).not.toMatch(/^RUN .*npm ci\b/m);
    expect(dockerfile.match(/RUN npm install/g)).toHaveLength(2);
    expect(dockerfile).toMatch(/^USER node$/m);
  });
});

describe('docker/README.md: the operator walk-through', () => {
  const readme = readFileSync(join(DOCKER, 'README.md'), 'utf8');
  /** Shell lines of the README's ```sh blocks, continuation lines joined. */
  const shell = [...readme.matchAll(/```sh\n([\s\S]*?)```/g)].flatMap((m) => m[1]!.replace(/\\\n\s*/g, ' ').split('\n')).filter((l) => l.trim() !== '');

  it('runs commands only against services the compose file has', () => {
    const named = shell.flatMap((l) => [...l.matchAll(/docker compose (?:--profile \w+ )?(?:exec|logs(?: -f)?) ([\w-]+)/g)].map((m) => m[1]!));
    expect(named.length).toBeGreaterThanOrEqual(2);
    for (const service of named) expect(Object.keys(compose.services), service).toContain(service);
    // The SIPp log it reads is the one the service writes.
    expect(readme).toContain('/logs/messages.log');
    expect(compose.services['sipp-ring-cancel']?.command).toEqual(expect.arrayContaining(['-trace_msg', '-message_file', '/logs/messages.log']));
  });

  it('curls only host ports the compose file publishes, on paths the API and the worker serve', () => {
    const published = Object.values(compose.services).flatMap((s) => (s.ports ?? []).map((p) => p.split(':')[0]!));
    const urls = shell.flatMap((l) => [...l.matchAll(/(?:http:\/\/)?localhost:(\d+)(\/[\w/<>{}_-]*)/g)].map((m) => ({ port: m[1]!, path: m[2]! })));
    expect(urls.length).toBeGreaterThanOrEqual(5);
    for (const { port } of urls) expect(published).toContain(port);
    const config = loadConfig({ file: join(DOCKER, 'flashverify.yaml'), env: { FLASHVERIFY_MASTER_KEY: 'ab'.repeat(32) } });
    expect(published).toContain(String(config.http.port));
    expect(published).toContain(String(config.metrics.port));
    const apiPaths = Object.keys((openApiDocument(config) as { paths: Record<string, unknown> }).paths);
    for (const { port, path } of urls) {
      if (['/healthz', '/readyz', '/metrics'].includes(path)) continue;
      expect(port).toBe(String(config.http.port));
      expect(apiPaths, path).toContain(path.replace(/<request_id>/, '{request_id}'));
    }
  });

  it('creates the account with flags the CLI has, and verifies with the fields the API takes', () => {
    const usage = readFileSync(join(DOCKER, '..', 'src', 'main.ts'), 'utf8').match(/flashverify account create [^\n]*/)?.[0] ?? '';
    const create = shell.find((l) => l.includes('flashverify account create')) ?? '';
    const flags = [...create.matchAll(/(--[\w-]+)/g)].map((m) => m[1]!);
    expect(flags.length).toBeGreaterThan(0);
    for (const f of flags) expect(usage, f).toContain(f);
    const config = loadConfig({ file: join(DOCKER, 'flashverify.yaml'), env: { FLASHVERIFY_MASTER_KEY: 'ab'.repeat(32) } });
    interface Schema {
      $ref?: string;
      properties?: Record<string, unknown>;
    }
    const doc = openApiDocument(config) as {
      paths: Record<string, Record<string, { requestBody?: { content: Record<string, { schema: Schema }> } }>>;
      components: { schemas: Record<string, Schema> };
    };
    const deref = (schema: Schema | undefined): Schema | undefined =>
      schema?.$ref ? doc.components.schemas[schema.$ref.replace('#/components/schemas/', '')] : schema;
    const bodyFields = (path: string): string[] => Object.keys(deref(doc.paths[path]?.post?.requestBody?.content['application/json']?.schema)?.properties ?? {});
    const sent = shell.filter((l) => l.includes(" -d '")).map((l) => ({ body: JSON.parse(/-d '([^']*)'/.exec(l)![1]!) as Record<string, unknown>, path: /localhost:\d+(\/[\w/]+)/.exec(l)![1]! }));
    expect(sent.map((s) => s.path)).toEqual(['/v1/verify', '/v1/verify/check']);
    for (const { body, path } of sent) for (const field of Object.keys(body)) expect(bodyFields(path), `${path} ${field}`).toContain(field);
    expect(sent[0]!.body.method).toBe('flash_call');
  });
});
