import { z } from 'zod';

/**
 * The whole configuration of flashverify. `config/default.yaml` holds every
 * default an operator can see; this schema is the single source of truth for
 * what is valid. Parsed once at boot, then deep-frozen.
 */

const e164Prefix = z
  .string()
  .regex(/^\+[1-9]\d{3,13}$/, 'must be E.164 digits with a leading + (e.g. "+4419087300")');

const sipUri = z
  .string()
  .regex(/^sips?:[^\s]+$/i, 'must be a SIP URI such as "sip:trunk.example.net:5060;transport=udp"');

export const trunkSchema = z
  .object({
    name: z.string().min(1),
    /** Request-URI host part of every INVITE: sip:host[:port][;transport=udp|tcp] */
    uri: sipUri,
    /** Digest credentials for trunks that challenge with 401/407 (RFC 3261 22.2). */
    auth: z
      .object({
        username: z.string().min(1),
        password: z.string(),
      })
      .optional(),
    /** Host placed in From/P-Asserted-Identity; defaults to the trunk host. */
    fromDomain: z.string().optional(),
    /** Calls per second this trunk accepts. */
    cps: z.number().int().positive().default(200),
    /** Treat 183 Session Progress as "ringing" for flash calls (some carriers never send 180). */
    ringOn183: z.boolean().default(false),
    /** Send a minimal SDP offer in flash-call INVITEs for carriers that reject offer-less INVITEs. */
    dummySdp: z.boolean().default(false),
    /** Extra headers added to every INVITE to this trunk. */
    headers: z.record(z.string(), z.string()).default({}),
  })
  .strict();

export const rangeSchema = z
  .object({
    /** E.164 prefix; the CLI is prefix + 4-digit code, so a range holds 10,000 numbers. */
    prefix: e164Prefix,
    /** ISO 3166-1 alpha-2 country of the range. */
    country: z.string().regex(/^[A-Z]{2}$/, 'must be an ISO 3166-1 alpha-2 code such as "GB"'),
  })
  .strict();

const priceTable = z.record(z.string(), z.number().nonnegative());

