import { describe, expect, it } from 'vitest';
import { redactRedisUrl, sentinelOptions } from '../../../src/store/redis.js';

describe('redis.url in messages', () => {
  it('hides the password of a URL, of each seed node, and of a Unix socket URL', () => {
    expect(redactRedisUrl('redis://:pw@10.0.0.1:6379/2')).toBe('redis://:***@10.0.0.1:6379/2');
    expect(redactRedisUrl('rediss://app:pw@redis.example.net')).toBe('rediss://app:***@redis.example.net');
    expect(redactRedisUrl('redis://u:a@10.0.0.1:7000, redis://u:b@10.0.0.2:7000')).toBe('redis://u:***@10.0.0.1:7000,redis://u:***@10.0.0.2:7000');
    expect(redactRedisUrl('unix:///run/redis/redis.sock?db=1&password=pw')).toBe('unix:///run/redis/redis.sock?db=1&password=***');
    // Not a URL the parser takes (a port that is not a number): the password is still hidden.
    expect(redactRedisUrl('redis://u:pw@host:port')).toBe('redis://u:***@host:port');
  });

  it('leaves a URL without a password as it is', () => {
    expect(redactRedisUrl('redis://127.0.0.1:6379')).toBe('redis://127.0.0.1:6379');
    expect(redactRedisUrl('unix:///run/redis/redis.sock')).toBe('unix:///run/redis/redis.sock');
  });
});

describe('redis.url for Redis Sentinel', () => {
  it('names the Sentinels, the master, the data password and db', () => {
    expect(sentinelOptions('sentinel://:pw@10.0.0.1:26379,10.0.0.2,[::1]:26380/mymaster/2?sentinelPassword=sp')).toEqual({
      sentinels: [
        { host: '10.0.0.1', port: 26379 },
        { host: '10.0.0.2', port: 26379 },
        { host: '::1', port: 26380 },
      ],
      name: 'mymaster',
      role: 'master',
      failoverDetector: true,
      password: 'pw',
      db: 2,
      sentinelPassword: 'sp',
    });
    expect(sentinelOptions('sentinel://127.0.0.1:26379/fv')).toMatchObject({ sentinels: [{ host: '127.0.0.1', port: 26379 }], name: 'fv' });
    expect(() => sentinelOptions('sentinel://127.0.0.1:26379')).toThrow(/sentinel:\/\/host:port\[,host:port\.\.\.\]\/<master name>/);
  });

  it('hides both passwords in messages', () => {
    expect(redactRedisUrl('sentinel://:pw@h1:26379,h2:26379/m?sentinelPassword=sp')).toBe('sentinel://:***@h1:26379,h2:26379/m?sentinelPassword=***');
  });
});