export const configSchema = z
  .object({
    http: z
      .object({
        host: z.string().default('0.0.0.0'),
        port: z.number().int().min(0).max(65535).default(8080),
        bodyLimitBytes: z.number().int().positive().default(16 * 1024),
        trustProxy: z.boolean().default(false),
      })
      .strict(),
    redis: z
      .object({
        url: z.string().regex(/^rediss?:\/\//, 'must be a redis:// or rediss:// URL'),
        prefix: z.string().regex(/^[A-Za-z0-9_.-]+$/, 'letters, digits, "_", "-" and "." only'),
      })
      .strict(),
    security: z
      .object({
        /** 32 bytes as 64 hex chars or base64. Empty: read or create `masterKeyFile`. */
        masterKey: z.string().default(''),
        masterKeyFile: z.string().default('.flashverify/master.key'),
        /** Older keys, still accepted for decryption after a rotation. */
        previousMasterKeys: z.array(z.string()).default([]),
      })
      .strict(),
    log: z
      .object({
        level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
        pretty: z.boolean().default(false),
      })
      .strict(),
    api: z
      .object({
        /** Requests per second per API key unless the account says otherwise. */
        defaultRateLimitPerSecond: z.number().int().positive().default(10),
        /** How long the first response to an `Idempotency-Key` is replayed. */
        idempotencyTtlSeconds: z.number().int().positive().default(24 * 3600),
        /** How long a duplicate waits for the first request with its key to finish. */
        idempotencyWaitMs: z.number().int().positive().default(5000),
      })
      .strict(),
    admin: z
      .object({
        /** Bearer token of the admin HTTP API (/admin/v1). Empty: the admin API is off and its routes answer 404. */
        token: z
          .string()
          .refine((t) => t === '' || (t.length >= 16 && /^[\x21-\x7E]+$/.test(t)), {
            message: 'must be empty (admin API off) or at least 16 printable characters without spaces',
          })
          .default(''),
      })
      .strict(),
    accounts: z
      .object({
        defaultCurrency: z.enum(['GBP', 'USD', 'EUR']).default('GBP'),
      })
      .strict(),
    verification: z
      .object({
        defaultExpirySeconds: z.number().int().positive().default(300),
        maxExpirySeconds: z.number().int().positive().default(600),
        maxCheckAttempts: z.number().int().positive().default(3),
        /** How long a finished verification record stays readable after it expires. */
        retentionSeconds: z.number().int().positive().default(7 * 24 * 3600),
        /** How often the worker role expires due requests (status `expired` + event), polled or not. */
        expirySweepMs: z.number().int().positive().default(1000),
      })
      .strict(),
    pricing: z
      .object({
        /** Price per method per destination country (ISO alpha-2, or "default"), in GBP. */
        flash_call: priceTable,
        voice: priceTable,
        sms: priceTable,
        /** Conversion from GBP to the account's currency. */
        fx: z.object({ GBP: z.number().positive(), USD: z.number().positive(), EUR: z.number().positive() }).strict(),
      })
      .strict(),
    numbers: z
      .object({
        ranges: z.array(rangeSchema).min(1, 'at least one DID range is needed for flash calls'),
        /** The same CLI does not call the same destination twice within this window. */
        cliCooldownSeconds: z.number().int().nonnegative().default(300),
      })
      .strict(),
    flash: z
      .object({
        /** How long to let the phone ring after the first 18x before CANCEL. */
        ringMs: z.number().int().nonnegative().default(2500),
        /** CANCEL if no 18x arrives within this time; outcome `no_ringing`. */
        ringingTimeoutMs: z.number().int().positive().default(15_000),
      })
      .strict(),
    voice: z
      .object({
        /** CANCEL a voice call not answered (200) within this time; outcome `no_answer`. */
        answerTimeoutMs: z.number().int().positive().default(30_000),
        /** Caller ID of voice calls (E.164); default: the first number of a DID range, same country first. */
        callerId: z.string().regex(/^\+[1-9]\d{6,14}$/, 'must be an E.164 number').optional(),
      })
      .strict(),
    media: z
      .object({
        backend: z.enum(['embedded']).default('embedded'),
        rtp: z
          .object({
            /** RTP ports, one even port per call (RFC 3550 11); the range bounds concurrent voice calls per worker. */
            portMin: z.number().int().min(1024).max(65534).default(20000),
            portMax: z.number().int().min(1025).max(65535).default(29999),
            /** Address in the SDP c= line; defaults to sip.listen.advertisedHost, then the listen host (127.0.0.1 for 0.0.0.0). */
            advertisedHost: z.string().optional(),
          })
          .strict()
          .refine((r) => r.portMax > r.portMin, { message: 'portMax must be greater than portMin' }),
      })
      .strict(),
    sip: z
      .object({
        backend: z.enum(['embedded']).default('embedded'),
        listen: z
          .object({
            host: z.string().default('0.0.0.0'),
            port: z.number().int().min(0).max(65535).default(5070),
            /** Host placed in Via and Contact; defaults to the listen host (or 127.0.0.1 for 0.0.0.0). */
            advertisedHost: z.string().optional(),
            transports: z.array(z.enum(['udp', 'tcp'])).min(1).default(['udp', 'tcp']),
          })
          .strict(),
        /** RFC 3261 17.1.1.1 timer values. */
        timers: z
          .object({
            t1Ms: z.number().int().positive().default(500),
            t2Ms: z.number().int().positive().default(4000),
            t4Ms: z.number().int().positive().default(5000),
          })
          .strict(),
        userAgent: z.string().default('flashverify'),
        trunks: z.array(trunkSchema).min(1, 'at least one SIP trunk is needed'),
      })
      .strict(),
    worker: z
      .object({
        flashConcurrency: z.number().int().positive().default(500),
        /** Voice calls in flight per worker process (each holds an RTP port while it plays). */
        voiceConcurrency: z.number().int().positive().default(200),
        /** Attempts of a delivery job whose worker died (stalled) before the call is given up. */
        maxStalledCount: z.number().int().nonnegative().default(1),
      })
      .strict(),
    metrics: z
      .object({
        /** Serve Prometheus `GET /metrics` (on the API listener, and on the worker listener below). No auth: firewall it. */
        enabled: z.boolean().default(true),
        /** Listen address of the `--role worker` operator listener (/metrics, /healthz, /readyz). */
        host: z.string().default('0.0.0.0'),
        /** Port of that listener; 0 = no listener. The api and all roles serve these on the API port instead. */
        port: z.number().int().min(0).max(65535).default(9464),
      })
      .strict(),
    sms: z
      .object({
        /** SMSC for SMS OTP (smpp://system_id:password@host:port). The SMS channel is not built yet. */
        url: z.string().regex(/^smpps?:\/\//, 'must be an smpp:// URL').default('smpp://127.0.0.1:2775'),
      })
      .strict(),
    events: z
      .object({
        /** Approximate cap on the events stream length (XADD MAXLEN ~). */
        maxLen: z.number().int().positive().default(1_000_000),
        consumerGroup: z.string().default('status'),
        /** Consumer group that turns events into webhook jobs. */
        webhookGroup: z.string().default('webhooks'),
      })
      .strict(),
    webhooks: z
      .object({
        /** Allow webhook URLs that resolve to loopback/private/link-local addresses (tests, on-prem only). */
        allowPrivate: z.boolean().default(false),
        /** The docs promise receivers 5 s to answer with a 2xx. */
        timeoutMs: z.number().int().positive().default(5000),
        /** Delivery attempts; with `backoffMs` 5000 and 15 attempts the last retry is ~22 h after the first. */
        attempts: z.number().int().positive().default(15),
        /** First retry delay; doubles at each attempt (BullMQ exponential back-off). */
        backoffMs: z.number().int().positive().default(5000),
        /** How often a later event of a request re-checks whether the earlier ones were delivered (doubles, max 60 s). */
        orderPollMs: z.number().int().positive().default(500),
        /** Webhook deliveries in flight per worker process. */
        concurrency: z.number().int().positive().default(50),
      })
      .strict(),
  })
  .strict();

export type Config = z.infer<typeof configSchema>;
export type TrunkConfig = z.infer<typeof trunkSchema>;
export type RangeConfig = z.infer<typeof rangeSchema>;
export type SipConfig = Config['sip'];
